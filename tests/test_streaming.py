"""Streaming answers from Python generators: NDJSON or SSE, chunk by chunk, with the
deadline, back-pressure, disconnects and callbacks (issue: beyond the peers, part 1)."""

import json
import signal
import socket
import time

import requests

from harness import FIXTURES, CallbackServer, Warm, clean_env, wait_until

PYFIX = FIXTURES / "python"


def env(function, **kw):
    return clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=PYFIX, HANDLER_MODULE="streams",
                     HANDLER_FUNCTION=function, **kw)


def test_a_generator_streams_ndjson_chunk_by_chunk():
    with Warm(env("five")) as w:
        started = time.time()
        with requests.post(w.url + "/invoke", json={}, headers={"X-Execution-Id": "s1"},
                           stream=True, timeout=10) as r:
            assert r.status_code == 200
            assert r.headers["Content-Type"] == "application/x-ndjson"
            arrivals, values = [], []
            for line in r.iter_lines():
                arrivals.append(time.time())
                values.append(json.loads(line))
        assert [v["n"] for v in values] == [0, 1, 2, 3, 4]
        # The first value arrives before the second is produced (100 ms later).
        assert arrivals[0] < values[1]["t"], (arrivals[0], values[1]["t"])
        assert arrivals[-1] - arrivals[0] >= 0.35


def test_a_generator_streams_server_sent_events():
    with Warm(env("five_async")) as w:
        with requests.post(w.url + "/invoke", json={}, stream=True, timeout=10,
                           headers={"X-Execution-Id": "s2", "Accept": "text/event-stream"}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            text = r.text
        events = [json.loads(part[len("data: "):]) for part in text.strip().split("\n\n")]
        assert events == [{"n": i} for i in range(5)]


def test_a_stream_past_its_deadline_ends_with_a_timeout_line():
    with Warm(env("forever", TIMEOUT_MS=400)) as w:
        r = requests.post(w.url + "/invoke", json={"marker": "/dev/null"},
                          headers={"X-Execution-Id": "s3"}, timeout=10)
        lines = [json.loads(l) for l in r.text.strip().splitlines()]
        assert len(lines) > 2
        assert lines[-1]["code"] == "TIMEOUT", lines[-1]


def test_a_disconnect_mid_stream_runs_the_generators_finally(tmp_path):
    marker = tmp_path / "closed"
    with Warm(env("forever", MAX_CONCURRENCY=1)) as w:
        with socket.create_connection(("127.0.0.1", w.port)) as s:
            body = json.dumps({"marker": str(marker)}).encode()
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: s4\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            s.recv(4096)
        wait_until(lambda: marker.exists() and marker.read_text() == "closed", 5)
        # The slot is free again.
        r = requests.post(w.url + "/invoke", json={"marker": "/dev/null"},
                          headers={"X-Execution-Id": "s5", "X-Timeout-Ms": "200"}, timeout=10)
        assert r.status_code == 200


def test_a_slow_reader_holds_the_generator_back_and_memory_stays_flat(tmp_path):
    # 100 MB offered by the generator, read at a trickle: the watchdog buffers one value.
    with Warm(env("forever", TIMEOUT_MS=20000)) as w:
        with socket.create_connection(("127.0.0.1", w.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps({"marker": str(tmp_path / "m"), "pad": 100000, "every": 0}).encode()
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: s6\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            for _ in range(20):
                s.recv(1024)
                time.sleep(0.1)
            with open(f"/proc/{w.proc.pid}/status") as f:
                rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
        assert rss < 80 * 1024, f"RSS {rss} kB while a slow reader trickles a big stream"


def test_the_callback_carries_the_collected_values():
    with CallbackServer() as cb:
        with Warm(env("five_async", CALLBACK_URL=cb.url)) as w:
            r = requests.post(w.url + "/invoke", json={}, headers={"X-Execution-Id": "s7"},
                              timeout=10)
            assert len(r.text.strip().splitlines()) == 5
            body = cb.wait_for(1)[0]["body"]
            assert body["success"] is True
            assert body["output"] == [{"n": i} for i in range(5)]


def test_a_stream_still_running_at_the_drain_timeout_ends_with_a_cancelled_line(tmp_path):
    marker = tmp_path / "closed"
    with Warm(env("forever", DRAIN_TIMEOUT_MS=500)) as w:
        with requests.post(w.url + "/invoke", json={"marker": str(marker)}, stream=True,
                           headers={"X-Execution-Id": "s-drain"}, timeout=10) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["i"] == 0
            w.signal(signal.SIGTERM)
            rest = [json.loads(line) for line in lines]
        assert rest[-1]["code"] == "CANCELLED", rest[-1]
        assert "DRAIN_TIMEOUT_MS" in rest[-1]["error"], rest[-1]
        assert all("i" in v for v in rest[:-1])
        assert w.wait(10) == 0
    assert wait_until(marker.exists, 5), "the generator was not closed"

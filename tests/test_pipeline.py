"""The invocation pipeline's guarantees (CONTRACT.md sections 2, 4, 10): every
accepted invocation gets exactly one result, in memory bounded by the slots and
the queue. Each test reproduces one reported problem exactly and asserts the
new behaviour."""

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import FIXTURES, PY, CallbackServer, Warm, clean_env, descendants, run_oneshot, wait_until

BIG_NUMBER = b"12345678901234567890.12345678901234567890"


def status_kb(pid, field):
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def metric(w, name):
    text = w.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- 1. a client that disconnects does not lose the result -------------------

def test_callback_arrives_after_the_client_disconnects():
    with CallbackServer() as cb:
        env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="sh -c 'sleep 2; cat'",
                        CALLBACK_URL=cb.url)
        with Warm(env) as w:
            with pytest.raises(requests.exceptions.ReadTimeout):
                w.post(json={}, headers={"X-Execution-Id": "e1"}, timeout=1)
            got = cb.wait_for(1, timeout=10)
            assert got[0]["path"] == "/cb/e1:complete"
            assert got[0]["body"] == {"success": True, "output": {}, "error": None}
            wait_until(lambda: metric(w, "watchdog_client_disconnects_total") == 1, 5)


def test_a_disconnect_without_a_callback_target_stops_the_child():
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="sh -c 'sleep 30; cat'")
    with Warm(env) as w:
        with pytest.raises(requests.exceptions.ReadTimeout):
            w.post(json={}, headers={"X-Execution-Id": "e1"}, timeout=1)
        # The child (and its sleep) go; nothing is left behind.
        wait_until(lambda: descendants(w.proc.pid) == [], 5)
        wait_until(lambda: metric(w, "watchdog_client_disconnects_total") == 1, 5)
        assert any(l.get("fields", {}).get("message", "").startswith("the client disconnected and there is no callback")
                   or "no callback target" in json.dumps(l) for l in w.log_lines())
        # And the watchdog serves the next one.
        env_ok = w.post(json={"a": 1}, headers={"X-Timeout-Ms": "100"}, timeout=5)
        assert env_ok.status_code == 504


def test_a_disconnect_without_a_callback_target_stops_a_python_handler_at_once(tmp_path):
    marker = tmp_path / "stopped"
    env = clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=FIXTURES / "python",
                    HANDLER_MODULE="handlers", HANDLER_FUNCTION="spin_until_stopped",
                    MAX_CONCURRENCY=1, TIMEOUT_MS=30000)
    with Warm(env) as w:
        gone = time.time()
        with pytest.raises(requests.exceptions.ReadTimeout):
            w.post(json={"marker": str(marker)}, timeout=0.5)
        # Stopped long before its 30 s deadline, and the only slot serves again.
        wait_until(marker.exists, 5)
        assert float(marker.read_text()) - gone < 5
        wait_until(lambda: metric(w, "watchdog_client_disconnects_total") == 1, 5)


# -- 2. SIGTERM with the default settings loses nothing ----------------------

def test_sigterm_during_a_long_invocation_with_the_defaults_answers_cancelled():
    # TIMEOUT_MS (30 s) is longer than DRAIN_TIMEOUT_MS (25 s): at the drain
    # timeout the invocation is stopped and answered, response and callback.
    with CallbackServer() as cb:
        env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="sh -c 'sleep 29; cat'",
                        CALLBACK_URL=cb.url)
        with Warm(env) as w:
            answers = []
            t = threading.Thread(target=lambda: answers.append(
                w.post(json={}, headers={"X-Execution-Id": "long"}, timeout=60)))
            t.start()
            wait_until(lambda: descendants(w.proc.pid), 5)
            time.sleep(1)
            started = time.monotonic()
            w.signal(signal.SIGTERM)
            t.join(40)
            assert answers, "the client got no answer"
            r = answers[0]
            assert r.status_code == 503
            assert r.json()["code"] == "CANCELLED"
            assert 24 <= time.monotonic() - started < 30
            got = cb.wait_for(1, timeout=10)
            assert got[0]["path"] == "/cb/long:complete"
            assert got[0]["body"]["success"] is False
            assert got[0]["body"]["error"]["code"] == "CANCELLED"
            assert w.wait(15) == 0
            assert descendants(w.proc.pid) == []


# -- 3. memory stays bounded by the bytes in flight --------------------------

def _zeros(size):
    count = size // 2
    return b"[" + b"0," * (count - 1) + b"0]"


def test_twelve_concurrent_6mb_bodies_keep_memory_bounded():
    body = _zeros(6_000_000)
    assert len(body) < 6 * 1024 * 1024
    # The deadline also bounds the upload: generous, as a loaded machine sends 72 MB slowly.
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="sleep 30", TIMEOUT_MS=10000)
    with Warm(env) as w:
        idle = status_kb(w.proc.pid, "VmRSS")

        def send(i):
            return w.post(data=body, headers={"Content-Type": "application/json"}, timeout=30)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(12)))
        assert [r.status_code for r in answers] == [504] * 12, [r.text for r in answers]
        peak = status_kb(w.proc.pid, "VmHWM")
        in_flight_kb = 12 * len(body) // 1024
        print(f"idle {idle} kB, peak {peak} kB, bytes in flight {in_flight_kb} kB")
        assert peak < 200 * 1024, f"peak RSS {peak} kB"


def test_a_full_queue_refuses_without_reading_the_body():
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="sh -c 'sleep 5; cat'",
                    MAX_CONCURRENCY=1, QUEUE_DEPTH=0, TIMEOUT_MS=3000)
    with Warm(env) as w:
        busy = threading.Thread(target=lambda: w.post(json={}, timeout=10))
        busy.start()
        wait_until(lambda: descendants(w.proc.pid), 5)
        # Headers promise a megabyte that never comes: the answer is 429 anyway.
        with socket.create_connection(("127.0.0.1", w.port), timeout=5) as s:
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: q\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 429"), head
        busy.join(10)



def test_a_declared_length_over_the_limit_is_refused_before_the_body_comes():
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat", MAX_BODY_BYTES=1000,
                    TIMEOUT_MS=20000)
    with Warm(env) as w:
        # Content-Length alone says it is too large: 413 without waiting for the
        # body (which never comes; the socket gives up long before the deadline).
        with socket.create_connection(("127.0.0.1", w.port), timeout=5) as s:
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: big\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1001\r\n\r\n[1")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"PAYLOAD_TOO_LARGE" in head and b"MAX_BODY_BYTES=1000" in head, head

# -- 4. outputs are bounded --------------------------------------------------

def test_yes_as_a_stdio_function_is_output_too_large():
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="yes", TIMEOUT_MS=20000)
    with Warm(env) as w:
        t = time.monotonic()
        r = w.post(json={}, timeout=30)
        assert r.status_code == 500
        assert r.json()["code"] == "OUTPUT_TOO_LARGE"
        assert "MAX_OUTPUT_BYTES=6291456" in r.json()["error"]
        assert time.monotonic() - t < 10, "stopped at the limit, not at the deadline"
        assert status_kb(w.proc.pid, "VmHWM") < 100 * 1024
        wait_until(lambda: descendants(w.proc.pid) == [], 5)


def test_file_output_symlinked_to_dev_zero_is_refused_and_large_files_are_too_large(tmp_path):
    script = tmp_path / "fn.sh"
    script.write_text(
        'if grep -q link "$INPUT_FILE"; then ln -s /dev/zero "$OUTPUT_FILE";\n'
        'else head -c 50000000 /dev/zero | tr "\\0" " " > "$OUTPUT_FILE"; fi\n')
    env = clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD=f"sh {script}", TIMEOUT_MS=20000,
                    INPUT_FILE=tmp_path / "in.json", OUTPUT_FILE=tmp_path / "out.json")
    with Warm(env) as w:
        r = w.post(json="link", timeout=30)
        assert r.status_code == 500
        assert r.json()["code"] == "FUNCTION_ERROR"
        assert "symbolic link" in r.json()["error"]
        r = w.post(json="big", timeout=30)
        assert r.status_code == 500
        assert r.json()["code"] == "OUTPUT_TOO_LARGE"
        assert status_kb(w.proc.pid, "VmHWM") < 100 * 1024


def test_max_output_bytes_applies_to_a_loop_result_line(tmp_path):
    env = clean_env(EXECUTION_MODE="LOOP", WATCHDOG_CMD=f"{PY} {FIXTURES / 'loop' / 'raw.py'}",
                    MAX_OUTPUT_BYTES=1000)
    with Warm(env) as w:
        r = w.post(json={"echo": "x" * 5000}, timeout=10)
        assert r.status_code == 500
        assert r.json()["code"] == "OUTPUT_TOO_LARGE"
        r = w.post(json={"echo": "small"}, timeout=10)
        assert r.status_code == 200, r.text


# -- 5. FILE runner invocations never share files ----------------------------

@pytest.mark.parametrize("ids", [("fixed", "fixed"), ("a.b", "a/b")])
def test_concurrent_file_invocations_with_colliding_ids_each_get_their_payload(ids):
    env = clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD=f"{PY} {FIXTURES / 'file_sleepy.py'}",
                    MAX_CONCURRENCY=2, EXECUTION_ID="fixed")
    with Warm(env) as w:
        def send(i):
            headers = {"X-Execution-Id": None} if ids[i] == "fixed" else {"X-Execution-Id": ids[i]}
            return w.post(json={"n": i, "sleep": 0.5}, headers=headers, timeout=10)

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(send, range(2))
        assert a.status_code == 200, a.text
        assert b.status_code == 200, b.text
        assert a.json()["echo"] == {"n": 0, "sleep": 0.5}
        assert b.json()["echo"] == {"n": 1, "sleep": 0.5}
        dirs = {os.path.dirname(a.json()["input_file"]), os.path.dirname(b.json()["input_file"])}
        assert len(dirs) == 2
        for d in dirs:
            assert not os.path.exists(d), "the private directory is removed after use"


# -- payloads are bytes: numbers keep every digit ----------------------------

def test_numbers_keep_every_digit_through_stdio_warm_and_one_shot():
    env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat")
    with Warm(env) as w:
        r = w.post(data=BIG_NUMBER, headers={"Content-Type": "application/json"})
        assert r.status_code == 200
        assert r.content == BIG_NUMBER
    with CallbackServer() as cb:
        env = clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat", EXECUTION_ID="n1",
                        CALLBACK_URL=cb.url, INVOCATION_PAYLOAD=b'{"x": ' .decode() + BIG_NUMBER.decode() + "}")
        out = run_oneshot(env)
        assert out.returncode == 0, out.stderr
        raw = cb.wait_for(1)[0]
        assert raw["body"]["success"] is True
    out = run_oneshot(clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat",
                                INVOCATION_PAYLOAD=BIG_NUMBER.decode()))
    assert BIG_NUMBER in out.stdout, out.stdout

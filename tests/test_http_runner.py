"""The HTTP runner (contract section 2) against examples/http-upstream/server.py."""

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from harness import (EXAMPLES, FIXTURES, PY, REPO, CallbackServer, Warm, clean_env, free_port, kill_pid,
                     pid_alive, run_oneshot, wait_until)

SERVER_CMD = "python3 examples/http-upstream/server.py"  # relative: the watchdog runs with cwd=REPO


@pytest.fixture
def upstream_pids():
    """Pids of upstream servers seen in answers; killed after the test if still alive."""
    pids = set()
    yield pids
    for pid in pids:
        kill_pid(pid)


def http_env(runtime_port, **overrides):
    base = {"EXECUTION_MODE": "HTTP", "WATCHDOG_CMD": SERVER_CMD,
            "RUNTIME_URL": f"http://127.0.0.1:{runtime_port}/invoke"}
    base.update(overrides)
    return clean_env(**base)


def invoke(w, pids, payload, **kw):
    r = w.post(json=payload, **kw)
    if r.status_code == 200 and isinstance(r.json(), dict) and "pid" in r.json():
        pids.add(r.json()["pid"])
    return r


def assert_error(resp, status, code):
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    return body["error"]


def test_ready_only_once_upstream_health_is_200(upstream_pids):
    port = free_port()
    env = http_env(port, UPSTREAM_START_DELAY="1.0")
    with Warm(env, cwd=REPO, wait_ready=False) as w:
        r = w.get("/health")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "starting"
        assert_error(w.post(json={}), 503, "NOT_READY")
        wait_until(lambda: w.get("/health").status_code == 200, 10)
        r = invoke(w, upstream_pids, {"input": "hi"})
        assert r.status_code == 200, r.text
        assert r.json()["payload"] == {"input": "hi"}


def test_child_gets_port_of_runtime_and_payload_round_trips(upstream_pids):
    port = free_port()
    with Warm(http_env(port), cwd=REPO) as w:
        payload = {"input": {"big": 123456789012345678901234567890, "u": "日本 😀"}, "metadata": {}}
        r = invoke(w, upstream_pids, payload)
        assert r.status_code == 200, r.text
        assert r.json()["payload"] == payload
        # the upstream listens where RUNTIME_URL says
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200


def test_forwards_request_headers(upstream_pids):
    with Warm(http_env(free_port()), cwd=REPO) as w:
        hdrs = {
            "X-Execution-Id": "exec-http-1",
            "X-Trace-Id": "trace-http-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "X-Dispatch-Attempt": "3",
            "Idempotency-Key": "idem-http-1",
        }
        r = invoke(w, upstream_pids, {"x": 1}, headers=hdrs)
        assert r.status_code == 200, r.text
        assert r.headers.get("X-Execution-Id") == "exec-http-1"
        assert r.json()["headers"] == {k.lower(): v for k, v in hdrs.items()}


def test_upstream_500_is_function_error_with_status(upstream_pids):
    with Warm(http_env(free_port()), cwd=REPO) as w:
        invoke(w, upstream_pids, {})
        msg = assert_error(w.post(json={"status": 500}), 500, "FUNCTION_ERROR")
        assert "500" in msg


def test_slow_upstream_is_504_timeout(upstream_pids):
    with Warm(http_env(free_port(), TIMEOUT_MS=500), cwd=REPO) as w:
        invoke(w, upstream_pids, {})
        start = time.monotonic()
        assert_error(w.post(json={"sleep": 2}), 504, "TIMEOUT")
        assert time.monotonic() - start < 1.8
        # the runtime is still usable afterwards
        assert invoke(w, upstream_pids, {"after": 1}).status_code == 200


def test_upstream_death_makes_watchdog_unready_and_exit_nonzero(upstream_pids):
    with Warm(http_env(free_port()), cwd=REPO) as w:
        r = invoke(w, upstream_pids, {"exit": 1})
        assert r.status_code == 200, r.text

        def not_healthy():
            try:
                return w.get("/health", timeout=1).status_code != 200
            except requests.RequestException:
                return True  # already gone

        wait_until(not_healthy, 5)
        rc = w.wait(10)
        assert rc != 0


def test_sigterm_stops_upstream_child(upstream_pids):
    with Warm(http_env(free_port()), cwd=REPO) as w:
        r = invoke(w, upstream_pids, {})
        pid = r.json()["pid"]
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
    wait_until(lambda: not pid_alive(pid), 3)


def test_never_healthy_child_is_startup_error_in_oneshot(tmp_path):
    pidfile = tmp_path / "pid"
    env = http_env(free_port(), WATCHDOG_CMD=f"{PY} {FIXTURES / 'never_ready.py'}", PIDFILE=pidfile,
                   READY_TIMEOUT_MS=500, EXECUTION_ID="exec-never", INVOCATION_PAYLOAD="{}")
    try:
        start = time.monotonic()
        cp = run_oneshot(env, timeout=20)
        assert time.monotonic() - start < 5
        lines = [l for l in cp.stdout.decode().splitlines() if l.strip()]
        assert lines, cp.stderr.decode(errors="replace")
        res = json.loads(lines[-1])
        assert res["success"] is False
        assert res["error"]["code"] == "STARTUP_ERROR", res
        assert cp.returncode == 1
    finally:
        if pidfile.exists():
            kill_pid(int(pidfile.read_text()))


def test_child_failing_before_ready_is_startup_error_at_once():
    env = http_env(free_port(), WATCHDOG_CMD=f"{PY} {FIXTURES / 'fail.py'}", READY_TIMEOUT_MS=10000,
                   EXECUTION_ID="exec-fail-start", INVOCATION_PAYLOAD="{}")
    start = time.monotonic()
    cp = run_oneshot(env, timeout=20)
    assert time.monotonic() - start < 5, "did not fail at once"
    res = json.loads([l for l in cp.stdout.decode().splitlines() if l.strip()][-1])
    assert res["error"]["code"] == "STARTUP_ERROR", res
    assert "STDERR-TAIL" in res["error"]["message"]
    assert cp.returncode == 1


def test_oneshot_http_runner_returns_upstream_output():
    port = free_port()
    env = http_env(port, EXECUTION_ID="exec-http-oneshot", INVOCATION_PAYLOAD='{"input": 5}', TRACE_ID="tr-1")
    cp = run_oneshot(env, cwd=REPO, timeout=20)
    lines = [l for l in cp.stdout.decode().splitlines() if l.strip()]
    assert lines, cp.stderr.decode(errors="replace")
    res = json.loads(lines[-1])
    if isinstance(res.get("output"), dict) and "pid" in res["output"]:
        kill_pid(res["output"]["pid"])  # in case the watchdog left its child behind
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert res["success"] is True, res
    assert res["output"]["payload"] == {"input": 5}
    assert res["output"]["headers"]["x-execution-id"] == "exec-http-oneshot"
    assert res["output"]["headers"]["x-trace-id"] == "tr-1"


def test_launcher_exiting_0_with_external_upstream_works():
    port = free_port()
    upstream = subprocess.Popen([PY, str(EXAMPLES / "http-upstream" / "server.py")],
                                env=clean_env(PORT=port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Warm(http_env(port, WATCHDOG_CMD="sleep 0"), cwd=REPO) as w:
            r = w.post(json={"via": "launcher"})
            assert r.status_code == 200, r.text
            assert r.json()["payload"] == {"via": "launcher"}
            assert r.json()["pid"] == upstream.pid
            assert w.get("/health").status_code == 200
    finally:
        upstream.kill()
        upstream.wait(5)


# --- a launcher (`WATCHDOG_CMD="sleep 0"`) in front of a runtime that is already up --------------
# nanofaas runs `EXECUTION_MODE=HTTP WATCHDOG_CMD="sleep 0"` when something else started the
# runtime. Its health may answer before `sleep 0` has exited; that exit (status 0) is a
# launcher's, never a failure by itself (section 2).

LAUNCHER_RUNS = 30


@pytest.fixture
def external_upstream():
    """examples/http-upstream/server.py started here, not by the watchdog; yields (port, Popen)."""
    port = free_port()
    proc = subprocess.Popen([PY, str(EXAMPLES / "http-upstream" / "server.py")],
                            env=clean_env(PORT=port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200, 10)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            proc.kill()
        proc.wait(5)


@pytest.fixture
def cpu_burner():
    """One busy loop per core for the test's duration, so the launcher's exit and the
    runtime's first health answer race as they do on a loaded node."""
    burners = [subprocess.Popen([PY, "-c", "while True: pass"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for _ in range(os.cpu_count() or 2)]
    time.sleep(0.2)  # let them get going
    try:
        yield
    finally:
        for b in burners:
            b.kill()
        for b in burners:
            b.wait(5)


def test_launcher_oneshot_succeeds_every_time_under_cpu_load(external_upstream, cpu_burner):
    port, upstream = external_upstream
    failures = []
    with CallbackServer() as cb:
        for i in range(LAUNCHER_RUNS):
            env = http_env(port, WATCHDOG_CMD="sleep 0", EXECUTION_ID=f"exec-launcher-{i}",
                           INVOCATION_PAYLOAD=json.dumps({"input": {"run": i}}), CALLBACK_URL=cb.url)
            cp = run_oneshot(env, cwd=REPO, timeout=30)
            got = cb.wait_for(i + 1)[i]
            body = got["body"]
            ok = (cp.returncode == 0 and got["path"] == f"/cb/exec-launcher-{i}:complete"
                  and body.get("success") is True
                  and body["output"]["payload"] == {"input": {"run": i}}
                  and body["output"]["pid"] == upstream.pid)
            if not ok:
                failures.append((i, cp.returncode, body, cp.stderr.decode(errors="replace")[-2000:]))
    assert not failures, f"{len(failures)} of {LAUNCHER_RUNS} one-shot runs failed; first: {failures[0]}"


def test_launcher_warm_stays_ready_every_time_under_cpu_load(external_upstream, cpu_burner):
    port, upstream = external_upstream
    failures = []
    for i in range(LAUNCHER_RUNS):
        with Warm(http_env(port, WATCHDOG_CMD="sleep 0"), cwd=REPO) as w:
            first = w.post(json={"run": i})
            # By now `sleep 0` has long exited; the watchdog must not have taken that for a
            # dead runtime.
            time.sleep(0.3)
            second = w.post(json={"run": i, "again": True})
            health = w.get("/health")
            ok = (first.status_code == 200 and first.json()["pid"] == upstream.pid
                  and second.status_code == 200 and health.status_code == 200
                  and w.proc.poll() is None)
            if not ok:
                failures.append((i, first.status_code, first.text, second.status_code, second.text,
                                 health.status_code, w.proc.poll(), w.logs()[-2000:]))
    assert not failures, f"{len(failures)} of {LAUNCHER_RUNS} warm runs failed; first: {failures[0]}"


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_launched_runtime_that_stops_answering_health_ends_warm_watchdog(external_upstream, how):
    """Warm mode keeps polling HEALTH_URL (every second) once the launcher is gone; a
    runtime silent for READY_TIMEOUT_MS is a dead one: not ready, exit non-zero. `killed`
    refuses connections at once; `stopped` (SIGSTOP) accepts them and never answers."""
    port, upstream = external_upstream
    ready_timeout = 2.0
    env = http_env(port, WATCHDOG_CMD="sleep 0", READY_TIMEOUT_MS=int(ready_timeout * 1000))
    with Warm(env, cwd=REPO) as w:
        assert w.post(json={"before": 1}).status_code == 200
        time.sleep(1.5)  # the launcher is gone and the watch has polled at least once
        assert w.get("/health").status_code == 200
        silenced = time.monotonic()
        upstream.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        statuses = set()

        def exited():
            try:
                statuses.add(w.get("/health", timeout=0.5).json()["status"])
            except (requests.RequestException, ValueError):
                pass
            return w.proc.poll() is not None

        wait_until(exited, ready_timeout + 3, interval=0.02)
        took = time.monotonic() - silenced
        assert w.proc.returncode != 0
        # Never before the runtime has been silent for READY_TIMEOUT_MS (less the up-to-one
        # second since its last answer), never later than READY_TIMEOUT_MS plus a second.
        assert ready_timeout - 1.0 <= took <= ready_timeout + 1.0, took
        assert statuses <= {"ok", "draining", "unhealthy"}, statuses
        assert "HEALTH_URL" in w.logs() and "READY_TIMEOUT_MS" in w.logs()


# --- what a 2xx answer's body becomes (section 2) -------------------------------------------------

@pytest.mark.parametrize("raw, content_type, expected", [
    ("not json {", "application/json", None),
    ("hello", "text/plain", "hello"),
    ("<b>hi</b>\n", "text/html; charset=utf-8", "<b>hi</b>\n"),
    ('{"a": [1, 2]}', "text/plain", {"a": [1, 2]}),  # JSON is JSON, whatever its label
    ("not json {", None, None),
    ("", None, None),
    ("not json {", "application/octet-stream", None),
])
def test_2xx_answer_is_json_or_declared_text(upstream_pids, raw, content_type, expected):
    with CallbackServer() as cb:
        env = http_env(free_port(), CALLBACK_URL=cb.url)
        with Warm(env, cwd=REPO) as w:
            r = w.post(json={"input": {"raw": raw, "content_type": content_type}},
                       headers={"X-Execution-Id": "exec-answer"})
            got = cb.wait_for(1)[0]
            assert got["path"] == "/cb/exec-answer:complete"
            if expected is None:
                msg = assert_error(r, 500, "FUNCTION_ERROR")
                assert "Invalid JSON output" in msg, msg
                assert got["body"]["success"] is False, got
                assert got["body"]["error"]["code"] == "FUNCTION_ERROR", got
                assert "Invalid JSON output" in got["body"]["error"]["message"], got
                assert got["body"]["output"] is None
            else:
                assert r.status_code == 200, r.text
                if isinstance(expected, str):
                    # Text goes to the client as it is, with the runtime's Content-Type.
                    assert r.headers["Content-Type"] == content_type
                    assert r.text == raw
                else:
                    assert r.json() == expected
                assert got["body"] == {"success": True, "output": expected, "error": None}
            # The runtime is still fine afterwards.
            assert invoke(w, upstream_pids, {"after": 1}).status_code == 200


def test_oneshot_text_answer_is_the_output_and_invalid_json_is_function_error():
    port = free_port()
    with CallbackServer() as cb:
        for i, (spec, ok) in enumerate([({"raw": "hello", "content_type": "text/plain"}, True),
                                        ({"raw": "nope", "content_type": "application/json"}, False)]):
            env = http_env(port, EXECUTION_ID=f"exec-raw-{i}", CALLBACK_URL=cb.url,
                           INVOCATION_PAYLOAD=json.dumps({"input": spec}))
            cp = run_oneshot(env, cwd=REPO, timeout=20)
            assert cp.returncode == 0, cp.stderr.decode(errors="replace")
            body = cb.wait_for(i + 1)[i]["body"]
            if ok:
                assert body == {"success": True, "output": "hello", "error": None}
            else:
                assert body["success"] is False and body["error"]["code"] == "FUNCTION_ERROR", body
                assert "Invalid JSON output" in body["error"]["message"], body


# --- streamed answers and 2xx statuses passed through (issue "beyond the peers") ----------------

def test_2xx_status_and_content_type_reach_the_client(upstream_pids):
    with CallbackServer() as cb:
        with Warm(http_env(free_port(), CALLBACK_URL=cb.url), cwd=REPO) as w:
            r = w.post(json={"input": {"ok_status": 201}}, headers={"X-Execution-Id": "created"})
            assert r.status_code == 201, r.text
            assert r.json()["payload"] == {"input": {"ok_status": 201}}
            r = w.post(json={"input": {"raw": "<p>hi</p>", "content_type": "text/html", "ok_status": 202}},
                       headers={"X-Execution-Id": "html"})
            assert (r.status_code, r.headers["Content-Type"], r.text) == (202, "text/html", "<p>hi</p>")
            outputs = {c["path"]: c["body"]["output"] for c in cb.wait_for(2)}
            assert outputs["/cb/html:complete"] == "<p>hi</p>"
            assert outputs["/cb/created:complete"]["payload"] == {"input": {"ok_status": 201}}


def test_an_sse_runtime_is_passed_through_chunk_by_chunk(upstream_pids):
    with CallbackServer() as cb:
        with Warm(http_env(free_port(), CALLBACK_URL=cb.url), cwd=REPO) as w:
            spec = {"input": {"stream": 5, "every": 0.2, "format": "sse"}}
            arrivals, events = [], []
            with requests.post(w.url + "/invoke", json=spec, stream=True, timeout=10,
                               headers={"X-Execution-Id": "sse-1", "Accept": "text/event-stream"}) as r:
                assert r.status_code == 200, r.text
                assert r.headers["Content-Type"] == "text/event-stream"
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        arrivals.append(time.time())
                        events.append(json.loads(line[len(b"data: "):]))
            assert [e["i"] for e in events] == [0, 1, 2, 3, 4]
            # Each value reached the client before the runtime produced the next one.
            for k in range(4):
                assert arrivals[k] < events[k + 1]["t"], (k, arrivals[k], events[k + 1]["t"])
            # The callback carries the values collected.
            body = cb.wait_for(1)[0]["body"]
            assert body["success"] is True
            assert [v["i"] for v in body["output"]] == [0, 1, 2, 3, 4]


def test_an_ndjson_runtime_reaches_an_sse_client_and_a_json_client(upstream_pids):
    with Warm(http_env(free_port()), cwd=REPO) as w:
        spec = {"input": {"stream": 3, "format": "ndjson"}}
        r = w.post(json=spec, headers={"Accept": "text/event-stream"})
        assert r.headers["Content-Type"] == "text/event-stream"
        data = [json.loads(p[len("data: "):]) for p in r.text.strip().split("\n\n")]
        assert [d["i"] for d in data] == [0, 1, 2]
        r = w.post(json=spec)
        assert r.headers["Content-Type"] == "application/x-ndjson"
        assert [json.loads(l)["i"] for l in r.text.strip().splitlines()] == [0, 1, 2]


def test_a_runtime_stream_past_its_deadline_ends_with_a_timeout_line(upstream_pids):
    with CallbackServer() as cb:
        with Warm(http_env(free_port(), CALLBACK_URL=cb.url), cwd=REPO) as w:
            spec = {"input": {"stream": 1000, "every": 0.1, "format": "ndjson"}}
            r = w.post(json=spec, headers={"X-Execution-Id": "late", "X-Timeout-Ms": "800"})
            lines = [json.loads(l) for l in r.text.strip().splitlines()]
            assert 2 <= len(lines) < 20, lines
            assert lines[-1]["code"] == "TIMEOUT", lines[-1]
            body = cb.wait_for(1)[0]["body"]
            assert body["success"] is False and body["error"]["code"] == "TIMEOUT", body
            # The runtime is free for the next one.
            assert invoke(w, upstream_pids, {"after": 1}).status_code == 200


def test_a_runtime_stream_over_max_output_bytes_is_cut(upstream_pids):
    with Warm(http_env(free_port(), MAX_OUTPUT_BYTES=2000), cwd=REPO) as w:
        r = w.post(json={"input": {"stream": 500, "format": "ndjson"}})
        lines = [json.loads(l) for l in r.text.strip().splitlines()]
        assert lines[-1]["code"] == "OUTPUT_TOO_LARGE", lines[-1]
        assert sum(len(json.dumps(l)) for l in lines[:-1]) <= 2000

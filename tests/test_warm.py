"""Warm mode (contract sections 4, 6, 7 and 10) with the STDIO and FILE runners."""

import json
import os
import re
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import EXAMPLES, FIXTURES, PY, CallbackServer, Warm, clean_env, kill_pid, pid_alive, wait_until

PAYLOAD = {"input": {"big": 123456789012345678901234567890, "text": "héllo ✓ 😀", "list": [1, None, 2.5]},
           "metadata": {"k": "v"}}


def stdio_env(cmd="cat", **overrides):
    base = {"EXECUTION_MODE": "STDIO", "WATCHDOG_CMD": cmd}
    base.update(overrides)
    return clean_env(**base)


def fixture_cmd(name):
    return f"{PY} {FIXTURES / name}"


def assert_error(resp, status, code=None):
    """Checks status, the error body shape and the echoed execution id."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["code"], str), body
    if code is not None:
        assert body["code"] == code, body
    sent = resp.request.headers.get("X-Execution-Id")
    if sent:
        assert resp.headers.get("X-Execution-Id") == sent
    return body


def run_concurrently(fns):
    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(f) for f in fns]
        return [f.result() for f in futures]


# -- health and routing -------------------------------------------------------

def test_health_ok_and_live_when_ready():
    with Warm(stdio_env()) as w:
        r = w.get("/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert w.get("/live").status_code == 200
        for alias in ("/_/health", "/_/ready"):
            r = w.get(alias)
            assert r.status_code == 200 and r.json()["status"] == "ok", alias


def test_unknown_path_is_404():
    with Warm(stdio_env()) as w:
        assert w.get("/nope").status_code == 404
        assert w.post("/nope", json={}).status_code == 404


def test_wrong_method_is_405_with_allow():
    with Warm(stdio_env()) as w:
        r = w.get("/invoke")
        assert r.status_code == 405
        assert "POST" in r.headers.get("Allow", "")
        r = w.post("/health", json={})
        assert r.status_code == 405
        assert "GET" in r.headers.get("Allow", "")


# -- /invoke basics -------------------------------------------------------------

def test_invoke_echoes_payload_exactly_with_execution_id():
    with Warm(stdio_env()) as w:
        r = w.post(json=PAYLOAD, headers={"X-Execution-Id": "exec-echo-1"})
        assert r.status_code == 200, r.text
        assert r.json() == PAYLOAD
        assert "123456789012345678901234567890" in r.text
        assert r.headers.get("X-Execution-Id") == "exec-echo-1"
        assert r.headers.get("Content-Type", "").startswith("application/json")


def test_invoke_passes_any_json_through():
    with Warm(stdio_env()) as w:
        for payload in ([1, 2], "text", 0, None, True):
            r = w.post(json=payload)
            assert r.status_code == 200, r.text
            assert r.json() == payload


def test_missing_execution_id_is_400():
    with Warm(stdio_env()) as w:
        r = w.post(json={}, headers={"X-Execution-Id": None})
        assert_error(r, 400, "INVALID_REQUEST")


def test_execution_id_env_is_fallback_and_header_wins():
    with Warm(stdio_env(EXECUTION_ID="exec-from-env")) as w:
        r = w.post(json={"a": 1}, headers={"X-Execution-Id": None})
        assert r.status_code == 200, r.text
        assert r.json() == {"a": 1}
        assert r.headers.get("X-Execution-Id") == "exec-from-env"
        r = w.post(json={"a": 2}, headers={"X-Execution-Id": "exec-from-header"})
        assert r.status_code == 200
        assert r.headers.get("X-Execution-Id") == "exec-from-header"


def test_invalid_json_body_is_400():
    with Warm(stdio_env()) as w:
        r = w.post(data=b"{not json", headers={"Content-Type": "application/json"})
        assert_error(r, 400, "INVALID_REQUEST")


def test_oversize_body_is_413():
    with Warm(stdio_env(MAX_BODY_BYTES=1000)) as w:
        big = json.dumps({"pad": "x" * 2000}).encode()
        assert_error(w.post(data=big), 413, "PAYLOAD_TOO_LARGE")
        small = {"pad": "x" * 100}
        r = w.post(json=small)
        assert r.status_code == 200 and r.json() == small


def test_invoke_token_required():
    with Warm(stdio_env(INVOKE_TOKEN="tok-123")) as w:
        assert_error(w.post(json={}), 401, "UNAUTHORIZED")
        assert_error(w.post(json={}, headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED")
        assert_error(w.post(json={}, headers={"Authorization": "tok-123"}), 401, "UNAUTHORIZED")
        r = w.post(json={"ok": 1}, headers={"Authorization": "Bearer tok-123"})
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": 1}


def test_failing_child_is_500_function_error():
    with Warm(stdio_env(fixture_cmd("fail.py"))) as w:
        body = assert_error(w.post(json={}), 500, "FUNCTION_ERROR")
        assert "STDERR-TAIL" in body["error"]


def test_invalid_json_output_is_500():
    with Warm(stdio_env(fixture_cmd("nonjson.py"))) as w:
        body = assert_error(w.post(json={}), 500, "FUNCTION_ERROR")
        assert "Invalid JSON output" in body["error"]


def test_cold_start_headers_only_on_first_invocation():
    with Warm(stdio_env()) as w:
        first = w.post(json={"n": 1})
        assert first.status_code == 200
        assert first.headers.get("X-Cold-Start") == "true"
        assert float(first.headers["X-Init-Duration-Ms"]) >= 0
        second = w.post(json={"n": 2})
        assert second.status_code == 200
        assert second.headers.get("X-Cold-Start", "false") != "true"
        assert "X-Init-Duration-Ms" not in second.headers


# -- concurrency, queue and deadlines ---------------------------------------------

def test_full_queue_is_429_with_retry_after():
    with Warm(stdio_env(fixture_cmd("slow.py"), MAX_CONCURRENCY=1, QUEUE_DEPTH=1)) as w:
        resps = run_concurrently([lambda: w.post(json={"sleep": 1.0}) for _ in range(3)])
        statuses = sorted(r.status_code for r in resps)
        assert statuses == [200, 200, 429], [(r.status_code, r.text) for r in resps]
        rejected = next(r for r in resps if r.status_code == 429)
        assert_error(rejected, 429, "OVERLOADED")
        assert rejected.headers.get("Retry-After")


def test_concurrent_invocations_run_in_parallel():
    with Warm(stdio_env(fixture_cmd("slow.py"), MAX_CONCURRENCY=8)) as w:
        start = time.monotonic()
        resps = run_concurrently([lambda i=i: w.post(json={"sleep": 1.0, "i": i}) for i in range(8)])
        elapsed = time.monotonic() - start
        assert [r.status_code for r in resps] == [200] * 8, [r.text for r in resps]
        assert sorted(r.json()["payload"]["i"] for r in resps) == list(range(8))
        assert elapsed < 4, elapsed


def _grandchild_timeout(w, tmp_path, headers=None):
    pidfile = tmp_path / f"pids-{uuid.uuid4().hex}.json"
    pids = {}
    try:
        start = time.monotonic()
        r = w.post(json={"pidfile": str(pidfile)}, headers=headers, timeout=20)
        elapsed = time.monotonic() - start
        if pidfile.exists():
            pids = json.loads(pidfile.read_text())
        assert_error(r, 504, "TIMEOUT")
        assert elapsed < 3, elapsed
        assert pids, "fixture did not start"
        wait_until(lambda: not pid_alive(pids["child"]), 3)
        wait_until(lambda: not pid_alive(pids["grandchild"]), 3)
    finally:
        for pid in pids.values():
            kill_pid(pid)


def test_timeout_ms_deadline_kills_child_group(tmp_path):
    with Warm(stdio_env(fixture_cmd("grandchild.py"), TIMEOUT_MS=500)) as w:
        _grandchild_timeout(w, tmp_path)


def test_x_timeout_ms_lowers_deadline_and_kills_grandchild(tmp_path):
    with Warm(stdio_env(fixture_cmd("grandchild.py"), TIMEOUT_MS=20000)) as w:
        _grandchild_timeout(w, tmp_path, headers={"X-Timeout-Ms": "500"})


def test_x_timeout_ms_never_raises_deadline():
    with Warm(stdio_env(fixture_cmd("slow.py"), TIMEOUT_MS=500)) as w:
        start = time.monotonic()
        r = w.post(json={"sleep": 3}, headers={"X-Timeout-Ms": "10000"})
        assert_error(r, 504, "TIMEOUT")
        assert time.monotonic() - start < 2


def test_queued_time_counts_against_deadline():
    # The second request waits ~0.7 s in the queue, then needs ~1.2 s: 504 only if the
    # queued time counts against its 1.5 s deadline.
    with Warm(stdio_env(fixture_cmd("slow.py"), MAX_CONCURRENCY=1, QUEUE_DEPTH=4, TIMEOUT_MS=1500)) as w:
        def first():
            return w.post(json={"sleep": 0.8})

        def second():
            time.sleep(0.2)
            return w.post(json={"sleep": 1.2})

        r1, r2 = run_concurrently([first, second])
        assert r1.status_code == 200, r1.text
        assert_error(r2, 504, "TIMEOUT")


# -- metrics -----------------------------------------------------------------------

def metric_value(text, name, labels):
    """The value of one sample `name{labels}`; labels as written, e.g. 'function="echo",mode="STDIO"'."""
    m = re.search(r"^" + re.escape(f"{name}{{{labels}}}") + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_count_invocations_and_name_every_metric():
    with CallbackServer() as cb, \
            Warm(stdio_env(fixture_cmd("slow.py"), FUNCTION_NAME="echo", MAX_CONCURRENCY=1, QUEUE_DEPTH=1,
                           CALLBACK_URL=cb.url)) as w:
        ok = 'function="echo",mode="STDIO",success="true"'
        assert w.post(json={"sleep": 0}).status_code == 200
        m1 = w.get("/metrics")
        assert m1.status_code == 200
        assert m1.headers.get("Content-Type", "").startswith("text/plain")
        assert metric_value(m1.text, "watchdog_invocations_total", ok) == 1, m1.text
        assert w.post(json={"sleep": 0}).status_code == 200
        assert metric_value(w.get("/metrics").text, "watchdog_invocations_total", ok) == 2
        # a failure, a timeout and a rejection, so every labelled family has a sample
        assert w.post(json={"sleep": 0, "exit": 1}).status_code == 500
        assert w.post(json={"sleep": 2}, headers={"X-Timeout-Ms": "300"}).status_code == 504
        time.sleep(0.5)  # let the killed child's slot be released
        resps = run_concurrently([lambda: w.post(json={"sleep": 0.6}) for _ in range(3)])
        assert sorted(r.status_code for r in resps) == [200, 200, 429]
        cb.wait_for(6)  # 2 ok, 1 failure, 1 timeout, 2 more ok (a 429 may or may not call back)
        text = wait_until(lambda: (t := w.get("/metrics").text) and "watchdog_callbacks_total{" in t and t, 5)
        assert metric_value(text, "watchdog_invocations_total", 'function="echo",mode="STDIO",success="false"') >= 2
        assert metric_value(text, "watchdog_timeouts_total", 'function="echo",mode="STDIO"') == 1
        names = [
            "watchdog_invocations_total{",
            "watchdog_invocation_duration_seconds_bucket{",
            "watchdog_invocation_duration_seconds_sum{",
            "watchdog_invocation_duration_seconds_count{",
            "watchdog_invocations_in_flight{",
            "watchdog_timeouts_total{",
            "watchdog_queue_depth{",
            "watchdog_rejected_total{",
            "watchdog_callbacks_total{",
            "watchdog_init_duration_seconds",
            "process_",
        ]
        missing = [n for n in names if not re.search(r"^" + re.escape(n), text, re.M)]
        samples = "\n".join(l for l in text.splitlines() if l.startswith("watchdog_") and "_bucket" not in l)
        assert not missing, f"missing {missing} in:\n{samples}"
        assert re.search(r'^watchdog_rejected_total\{function="echo",reason="[^"]+"\} 1$', text, re.M), text
        assert re.search(r'^watchdog_callbacks_total\{function="echo",result="[^"]+"\} \d', text, re.M), text


# -- signals -----------------------------------------------------------------------

def test_sigterm_under_load_drains_then_exits_0():
    with Warm(stdio_env(fixture_cmd("slow.py"), MAX_CONCURRENCY=4)) as w:
        results = [None] * 4

        def call(i):
            results[i] = w.post(json={"sleep": 1.5, "i": i}, timeout=15)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        w.signal(signal.SIGTERM)
        def health_503():
            r = w.get("/health", timeout=1)
            return r.status_code == 503 and r.json()  # a 503 Response itself is falsy

        assert wait_until(health_503, 1.0)["status"] == "draining"
        assert_error(w.post(json={}, timeout=5), 503)
        for t in threads:
            t.join(15)
        assert [r.status_code if r is not None else None for r in results] == [200] * 4, \
            [r.text if r is not None else None for r in results]
        assert sorted(r.json()["payload"]["i"] for r in results) == [0, 1, 2, 3]
        assert w.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_watchdog_exits_at_once_on_signal(sig):
    with Warm(stdio_env()) as w:
        start = time.monotonic()
        w.signal(sig)
        assert w.wait(5) == 0
        assert time.monotonic() - start < 2


# -- warm callbacks -------------------------------------------------------------------

def test_warm_callback_posted_after_response():
    with CallbackServer(delay=2.0) as cb, Warm(stdio_env(CALLBACK_URL=cb.url)) as w:
        start = time.monotonic()
        r = w.post(json={"x": 1}, headers={"X-Execution-Id": "exec-warm-cb", "X-Trace-Id": "trace-w",
                                           "X-Dispatch-Attempt": "2", "Idempotency-Key": "idem-1"})
        assert r.status_code == 200 and r.json() == {"x": 1}
        assert time.monotonic() - start < 1.5, "the callback delayed the response"
        req = cb.wait_for(1)[0]
        assert req["path"] == "/cb/exec-warm-cb:complete"
        assert req["body"] == {"success": True, "output": {"x": 1}, "error": None}
        assert req["headers"].get("x-trace-id") == "trace-w"
        assert req["headers"].get("x-dispatch-attempt") == "2"
        assert req["headers"].get("idempotency-key") == "idem-1"


def test_warm_callback_reports_failure():
    with CallbackServer() as cb, Warm(stdio_env(fixture_cmd("fail.py"), CALLBACK_URL=cb.url)) as w:
        assert w.post(json={}).status_code == 500
        body = cb.wait_for(1)[0]["body"]
        assert body["success"] is False and body["output"] is None
        assert body["error"]["code"] == "FUNCTION_ERROR"


def test_x_callback_url_header_is_used():
    with CallbackServer() as cb, Warm(stdio_env()) as w:
        r = w.post(json={"y": 2}, headers={"X-Execution-Id": "exec-hdr-cb", "X-Callback-Url": cb.url})
        assert r.status_code == 200
        req = cb.wait_for(1)[0]
        assert req["path"] == "/cb/exec-hdr-cb:complete"
        assert req["body"] == {"success": True, "output": {"y": 2}, "error": None}


def test_x_callback_url_of_other_origin_is_not_honoured():
    with CallbackServer() as allowed, CallbackServer() as other, Warm(stdio_env(CALLBACK_URL=allowed.url)) as w:
        w.post(json={}, headers={"X-Callback-Url": other.url})
        time.sleep(1.0)
        assert other.requests == []


def test_pending_callback_flushed_before_exit():
    # The first attempt gets 503, so at SIGTERM the callback still waits for its retry.
    with CallbackServer(statuses=[503], delay=0.2) as cb, Warm(stdio_env(CALLBACK_URL=cb.url)) as w:
        assert w.post(json={"z": 3}).status_code == 200
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
        assert len(cb.requests) == 2, cb.requests
        assert cb.requests[1]["body"]["output"] == {"z": 3}


# -- logs ---------------------------------------------------------------------------

def test_child_stderr_is_logged_with_execution_id():
    cmd = f"{PY} {EXAMPLES / 'python-stdio' / 'handler.py'}"
    with Warm(stdio_env(cmd)) as w:
        r = w.post(json={"input": 1}, headers={"X-Execution-Id": "exec-log-77"})
        assert r.status_code == 200
        assert r.json()["echo"] == {"input": 1}

        def found():
            return [l for l in w.logs().splitlines() if "handler: received a dict payload" in l]

        lines = wait_until(found, 3)
        assert any("exec-log-77" in l for l in lines), lines
        assert w.log_lines(), "LOG_FORMAT=json should give JSON log lines on stderr"


def test_long_stderr_line_does_not_block_child():
    with Warm(stdio_env(fixture_cmd("bigstderr.py"))) as w:
        start = time.monotonic()
        r = w.post(json={}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True}
        assert time.monotonic() - start < 5
        # Forwarded in full (possibly split into several records), tagged with the execution id.
        exec_id = r.request.headers["X-Execution-Id"]

        def forwarded():
            lines = [l for l in w.logs().splitlines() if exec_id in l]
            text = "".join(lines)
            return "BIG-START" in text and "BIG-END" in text and text.count("x") >= 1 << 20

        wait_until(forwarded, 3)


# -- FILE runner ---------------------------------------------------------------------

def test_file_runner_concurrent_invocations_get_own_files(tmp_path):
    inp, out = tmp_path / "in.json", tmp_path / "out.json"
    env = clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD=fixture_cmd("file_sleepy.py"), MAX_CONCURRENCY=4,
                    INPUT_FILE=inp, OUTPUT_FILE=out)
    with Warm(env) as w:
        ids = [f"exec-file-{i}" for i in range(4)]
        resps = run_concurrently([lambda i=i: w.post(json={"i": i, "sleep": 0.5}, headers={"X-Execution-Id": ids[i]})
                                  for i in range(4)])
        assert [r.status_code for r in resps] == [200] * 4, [r.text for r in resps]
        for i, r in enumerate(resps):
            body = r.json()
            assert body["echo"] == {"i": i, "sleep": 0.5}
            # A private directory per invocation, holding the configured base names.
            private = os.path.dirname(body["input_file"])
            assert os.path.basename(body["input_file"]) == "in.json", body
            assert body["output_file"] == os.path.join(private, "out.json"), body
            assert os.path.dirname(private) == str(tmp_path), body
            assert not os.path.exists(private), "removed after use"
        assert len({os.path.dirname(r.json()["input_file"]) for r in resps}) == 4


def test_file_runner_single_slot_uses_paths_as_given(tmp_path):
    inp, out = tmp_path / "in.json", tmp_path / "out.json"
    env = clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD=f"{PY} {EXAMPLES / 'python-stdio' / 'file_handler.py'}",
                    MAX_CONCURRENCY=1, INPUT_FILE=inp, OUTPUT_FILE=out)
    with Warm(env) as w:
        r = w.post(json={"q": 1})
        assert r.status_code == 200, r.text
        assert r.json()["echo"] == {"q": 1}
        assert r.json()["input_file"] == str(inp)
        assert not inp.exists() and not out.exists()

"""The LOOP runner (contract sections 2, 8 and 10) and its adapters (adapters/)."""

import json
import os
import shutil
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import FIXTURES, PY, REPO, Warm, children_of, clean_env, pid_alive, run_oneshot, wait_until

LOOP = FIXTURES / "loop"
NODE = shutil.which("node")
NODE_ADAPTER = REPO / "adapters" / "node" / "ember-loop.js"
PY_ADAPTER = REPO / "adapters" / "python" / "ember_loop.py"



def node_cmd(handler="handler.js"):
    # No skipping: a machine without Node.js fails these tests, loudly.
    assert NODE, "node is not installed: run scripts/test-deps.sh (apt-get install nodejs)"
    return f"{NODE} {NODE_ADAPTER} {LOOP / handler}"


def py_cmd(function=None):
    cmd = f"{PY} {PY_ADAPTER} {LOOP / 'handler.py'}"
    return f"{cmd} {function}" if function else cmd


def loop_env(cmd, **overrides):
    base = {"EXECUTION_MODE": "LOOP", "WATCHDOG_CMD": cmd, "MAX_CONCURRENCY": 1}
    base.update(overrides)
    return clean_env(**base)


def assert_error(resp, status, code):
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    return body


# -- the pool -------------------------------------------------------------------------

def test_one_kept_child_answers_a_thousand_invocations():
    with Warm(loop_env(node_cmd("sync.js"))) as w, requests.Session() as s:
        pids = set()
        for n in range(1000):
            r = s.post(w.url + "/invoke", json={"n": n}, headers={"X-Execution-Id": f"seq-{n}"}, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["n"] == n
            pids.add(r.json()["pid"])
        assert len(pids) == 1, pids


def test_concurrent_invocations_get_distinct_children():
    with Warm(loop_env(node_cmd(), MAX_CONCURRENCY=4)) as w:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            resps = list(pool.map(lambda _: w.post(json={"sleep": 0.6}), range(4)))
        elapsed = time.monotonic() - start
        assert all(r.status_code == 200 for r in resps), [r.text for r in resps]
        assert len({r.json()["pid"] for r in resps}) == 4, [r.json()["pid"] for r in resps]
        assert elapsed < 2.0, elapsed  # ran side by side, not in turn


def test_request_line_carries_ids_and_deadline():
    with Warm(loop_env(node_cmd())) as w:
        before_ms = time.time() * 1000
        r = w.post(json={"input": 1}, headers={"X-Execution-Id": "ids-1", "X-Trace-Id": "trace-1",
                                                "X-Timeout-Ms": "5000"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["echo"] == {"input": 1}
        assert out["execution_id"] == "ids-1" and out["trace_id"] == "trace-1"
        assert before_ms + 4000 < out["deadline_ms"] <= before_ms + 5500
        assert 0 < out["remaining_ms"] <= 5000
        assert w.post(json=None).json()["echo"] is None  # any JSON payload passes through


# -- faults ---------------------------------------------------------------------------

def test_child_exit_fails_that_invocation_and_a_new_child_takes_the_next():
    with Warm(loop_env(node_cmd())) as w:
        first = w.post(json={}).json()["pid"]
        body = assert_error(w.post(json={"exit": 3}), 500, "FUNCTION_ERROR")
        assert "code 3" in body["error"] and "exiting with 3" in body["error"], body
        r = w.post(json={})
        assert r.status_code == 200, r.text
        assert r.json()["pid"] != first
        wait_until(lambda: not pid_alive(first), 5)


def test_hung_child_times_out_and_is_replaced():
    with Warm(loop_env(node_cmd(), KILL_GRACE_MS=200)) as w:
        first = w.post(json={}).json()["pid"]
        start = time.monotonic()
        assert_error(w.post(json={"hang": True}, headers={"X-Timeout-Ms": "500"}), 504, "TIMEOUT")
        assert time.monotonic() - start < 2
        r = w.post(json={})
        assert r.status_code == 200, r.text
        assert r.json()["pid"] != first
        wait_until(lambda: not pid_alive(first), 5)


def test_stdout_noise_is_logged_with_the_execution_id_not_taken_as_result():
    with Warm(loop_env(node_cmd())) as w:
        r = w.post(json={"noise": True}, headers={"X-Execution-Id": "noisy-1"})
        assert r.status_code == 200, r.text
        assert r.json()["echo"] == {"noise": True}

        def forwarded():
            lines = [l for l in w.log_lines() if l.get("target") == "function"]
            return [l for l in lines if "noise for noisy-1" in l.get("message", "")]

        lines = wait_until(lambda: len(forwarded()) == 2 and forwarded(), 3)
        assert {l["stream"] for l in lines} == {"stdout", "stderr"}
        assert all("noisy-1" in json.dumps(l) for l in lines), lines


def test_malformed_result_line_wrong_id_and_extra_line_fail_and_recover():
    with Warm(loop_env(f"{PY} {LOOP / 'raw.py'}")) as w:
        for broken, says in (("malformed", "not JSON"), ("wrong_id", "someone-else"), ("two_lines", None)):
            before = w.post(json="ok").json()["pid"]
            r = w.post(json=broken)
            if says is None:
                # The first line answers; the second breaks the protocol.
                assert r.status_code == 200 and r.json() == 1, r.text
            else:
                body = assert_error(r, 500, "FUNCTION_ERROR")
                assert says in body["error"], body
            after = w.post(json="ok")
            assert after.status_code == 200, after.text
            assert after.json() == {"pid": after.json()["pid"], "echo": "ok"}
            assert after.json()["pid"] != before, broken


def test_child_crashing_at_start_is_unhealthy_and_answers_with_its_stderr():
    cmd = f"{PY} -c \"import sys; sys.exit('broken at start')\""
    with Warm(loop_env(cmd), wait_ready=False) as w:
        def unhealthy():
            r = w.get("/health")
            return r.status_code == 503 and r.json()["status"] == "unhealthy" and r.json()
        body = wait_until(unhealthy, 5)
        # /health answers anyone: the child's stderr goes to the log, not there.
        assert "broken at start" not in body["reason"], body
        assert "broken at start" in w.logs()
        body = assert_error(w.post(json={}, timeout=10), 500, "FUNCTION_ERROR")
        assert "broken at start" in body["error"], body


def test_command_that_cannot_start_fails_start_up():
    r = run_oneshot(loop_env("/nonexistent/loop-child", INVOCATION_PAYLOAD="{}"), timeout=10)
    assert r.returncode == 1, r
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert result["error"]["code"] == "STARTUP_ERROR", result


# -- adapters -------------------------------------------------------------------------

@pytest.mark.parametrize("handler", ["handler.js", "sync.js"])
def test_node_adapter_keeps_thrown_error_code_and_message(handler):
    with Warm(loop_env(node_cmd(handler))) as w:
        if handler == "handler.js":
            body = assert_error(w.post(json={"throw": {"code": "RATE_LIMITED", "message": "slow down"}}),
                                500, "RATE_LIMITED")
            assert body["error"] == "slow down"
            body = assert_error(w.post(json={"throw": {"message": "no code"}}), 500, "HANDLER_ERROR")
            assert body["error"] == "no code"
        else:
            body = assert_error(w.post(json={"throw": "bad type"}), 500, "HANDLER_ERROR")
            assert body["error"] == "bad type"
        # A thrown error is an answer, not a crash: the same child goes on.
        pids = {w.post(json={}).json()["pid"] for _ in range(2)}
        assert len(pids) == 1


def test_python_adapter_echo_error_and_async():
    with Warm(loop_env(py_cmd())) as w:
        r = w.post(json={"input": "héllo ✓", "big": 123456789012345678901234567890},
                   headers={"X-Execution-Id": "py-1", "X-Trace-Id": "tr"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["echo"] == {"input": "héllo ✓", "big": 123456789012345678901234567890}
        assert (out["execution_id"], out["trace_id"]) == ("py-1", "tr")
        assert out["remaining_ms"] > 0
        body = assert_error(w.post(json={"raise": {"code": "NOT_FOUND", "message": "no such user"}}),
                            500, "NOT_FOUND")
        assert body["error"] == "no such user"
        body = assert_error(w.post(json={"fail": True}), 500, "HANDLER_ERROR")
        assert body["error"] == "plain failure"
        r = w.post(json={"noise": True}, headers={"X-Execution-Id": "py-noise"})
        assert r.status_code == 200 and r.json()["echo"] == {"noise": True}, r.text
        wait_until(lambda: any("python noise for py-noise" in l.get("message", "")
                               and "py-noise" in json.dumps(l) for l in w.log_lines()), 3)
        assert len({w.post(json={}).json()["pid"] for _ in range(3)}) == 1
    with Warm(loop_env(py_cmd("handle_async"))) as w:
        r = w.post(json=[1, 2])
        assert r.status_code == 200, r.text
        assert r.json()["async"] is True and r.json()["echo"] == [1, 2]


def test_oneshot_runs_one_child_once():
    env = loop_env(py_cmd("echo"), EXECUTION_ID="one-1", INVOCATION_PAYLOAD='{"x": [1, 2]}', MAX_CONCURRENCY=4)
    r = run_oneshot(env, timeout=20)
    assert r.returncode == 0, r
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert result == {"success": True, "output": {"x": [1, 2]}, "error": None}, result


# -- shutdown -------------------------------------------------------------------------

def test_sigterm_drains_in_flight_invocation_and_stops_children():
    with Warm(loop_env(node_cmd(), MAX_CONCURRENCY=3)) as w:
        kids = wait_until(lambda: len(children_of(w.proc.pid)) == 3 and children_of(w.proc.pid), 5)
        result = {}

        def slow():
            result["resp"] = w.post(json={"sleep": 1.0})

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        w.signal(signal.SIGTERM)
        t.join(10)
        assert result["resp"].status_code == 200, result["resp"].text
        assert result["resp"].json()["pid"] in kids
        assert w.wait(10) == 0
        wait_until(lambda: not any(pid_alive(p) for p in kids), 3)

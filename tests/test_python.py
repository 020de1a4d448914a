"""The PYTHON runner, black-box: the built watchdog with embedded CPython.

Needs a watchdog built with `cargo build -p watchdog --features python`; without the
feature these tests fail (the binary then rejects EXECUTION_MODE=PYTHON).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import BIN, EXAMPLES, REPO, CallbackServer, Warm, clean_env, run_oneshot, wait_until

FIXTURES = REPO / "tests" / "fixtures" / "python"
PY_EXAMPLES = EXAMPLES / "python"


# Nothing here is skipped: a watchdog built without `--features python` fails these
# tests (it rejects EXECUTION_MODE=PYTHON with exit 2).


def py_env(path=FIXTURES, module="handlers", function=None, **kw) -> dict:
    env = dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=path, HANDLER_MODULE=module)
    if function is not None:
        env["HANDLER_FUNCTION"] = function
    env.update(kw)
    return clean_env(**env)


def health(w):
    r = w.get("/health")
    return r.status_code, r.json()


def wait_health(w, code, timeout):
    """Polls /health until it answers `code`; returns its body."""
    def answered():
        status, body = health(w)
        return body if status == code else None
    return wait_until(answered, timeout)


# -- handlers and signatures -------------------------------------------------------

def test_sync_one_parameter_handler_echoes():
    with Warm(py_env(PY_EXAMPLES / "echo", module="handler")) as w:
        r = w.post(json={"input": {"a": 1}, "metadata": {"k": "v"}})
        assert r.status_code == 200, r.text
        assert r.json() == {"input": {"a": 1}, "metadata": {"k": "v"}}


def test_uppercase_example_gives_the_nanofaas_answer():
    with Warm(py_env(PY_EXAMPLES / "uppercase", module="handler")) as w:
        r = w.post(json={"input": "hello"})
        assert r.status_code == 200, r.text
        assert r.json() == {"result": "HELLO"}


def test_async_handler_gets_context_from_headers():
    with Warm(py_env(PY_EXAMPLES / "async", module="handler", FUNCTION_NAME="asyncfn")) as w:
        r = w.post(json={}, headers={"X-Execution-Id": "exec-async-1", "X-Trace-Id": "trace-9",
                                     "X-Dispatch-Attempt": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["execution_id"] == "exec-async-1"
        assert body["trace_id"] == "trace-9"
        assert body["attempt"] == 2
        assert body["function_name"] == "asyncfn"
        assert body["cold_start"] is True
        assert 0 < body["remaining_ms"] <= 30000
        r = w.post(json={}, headers={"X-Execution-Id": "exec-async-2"})
        assert r.status_code == 200, r.text
        assert r.json()["cold_start"] is False
        assert r.json()["trace_id"] is None


def test_two_parameter_sync_handler_context_matches_headers():
    with Warm(py_env(function="with_context")) as w:
        r = w.post(json={}, headers={"X-Execution-Id": "exec-ctx-7", "X-Trace-Id": "trace-ctx-7"})
        assert r.status_code == 200, r.text
        assert r.json()["execution_id"] == "exec-ctx-7"
        assert r.json()["trace_id"] == "trace-ctx-7"
        assert r.json()["attempt"] == 1


def test_async_fixture_and_other_function_name():
    with Warm(py_env(function="async_echo")) as w:
        r = w.post(json=[1, "two"], headers={"X-Execution-Id": "exec-ae"})
        assert r.status_code == 200, r.text
        assert r.json() == {"request": [1, "two"], "execution_id": "exec-ae"}


def test_requirements_example_uses_its_package():
    # Needs examples/python/requirements/requirements.txt installed for the interpreter the
    # watchdog embeds (scripts/test-deps.sh installs it); without it this test fails.
    with Warm(py_env(PY_EXAMPLES / "requirements", module="handler")) as w:
        r = w.post(json={"bytes": 3000000})
        assert r.status_code == 200, r.text
        assert r.json()["size"] == "3.0 MB"
        assert "second" in r.json()["remaining"], r.json()


def test_module_in_a_package():
    with Warm(py_env(module="pkg.sub", function="main")) as w:
        r = w.post(json={"x": 1})
        assert r.status_code == 200, r.text
        assert r.json() == {"module": "pkg.sub", "request": {"x": 1}}


# -- load failures -----------------------------------------------------------------

@pytest.mark.parametrize("module,function,expected", [
    ("no_such_module", None, "ModuleNotFoundError: No module named 'no_such_module'"),
    ("syntax_error", None, "SyntaxError: "),
    ("handlers", "no_such_function", "AttributeError: module 'handlers' has no attribute 'no_such_function'"),
])
def test_load_failure_is_503_handler_load_error(module, function, expected):
    with Warm(py_env(module=module, function=function), wait_ready=False) as w:
        body = wait_until(lambda: (lambda b: b if b.get("status") == "unhealthy" else None)(health(w)[1]), 10)
        assert health(w)[0] == 503
        assert expected in body.get("reason", ""), body
        r = w.post(json={})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "HANDLER_LOAD_ERROR"
        assert r.json()["error"].startswith(expected), r.json()


# -- failures of an invocation -------------------------------------------------------

def test_handler_exception_is_500_with_type_and_message():
    with Warm(py_env(function="raises")) as w:
        exec_id = "exec-raise-1"
        r = w.post(json={}, headers={"X-Execution-Id": exec_id})
        assert r.status_code == 500
        assert r.json() == {"code": "HANDLER_ERROR", "error": "ValueError: boom"}
        # The traceback is logged once, tied to the invocation.
        wait_until(lambda: any(l.get("execution_id") == exec_id
                               and 'raise ValueError("boom")' in l.get("traceback", "")
                               for l in w.log_lines()), 3)


def test_function_error_keeps_its_code():
    with Warm(py_env(PY_EXAMPLES / "errors", module="handler")) as w:
        r = w.post(json={})
        assert r.status_code == 500
        assert r.json()["code"] == "RATE_LIMITED"
        assert "retry in 10 s" in r.json()["error"]
        assert w.post(json={"fail": False}).json() == {"ok": True}
    with Warm(py_env(function="function_error")) as w:
        r = w.post(json={})
        assert r.json() == {"code": "RATE_LIMITED", "error": "slow down"}


def test_set_return_is_output_serialization_error():
    with Warm(py_env(function="returns_set")) as w:
        r = w.post(json={})
        assert r.status_code == 500
        assert r.json()["code"] == "OUTPUT_SERIALIZATION_ERROR"
        assert "set" in r.json()["error"] and "$.items" in r.json()["error"], r.json()


# -- payloads round-trip exactly -------------------------------------------------------

ROUND_TRIPS = [
    {"input": {"text": "héllo wörld — 日本語 😀 \u0000 \u2028", "nested": {"a": [1, [2, [3, {"b": None}]]]}},
     "metadata": {"k": "v"}},
    {"z": 1, "a": 2, "m": 3},
    [1, 2, 3],
    "just a string",
    42,
    None,
    True,
    {"big": 2**64, "bigger": -(2**100), "huge": 10**60 + 7, "max": 2**63 - 1, "min": -(2**63)},
    {"floats": [0.1, -2.5, 1e-7, 1.7976931348623157e308, 5e-324, 0.30000000000000004]},
]


@pytest.mark.parametrize("payload", ROUND_TRIPS, ids=lambda p: type(p).__name__)
def test_payloads_round_trip_exactly(payload):
    with Warm(py_env(function="echo")) as w:
        r = w.post(json=payload)
        assert r.status_code == 200, r.text
        assert json.loads(r.text) == payload
        if isinstance(payload, dict):
            assert list(json.loads(r.text)) == list(payload), "key order kept"


def test_one_megabyte_payload_round_trips():
    payload = {"input": [{"id": i, "name": f"item-{i}", "price": i / 7, "tags": ["a", "ü"]}
                         for i in range(13000)]}
    assert len(json.dumps(payload)) > 1_000_000
    with Warm(py_env(function="echo")) as w:
        r = w.post(json=payload, timeout=30)
        assert r.status_code == 200, r.text[:500]
        assert json.loads(r.text) == payload


# -- deadlines ----------------------------------------------------------------------

def test_sleeping_past_the_deadline_is_504_and_the_next_request_is_served():
    with Warm(py_env(function="dispatch", MAX_CONCURRENCY=1, TIMEOUT_MS=3000)) as w:
        t = time.monotonic()
        r = w.post(json={"fn": "sleep", "seconds": 1.0}, headers={"X-Timeout-Ms": "300"})
        assert r.status_code == 504, r.text
        assert r.json()["code"] == "TIMEOUT"
        assert time.monotonic() - t < 0.9
        r = w.post(json={"fn": "echo", "v": 1})
        assert r.status_code == 200, r.text
        assert r.json() == {"fn": "echo", "v": 1}


def test_busy_loop_gets_timeout_error_and_the_thread_serves_again():
    # `while True: pass` runs bytecode, so the asynchronous TimeoutError stops it at once.
    with Warm(py_env(function="dispatch", MAX_CONCURRENCY=1, TIMEOUT_MS=3000, KILL_GRACE_MS=200)) as w:
        t = time.monotonic()
        r = w.post(json={"fn": "spin"}, headers={"X-Timeout-Ms": "300"})
        assert r.status_code == 504, r.text
        assert time.monotonic() - t < 0.9
        r = w.post(json={"fn": "echo"}, timeout=5)
        assert r.status_code == 200, r.text
        time.sleep(0.4)
        assert health(w)[0] == 200


def test_handler_ignoring_the_deadline_makes_health_unhealthy_after_the_grace():
    with Warm(py_env(function="dispatch", MAX_CONCURRENCY=2, TIMEOUT_MS=300, KILL_GRACE_MS=200)) as w:
        exec_id = "exec-stubborn-" + uuid.uuid4().hex[:6]
        r = w.post(json={"fn": "stubborn", "seconds": 3}, headers={"X-Execution-Id": exec_id})
        assert r.status_code == 504, r.text
        body = wait_health(w, 503, 2)
        assert body["status"] == "unhealthy", body
        assert exec_id in body.get("reason", ""), body


def test_a_stuck_handler_gets_its_slot_replaced_and_eventually_fails_live():
    # The reported case: MAX_CONCURRENCY=1, a handler that swallows TimeoutError in
    # time.sleep(3600). Before, the one thread was lost for good and every later
    # request waited out its deadline and answered 504.
    env = py_env(function="stuck", MAX_CONCURRENCY=1, TIMEOUT_MS=300, KILL_GRACE_MS=100)
    with Warm(env) as w:
        r = w.post(json={"hang": True})
        assert r.status_code == 504, r.text
        stuck_id = r.headers["X-Execution-Id"]
        # Capacity comes back: a fresh thread serves the next request.
        wait_until(lambda: w.post(json={}).status_code == 200, 3)
        body = wait_health(w, 503, 2)
        assert body["status"] == "unhealthy" and stuck_id in body["reason"], body
        assert "watchdog_python_stuck_threads{function=\"handlers\"} 1" in w.get("/metrics").text
        assert w.get("/live").status_code == 200, "one stuck thread is within MAX_CONCURRENCY"
        # A second stuck thread is more than MAX_CONCURRENCY: /live fails, so the
        # orchestrator restarts the pod.
        assert w.post(json={"hang": True}).status_code == 504
        wait_until(lambda: w.get("/live").status_code == 503, 3)
        live = w.get("/live").json()
        assert live["status"] == "unhealthy" and "MAX_CONCURRENCY=1" in live["reason"], live
        assert w.post(json={}).status_code == 200, "still serving meanwhile"


def test_four_sleeping_handlers_run_in_parallel():
    with Warm(py_env(function="sleep", MAX_CONCURRENCY=4)) as w:
        w.post(json={"seconds": 0})  # cold start out of the way
        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: w.post(json={"seconds": 0.3}), range(4)))
        elapsed = time.monotonic() - t
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
        assert elapsed < 1.2, elapsed


# -- logs -----------------------------------------------------------------------------

def test_print_and_logging_reach_the_log_with_the_execution_id():
    with Warm(py_env(function="prints")) as w:
        exec_id = "exec-print-" + uuid.uuid4().hex[:6]
        r = w.post(json={"tag": "t1"}, headers={"X-Execution-Id": exec_id, "X-Trace-Id": "trace-print"})
        assert r.status_code == 200, r.text

        def lines_of(text):
            return [l for l in w.log_lines() if text in str(l.get("message", ""))]

        printed = wait_until(lambda: lines_of(f"printed-by-handler {exec_id}"), 3)
        assert printed[0].get("execution_id") == exec_id, printed
        assert printed[0].get("trace_id") == "trace-print", printed
        partial = wait_until(lambda: lines_of("partial line"), 3)
        assert partial[0].get("execution_id") == exec_id, partial
        logged = wait_until(lambda: lines_of("logged-by-handler t1"), 3)
        assert logged[0].get("execution_id") == exec_id and logged[0].get("level") == "WARN", logged
        ctx = wait_until(lambda: lines_of("context-logger-line"), 3)
        assert ctx[0].get("execution_id") == exec_id, ctx


def test_logging_imported_first_by_a_handler_reaches_the_log():
    # logging is not loaded at start-up (6 ms of cold start); it is routed when imported.
    with Warm(py_env(module="lazy_logging", LOG_LEVEL="info")) as w:
        exec_id = "exec-lazy-" + uuid.uuid4().hex[:6]
        r = w.post(json={"tag": "t2"}, headers={"X-Execution-Id": exec_id})
        assert r.status_code == 200, r.text
        lines = wait_until(lambda: [l for l in w.log_lines()
                                    if "lazily-logged t2" in str(l.get("message", ""))], 3)
        assert lines[0].get("execution_id") == exec_id and lines[0].get("level") == "WARN", lines


# -- one-shot -------------------------------------------------------------------------

def test_oneshot_with_callback():
    with CallbackServer() as cb:
        env = py_env(PY_EXAMPLES / "uppercase", module="handler", EXECUTION_ID="exec-once-1",
                     CALLBACK_URL=cb.url, INVOCATION_PAYLOAD=json.dumps({"input": "hello"}))
        done = run_oneshot(env, timeout=30)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        reqs = cb.wait_for(1)
        assert reqs[0]["path"].endswith("/exec-once-1:complete"), reqs[0]["path"]
        assert reqs[0]["body"] == {"success": True, "output": {"result": "HELLO"}, "error": None}


def test_oneshot_stdout_has_only_the_result_line_even_when_the_handler_prints():
    env = py_env(function="prints", EXECUTION_ID="exec-once-2", INVOCATION_PAYLOAD='{"tag": "x"}',
                 ONESHOT_OUTPUT="output")
    done = run_oneshot(env, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = done.stdout.decode().strip().splitlines()
    assert out == ['{"printed":true}'], out
    assert "printed-by-handler exec-once-2" in done.stderr.decode()


# -- memory -------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ten_thousand_invocations_do_not_grow_memory():
    with Warm(py_env(function="with_context", MAX_CONCURRENCY=1)) as w:
        session = requests.Session()
        payload = json.dumps({"input": {"text": "x" * 200, "n": list(range(20))}}).encode()
        headers = {"Content-Type": "application/json"}

        def call(i):
            headers["X-Execution-Id"] = f"mem-{i}"
            r = session.post(w.url + "/invoke", data=payload, headers=headers, timeout=10)
            assert r.status_code == 200, r.text

        for i in range(1000):
            call(i)
        before = _rss_kb(w.proc.pid)
        for i in range(1000, 11000):
            call(i)
        after = _rss_kb(w.proc.pid)
        assert after - before < 5 * 1024, f"RSS grew {after - before} kB ({before} -> {after})"

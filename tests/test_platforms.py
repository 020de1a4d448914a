"""Platform conventions (Norn, Circuit Breaker, Alyx), ONESHOT_OUTPUT, and INPUT_SCHEMA /
OUTPUT_SCHEMA, black-box (contract sections 1, 5, 6 and 11).

Each platform is run twice: with a Python example (embedded runtime, needs a watchdog built
with `--features python`; a build without it fails them) and with a STDIO child. docs/platforms.md
copies its worked examples from the tests named there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from harness import BIN, EXAMPLES, FIXTURES, PY, CallbackServer, Warm, clean_env, run_oneshot

PLAT = FIXTURES / "platforms"
SCHEMAS = PLAT / "schemas"
PY_EXAMPLES = EXAMPLES / "python"


# Both runners always run: a watchdog built without `--features python` fails the
# Python cases (it rejects EXECUTION_MODE=PYTHON with exit 2); nothing is skipped.
RUNNERS = ["python", "stdio"]

# What each runner runs for each role: (env, error code the failing function reports).
def echo_fn(runner):
    if runner == "python":
        return dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PY_EXAMPLES / "echo", HANDLER_MODULE="handler")
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat")


def env_fn(runner):
    """A function that returns {"payload", "env"} and prints a log line on its stdout."""
    if runner == "python":
        return dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PLAT / "pyenv", HANDLER_MODULE="handler")
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=f"{PY} {PLAT / 'env_echo.py'}")


def failing_fn(runner):
    """A function that always fails, and the code it fails with."""
    if runner == "python":
        return (dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PY_EXAMPLES / "errors", HANDLER_MODULE="handler"),
                "RATE_LIMITED")
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=f"{PY} {FIXTURES / 'fail.py'}"), "FUNCTION_ERROR"


def slow_fn(runner):
    """A function that takes payload["sleep"] seconds."""
    if runner == "python":
        return dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PLAT / "pyenv", HANDLER_MODULE="handler",
                    HANDLER_FUNCTION="slow")
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=f"{PY} {FIXTURES / 'slow.py'}")


def marker_fn(marker):
    """A STDIO child that creates `marker` when it runs, then echoes its payload."""
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=f"{PY} {PLAT / 'marker.py'} {marker}")


def only_line(proc) -> object:
    """stdout must be exactly one JSON line (nothing else: it is the platform's answer)."""
    text = proc.stdout.decode()
    assert text.endswith("\n") and text.count("\n") == 1, \
        f"stdout is not one line: {text!r}; stderr: {proc.stderr.decode()[-3000:]}"
    return json.loads(text)


def last_line(proc) -> object:
    lines = [l for l in proc.stdout.decode().splitlines() if l.strip()]
    assert lines, f"nothing on stdout; stderr: {proc.stderr.decode()[-3000:]}"
    return json.loads(lines[-1])


def config_error_line(proc) -> str:
    """A configuration error: exit 2 and exactly one line on stderr."""
    err = proc.stderr.decode()
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(lines) == 1, err
    assert proc.stdout == b""
    return lines[0]


# --------------------------------------------------------------------------------------
# nanofaas: a Job (EXECUTION_ID, INVOCATION_PAYLOAD, CALLBACK_URL) or a warm pod.

@pytest.mark.parametrize("runner", RUNNERS)
def test_nanofaas_job_posts_the_result_to_the_callback(runner):
    with CallbackServer() as cb:
        proc = run_oneshot(clean_env(EXECUTION_ID="exec-42", INVOCATION_PAYLOAD='{"input": "hello"}',
                                     CALLBACK_URL=cb.url, TRACE_ID="trace-1", **echo_fn(runner)))
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert proc.stdout == b""
        (req,) = cb.wait_for(1)
    assert req["method"] == "POST"
    assert req["path"] == "/cb/exec-42:complete"
    assert req["body"] == {"success": True, "output": {"input": "hello"}, "error": None}
    assert req["headers"]["x-trace-id"] == "trace-1"


@pytest.mark.parametrize("runner", RUNNERS)
def test_nanofaas_warm_pod_answers_invoke(runner):
    with Warm(clean_env(WARM="true", **echo_fn(runner))) as w:
        r = w.post(json={"input": "hello", "metadata": {}}, headers={"X-Execution-Id": "exec-43"})
        assert r.status_code == 200
        assert r.json() == {"input": "hello", "metadata": {}}
        assert r.headers["X-Execution-Id"] == "exec-43"


# --------------------------------------------------------------------------------------
# Norn: NORN_REQUEST_BODY, nothing else; stdout is the response.

@pytest.mark.parametrize("runner", RUNNERS)
def test_norn_stdout_is_exactly_the_output(runner):
    body = {"name": "Ada", "n": [1, 2]}
    proc = run_oneshot(clean_env(NORN_REQUEST_BODY=json.dumps(body), **echo_fn(runner)))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert only_line(proc) == body


@pytest.mark.parametrize("runner", RUNNERS)
def test_norn_function_logs_stay_off_stdout_and_request_vars_are_visible(runner):
    proc = run_oneshot(clean_env(NORN_REQUEST_BODY='{"q": 1}', NORN_REQUEST_METHOD="POST",
                                 NORN_REQUEST_PATH="/functions/hello", **env_fn(runner)))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = only_line(proc)
    assert out["payload"] == {"q": 1}
    assert out["env"]["NORN_REQUEST_METHOD"] == "POST"
    assert out["env"]["NORN_REQUEST_PATH"] == "/functions/hello"
    # The function's own log lines went to the watchdog's stderr, not to its stdout.
    assert (b"pyenv: a log line on print()" if runner == "python" else b"env_echo: on stderr") in proc.stderr


@pytest.mark.parametrize("runner", RUNNERS)
def test_norn_failure_exits_1_with_the_error_body(runner):
    fn, code = failing_fn(runner)
    proc = run_oneshot(clean_env(NORN_REQUEST_BODY='{"q": 1}', **fn))
    assert proc.returncode == 1
    body = only_line(proc)
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


# --------------------------------------------------------------------------------------
# Circuit Breaker: EXECUTION_ID, INPUT_DATA, TRIGGER_EVENT; the last line is the result.

@pytest.mark.parametrize("runner", RUNNERS)
def test_circuit_breaker_last_line_is_the_output(runner):
    proc = run_oneshot(clean_env(EXECUTION_ID="cb-exec-1", INPUT_DATA='{"order": 42}',
                                 TRIGGER_EVENT="order.created", **env_fn(runner)))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = only_line(proc)
    assert out["payload"] == {"order": 42}
    assert out["env"]["TRIGGER_EVENT"] == "order.created"
    if runner == "stdio":
        assert out["env"]["EXECUTION_ID"] == "cb-exec-1"


@pytest.mark.parametrize("runner", RUNNERS)
def test_circuit_breaker_failure_exits_1_with_the_error_body(runner):
    fn, code = failing_fn(runner)
    proc = run_oneshot(clean_env(EXECUTION_ID="cb-exec-2", INPUT_DATA="{}", TRIGGER_EVENT="manual", **fn))
    assert proc.returncode == 1
    assert last_line(proc) == {"error": last_line(proc)["error"], "code": code}


@pytest.mark.parametrize("runner", RUNNERS)
def test_circuit_breaker_timeout_exits_1_with_code_timeout(runner):
    started = time.monotonic()
    proc = run_oneshot(clean_env(EXECUTION_ID="cb-exec-3", INPUT_DATA='{"sleep": 5}',
                                 TRIGGER_EVENT="cron", TIMEOUT_MS=300, **slow_fn(runner)))
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr.decode()[-3000:]
    body = only_line(proc)
    assert body["code"] == "TIMEOUT"
    assert took < 4, f"the 300 ms deadline took {took:.1f}s to end the run"


# --------------------------------------------------------------------------------------
# Alyx: one message on stdin; the answer is the result object with its request_id.
# WARM=false is not needed (a payload on a stdin pipe means one-shot, section 1; see
# test_alyx.py), but an explicit setting must keep working too.

ALYX_MESSAGE = {"request_id": "r-1", "function": "echo", "input": {"text": "hi"},
                "context": {"tenant": "t-9", "deadline_ms": 5000}}


@pytest.mark.parametrize("runner", RUNNERS)
def test_alyx_answer_carries_the_request_id(runner):
    proc = run_oneshot(clean_env(WARM="false", **echo_fn(runner)),
                       stdin=json.dumps(ALYX_MESSAGE).encode() + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert only_line(proc) == {"request_id": "r-1", "success": True, "output": ALYX_MESSAGE, "error": None}


@pytest.mark.parametrize("runner", RUNNERS)
def test_alyx_failure_is_success_false_with_the_error(runner):
    fn, code = failing_fn(runner)
    proc = run_oneshot(clean_env(WARM="false", **fn), stdin=json.dumps(ALYX_MESSAGE).encode())
    assert proc.returncode == 1
    answer = only_line(proc)
    assert answer["request_id"] == "r-1"
    assert answer["success"] is False
    assert answer["output"] is None
    assert answer["error"]["code"] == code and answer["error"]["message"]


def test_alyx_message_breaking_input_schema_is_answered_with_its_request_id(tmp_path):
    marker = tmp_path / "ran"
    schema = json.dumps({"type": "object", "required": ["request_id", "input"],
                         "properties": {"input": {"type": "object", "required": ["text"]}}})
    msg = {"request_id": "r-2", "function": "echo", "input": {}, "context": {}}
    proc = run_oneshot(clean_env(WARM="false", INPUT_SCHEMA=schema, **marker_fn(marker)),
                       stdin=json.dumps(msg).encode())
    assert proc.returncode == 1
    answer = only_line(proc)
    assert answer["request_id"] == "r-2" and answer["success"] is False
    assert answer["error"]["code"] == "INVALID_REQUEST" and "/input" in answer["error"]["message"]
    assert not marker.exists()


def test_alyx_request_id_only_when_it_is_a_string():
    msg = {"request_id": 7, "input": 1}
    proc = run_oneshot(clean_env(WARM="false", **echo_fn("stdio")), stdin=json.dumps(msg).encode())
    assert proc.returncode == 0
    assert only_line(proc) == {"success": True, "output": msg, "error": None}


# --------------------------------------------------------------------------------------
# ONESHOT_OUTPUT: defaults by payload source, explicit override both ways.

@pytest.mark.parametrize("source, expected_form", [
    ("INVOCATION_PAYLOAD", "result"),
    ("INPUT_DATA", "output"),
    ("NORN_REQUEST_BODY", "output"),
])
def test_oneshot_output_default_follows_the_payload_source(source, expected_form):
    env = clean_env(**echo_fn("stdio"), **{source: '{"v": 1}'})
    if source == "INVOCATION_PAYLOAD":
        env["EXECUTION_ID"] = "job-1"
    proc = run_oneshot(env)
    assert proc.returncode == 0
    expected = {"v": 1} if expected_form == "output" else {"success": True, "output": {"v": 1}, "error": None}
    assert only_line(proc) == expected


def test_oneshot_output_result_overrides_the_norn_default():
    proc = run_oneshot(clean_env(NORN_REQUEST_BODY='{"v": 1}', ONESHOT_OUTPUT="result", **echo_fn("stdio")))
    assert proc.returncode == 0
    assert only_line(proc) == {"success": True, "output": {"v": 1}, "error": None}


def test_oneshot_output_output_overrides_the_nanofaas_default():
    proc = run_oneshot(clean_env(EXECUTION_ID="job-2", INVOCATION_PAYLOAD='{"v": 2}',
                                 ONESHOT_OUTPUT="Output", **echo_fn("stdio")))
    assert proc.returncode == 0
    assert only_line(proc) == {"v": 2}


def test_oneshot_output_result_on_failure_is_the_callback_body():
    fn, code = failing_fn("stdio")
    proc = run_oneshot(clean_env(INPUT_DATA="{}", ONESHOT_OUTPUT="RESULT", **fn))
    assert proc.returncode == 1
    body = only_line(proc)
    assert body["success"] is False and body["output"] is None
    assert body["error"]["code"] == code


def test_oneshot_output_bad_value_is_a_config_error():
    proc = run_oneshot(clean_env(INPUT_DATA="{}", ONESHOT_OUTPUT="stdout", **echo_fn("stdio")), timeout=10)
    line = config_error_line(proc)
    assert "ONESHOT_OUTPUT" in line and "stdout" in line


def test_invocation_payload_wins_over_input_data():
    proc = run_oneshot(clean_env(EXECUTION_ID="job-3", INVOCATION_PAYLOAD='"nanofaas"',
                                 INPUT_DATA='"cb"', **echo_fn("stdio")))
    assert proc.returncode == 0
    assert only_line(proc) == {"success": True, "output": "nanofaas", "error": None}


@pytest.mark.parametrize("variable", ["INPUT_DATA", "NORN_REQUEST_BODY"])
def test_invalid_json_payload_is_invalid_request_and_the_function_does_not_run(variable, tmp_path):
    marker = tmp_path / "ran"
    proc = run_oneshot(clean_env(**marker_fn(marker), **{variable: '{"order": 42'}))
    assert proc.returncode == 1
    body = only_line(proc)
    assert body["code"] == "INVALID_REQUEST"
    assert variable in body["error"]
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# INPUT_SCHEMA / OUTPUT_SCHEMA

INPUT_INLINE = (SCHEMAS / "input.json").read_text()
TWO_ERRORS = {"a": "one", "b": 2}


@pytest.mark.parametrize("schema", [INPUT_INLINE, str(SCHEMAS / "input.json")], ids=["inline", "file"])
def test_warm_input_schema_rejects_with_every_pointer_and_does_not_run(schema, tmp_path):
    marker = tmp_path / "ran"
    with Warm(clean_env(INPUT_SCHEMA=schema, **marker_fn(marker))) as w:
        bad = w.post(json=TWO_ERRORS)
        assert bad.status_code == 400, bad.text
        body = bad.json()
        assert body["code"] == "INVALID_REQUEST"
        assert "/a" in body["error"] and "/b" in body["error"], body
        assert not marker.exists(), "the function ran on a payload that broke INPUT_SCHEMA"

        good = w.post(json={"a": 1, "b": "x"})
        assert good.status_code == 200, good.text
        assert good.json() == {"a": 1, "b": "x"}
        assert marker.exists()


def test_warm_input_schema_missing_required_points_at_the_root():
    with Warm(clean_env(INPUT_SCHEMA=INPUT_INLINE, **echo_fn("stdio"))) as w:
        r = w.post(json={"b": "x"})
        assert r.status_code == 400
        assert r.json()["code"] == "INVALID_REQUEST"
        assert '"a"' in r.json()["error"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_warm_output_schema_failure_is_500_output_validation_error(runner):
    with Warm(clean_env(OUTPUT_SCHEMA=str(SCHEMAS / "output.json"), **echo_fn(runner))) as w:
        ok = w.post(json={"n": 3})
        assert ok.status_code == 200 and ok.json() == {"n": 3}
        bad = w.post(json={"n": "three"})
        assert bad.status_code == 500, bad.text
        assert bad.json()["code"] == "OUTPUT_VALIDATION_ERROR"
        assert "/n" in bad.json()["error"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_oneshot_input_schema_failure_is_an_invalid_request_result(runner, tmp_path):
    proc = run_oneshot(clean_env(EXECUTION_ID="job-s1", INVOCATION_PAYLOAD=json.dumps(TWO_ERRORS),
                                 INPUT_SCHEMA=str(SCHEMAS / "input.json"), **echo_fn(runner)))
    assert proc.returncode == 1
    result = only_line(proc)
    assert result["success"] is False
    assert result["error"]["code"] == "INVALID_REQUEST"
    assert "/a" in result["error"]["message"] and "/b" in result["error"]["message"]


def test_oneshot_input_schema_failure_does_not_run_the_function(tmp_path):
    marker = tmp_path / "ran"
    proc = run_oneshot(clean_env(INPUT_DATA=json.dumps(TWO_ERRORS), INPUT_SCHEMA=INPUT_INLINE,
                                 **marker_fn(marker)))
    assert proc.returncode == 1
    assert only_line(proc)["code"] == "INVALID_REQUEST"
    assert not marker.exists()


def test_oneshot_output_schema_failure_in_the_norn_form():
    proc = run_oneshot(clean_env(NORN_REQUEST_BODY='{"n": "three"}', OUTPUT_SCHEMA=str(SCHEMAS / "output.json"),
                                 **echo_fn("stdio")))
    assert proc.returncode == 1
    body = only_line(proc)
    assert body["code"] == "OUTPUT_VALIDATION_ERROR" and "/n" in body["error"]


def test_draft07_schema_is_honoured_by_its_dollar_schema():
    schema = str(SCHEMAS / "draft07_tuple.json")
    ok = run_oneshot(clean_env(INPUT_DATA="[1]", INPUT_SCHEMA=schema, **echo_fn("stdio")))
    assert ok.returncode == 0 and only_line(ok) == [1]
    bad = run_oneshot(clean_env(INPUT_DATA="[1, 2]", INPUT_SCHEMA=schema, **echo_fn("stdio")))
    assert bad.returncode == 1 and only_line(bad)["code"] == "INVALID_REQUEST"
    # The same schema without "$schema" is read as 2020-12, where an array `items` is invalid:
    # so the draft-07 reading above came from "$schema".
    text = json.loads((SCHEMAS / "draft07_tuple.json").read_text())
    del text["$schema"]
    plain = run_oneshot(clean_env(INPUT_DATA="[1]", INPUT_SCHEMA=json.dumps(text), **echo_fn("stdio")), timeout=10)
    assert "INPUT_SCHEMA" in config_error_line(plain)


def test_schema_file_resolves_a_relative_ref_next_to_it(tmp_path):
    schema = str(SCHEMAS / "uses_ref.json")  # {"a": {"$ref": "int.json"}}
    ok = run_oneshot(clean_env(INPUT_DATA='{"a": 1}', INPUT_SCHEMA=schema, **echo_fn("stdio")), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr.decode()[-2000:]
    assert only_line(ok) == {"a": 1}
    bad = run_oneshot(clean_env(INPUT_DATA='{"a": "x"}', INPUT_SCHEMA=schema, **echo_fn("stdio")), cwd=tmp_path)
    assert bad.returncode == 1
    body = only_line(bad)
    assert body["code"] == "INVALID_REQUEST" and "/a" in body["error"]


@pytest.mark.parametrize("variable", ["INPUT_SCHEMA", "OUTPUT_SCHEMA"])
@pytest.mark.parametrize("value", [
    str(SCHEMAS / "not_json.json"),
    str(SCHEMAS / "bad_type.json"),
    '{"type": 12}',
    '{"type": "object"',
    str(SCHEMAS / "missing.json"),
], ids=["file-not-json", "file-not-a-schema", "inline-not-a-schema", "inline-not-json", "file-missing"])
def test_invalid_schema_is_a_config_error_naming_the_variable(variable, value):
    # Warm, so a watchdog that accepted the schema would listen until the timeout.
    proc = run_oneshot(clean_env(WARM="true", PORT="0", **{variable: value}, **echo_fn("stdio")), timeout=10)
    line = config_error_line(proc)
    assert variable in line, line

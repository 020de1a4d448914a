"""One-shot mode (contract sections 2, 5 and 6) with the STDIO and FILE runners."""

import json
import time

import pytest

from harness import EXAMPLES, FIXTURES, PY, CallbackServer, clean_env, free_port, kill_pid, pid_alive, run_oneshot, wait_until

BIG = 123456789012345678901234567890
PAYLOAD = {
    "input": {"big": BIG, "neg": -BIG, "pi": 3.25, "text": "héllo ✓ 日本 😀", "esc": "a\"b\\c\n\t", "list": [1, None, True, False, {}, []]},
    "metadata": {"tenant": "t1"},
}


def env_for(cmd, **overrides):
    base = {"EXECUTION_MODE": "STDIO", "WATCHDOG_CMD": cmd, "EXECUTION_ID": "exec-oneshot-1"}
    base.update(overrides)
    return clean_env(**base)


def fixture_cmd(name):
    return f"{PY} {FIXTURES / name}"


def result_of(cp):
    """The last non-empty stdout line, parsed; fails with the logs if there is none."""
    lines = [l for l in cp.stdout.decode().splitlines() if l.strip()]
    assert lines, f"no stdout; rc={cp.returncode}; stderr:\n{cp.stderr.decode(errors='replace')[-5000:]}"
    return json.loads(lines[-1])


def assert_failure(cp, code):
    res = result_of(cp)
    assert res["success"] is False, res
    assert res["output"] is None, res
    assert res["error"]["code"] == code, res
    assert isinstance(res["error"]["message"], str) and res["error"]["message"], res
    assert cp.returncode == 1, (cp.returncode, cp.stderr.decode(errors="replace")[-3000:])
    return res["error"]["message"]


# -- callback ---------------------------------------------------------------

def test_success_posts_callback_with_body_and_headers():
    with CallbackServer() as cb:
        env = env_for("cat", EXECUTION_ID="exec-cb-1", CALLBACK_URL=cb.url, CALLBACK_TOKEN="cb-secret",
                      TRACE_ID="trace-abc", INVOCATION_PAYLOAD=json.dumps(PAYLOAD))
        cp = run_oneshot(env)
        assert cp.returncode == 0, cp.stderr.decode(errors="replace")
        reqs = cb.wait_for(1)
        assert len(reqs) == 1
        req = reqs[0]
        assert req["method"] == "POST"
        assert req["path"] == "/cb/exec-cb-1:complete"
        assert req["body"] == {"success": True, "output": PAYLOAD, "error": None}
        assert req["headers"]["content-type"].startswith("application/json")
        assert req["headers"].get("idempotency-key")
        assert req["headers"].get("x-trace-id") == "trace-abc"
        assert req["headers"].get("authorization") == "Bearer cb-secret"


def test_failure_is_reported_on_callback_and_exit_0():
    with CallbackServer() as cb:
        env = env_for(fixture_cmd("fail.py"), EXECUTION_ID="exec-cb-fail", CALLBACK_URL=cb.url)
        cp = run_oneshot(env)
        assert cp.returncode == 0, cp.stderr.decode(errors="replace")
        body = cb.wait_for(1)[0]["body"]
        assert body["success"] is False and body["output"] is None
        assert body["error"]["code"] == "FUNCTION_ERROR"
        assert "STDERR-TAIL" in body["error"]["message"]


def test_callback_retried_after_503_then_accepted():
    with CallbackServer(statuses=[503]) as cb:
        env = env_for("cat", CALLBACK_URL=cb.url, INVOCATION_PAYLOAD='{"input": 1}')
        cp = run_oneshot(env)
        assert cp.returncode == 0, cp.stderr.decode(errors="replace")
        reqs = cb.wait_for(2)
        time.sleep(0.3)
        assert len(cb.requests) == 2
        keys = [r["headers"].get("idempotency-key") for r in reqs]
        assert keys[0] and keys[0] == keys[1]
        assert reqs[0]["body"] == reqs[1]["body"] == {"success": True, "output": {"input": 1}, "error": None}


def test_callback_400_is_final():
    with CallbackServer(statuses=[400, 400, 400]) as cb:
        env = env_for("cat", CALLBACK_URL=cb.url, INVOCATION_PAYLOAD="{}")
        cp = run_oneshot(env)
        assert cp.returncode == 1, cp.stderr.decode(errors="replace")
        time.sleep(0.3)
        assert len(cb.requests) == 1


def test_callback_attempts_limit_retries_on_5xx():
    with CallbackServer(statuses=[503] * 10) as cb:
        env = env_for("cat", CALLBACK_URL=cb.url, INVOCATION_PAYLOAD="{}", CALLBACK_ATTEMPTS=2)
        cp = run_oneshot(env)
        assert cp.returncode == 1
        time.sleep(0.3)
        assert len(cb.requests) == 2


def test_callback_server_down_exits_1():
    url = f"http://127.0.0.1:{free_port()}/cb"
    env = env_for("cat", CALLBACK_URL=url, INVOCATION_PAYLOAD="{}", CALLBACK_ATTEMPTS=2, CALLBACK_TIMEOUT_MS=300)
    start = time.monotonic()
    cp = run_oneshot(env, timeout=20)
    assert cp.returncode == 1, cp.stderr.decode(errors="replace")
    assert time.monotonic() - start < 15


def test_callback_timeout_is_retried_then_gives_up():
    with CallbackServer(delay=2.0) as cb:
        env = env_for("cat", CALLBACK_URL=cb.url, INVOCATION_PAYLOAD="{}", CALLBACK_ATTEMPTS=2, CALLBACK_TIMEOUT_MS=300)
        start = time.monotonic()
        cp = run_oneshot(env, timeout=20)
        assert cp.returncode == 1, cp.stderr.decode(errors="replace")
        assert time.monotonic() - start < 10
        assert len(cb.wait_for(2)) == 2


def test_callback_url_trailing_slash_is_dropped():
    with CallbackServer() as cb:
        env = env_for("cat", EXECUTION_ID="exec-slash", CALLBACK_URL=cb.url + "/", INVOCATION_PAYLOAD="{}")
        cp = run_oneshot(env)
        assert cp.returncode == 0
        assert cb.wait_for(1)[0]["path"] == "/cb/exec-slash:complete"


def test_callback_url_ending_in_complete_is_used_as_is():
    with CallbackServer() as cb:
        env = env_for("cat", EXECUTION_ID="exec-x", CALLBACK_URL=cb.url + "/custom/other-id:complete", INVOCATION_PAYLOAD="{}")
        cp = run_oneshot(env)
        assert cp.returncode == 0
        assert cb.wait_for(1)[0]["path"] == "/cb/custom/other-id:complete"


def test_invalid_payload_json_is_reported_on_callback():
    with CallbackServer() as cb:
        env = env_for("cat", CALLBACK_URL=cb.url, INVOCATION_PAYLOAD="{not json")
        cp = run_oneshot(env)
        assert cp.returncode == 0
        body = cb.wait_for(1)[0]["body"]
        assert body["success"] is False
        assert body["error"]["code"] == "INVALID_REQUEST"


# -- payload sources and output parsing ----------------------------------------

def test_cat_echoes_invocation_payload_exactly():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD=json.dumps(PAYLOAD, ensure_ascii=False)))
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    res = result_of(cp)
    assert res == {"success": True, "output": PAYLOAD, "error": None}
    assert res["output"]["input"]["big"] == BIG


def test_cat_echoes_stdin_payload_exactly():
    cp = run_oneshot(env_for("cat"), stdin=json.dumps(PAYLOAD).encode())
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert result_of(cp)["output"] == PAYLOAD


def test_big_integer_digits_survive_unchanged():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD='{"n": 123456789012345678901234567890}'))
    assert cp.returncode == 0
    assert "123456789012345678901234567890" in cp.stdout.decode().splitlines()[-1]


def test_no_payload_and_empty_stdin_means_null():
    cp = run_oneshot(env_for("cat"))
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert result_of(cp) == {"success": True, "output": None, "error": None}


def test_invocation_payload_wins_over_stdin():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD='{"from": "env"}'), stdin=b'{"from": "stdin"}')
    assert result_of(cp)["output"] == {"from": "env"}


def test_invalid_json_payload_is_invalid_request():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD="{not json"))
    assert_failure(cp, "INVALID_REQUEST")


def test_invalid_json_on_stdin_is_invalid_request():
    cp = run_oneshot(env_for("cat"), stdin=b"{nope")
    assert_failure(cp, "INVALID_REQUEST")


def test_nonzero_exit_reports_code_and_stderr_tail():
    cp = run_oneshot(env_for(fixture_cmd("fail.py"), INVOCATION_PAYLOAD="{}"))
    msg = assert_failure(cp, "FUNCTION_ERROR")
    assert "3" in msg
    assert "STDERR-TAIL" in msg
    # Only the last 4 KiB of the ~10 KiB stderr.
    assert "STDERR-HEAD" not in msg


def test_command_not_found_is_function_error():
    cp = run_oneshot(env_for("/nonexistent/ember-no-such-cmd", INVOCATION_PAYLOAD="{}"))
    msg = assert_failure(cp, "FUNCTION_ERROR")
    low = msg.lower()
    assert "ember-no-such-cmd" in msg or "no such file" in low or "not found" in low, msg


def test_invalid_json_output_fails():
    cp = run_oneshot(env_for(fixture_cmd("nonjson.py"), INVOCATION_PAYLOAD="{}"))
    msg = assert_failure(cp, "FUNCTION_ERROR")
    assert "Invalid JSON output" in msg
    assert "this is not json" in msg


def test_empty_output_fails():
    cp = run_oneshot(env_for(fixture_cmd("silent.py"), INVOCATION_PAYLOAD="{}"))
    assert_failure(cp, "FUNCTION_ERROR")


def test_last_line_json_after_log_lines_succeeds():
    cp = run_oneshot(env_for(fixture_cmd("loglines.py"), INVOCATION_PAYLOAD='{"k": "v"}'))
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert result_of(cp)["output"] == {"result": 42, "echo": {"k": "v"}}


def test_timeout_kills_grandchild(tmp_path):
    pidfile = tmp_path / "pids.json"
    env = env_for(fixture_cmd("grandchild.py"), TIMEOUT_MS=500, INVOCATION_PAYLOAD=json.dumps({"pidfile": str(pidfile)}))
    pids = {}
    try:
        start = time.monotonic()
        cp = run_oneshot(env, timeout=20)
        elapsed = time.monotonic() - start
        assert pidfile.exists(), "fixture did not start"
        pids = json.loads(pidfile.read_text())
        assert_failure(cp, "TIMEOUT")
        assert elapsed < 5, elapsed
        wait_until(lambda: not pid_alive(pids["child"]), 3)
        wait_until(lambda: not pid_alive(pids["grandchild"]), 3)
    finally:
        for pid in pids.values():
            kill_pid(pid)


# -- stdout without a callback -------------------------------------------------

def test_without_callback_stdout_is_only_the_result_line():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD='{"a": 1}', LOG_LEVEL="debug"))
    assert cp.returncode == 0
    lines = [l for l in cp.stdout.decode().splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert json.loads(lines[0]) == {"success": True, "output": {"a": 1}, "error": None}


def test_without_callback_failure_prints_result_and_exits_1():
    cp = run_oneshot(env_for(fixture_cmd("fail.py"), INVOCATION_PAYLOAD="{}"))
    lines = [l for l in cp.stdout.decode().splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert_failure(cp, "FUNCTION_ERROR")


def test_result_carries_request_id_of_payload():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD='{"request_id": "r-77", "input": 1}'))
    res = result_of(cp)
    assert res["success"] is True
    assert res["request_id"] == "r-77"


def test_oneshot_output_mode_prints_only_output():
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD='{"a": [1, 2]}', ONESHOT_OUTPUT="output"))
    assert cp.returncode == 0
    assert result_of(cp) == {"a": [1, 2]}


def test_input_data_defaults_to_output_mode():
    env = env_for("cat", INPUT_DATA='{"cb": true}', EXECUTION_ID=None)
    cp = run_oneshot(env)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert result_of(cp) == {"cb": True}


def test_norn_request_body_failure_prints_error_body():
    env = env_for(fixture_cmd("fail.py"), NORN_REQUEST_BODY='{"x": 1}', EXECUTION_ID=None)
    cp = run_oneshot(env)
    assert cp.returncode == 1
    res = result_of(cp)
    assert set(res) == {"error", "code"}, res
    assert res["code"] == "FUNCTION_ERROR"


# -- FILE runner ---------------------------------------------------------------

def test_file_runner_success_uses_given_paths_and_removes_them(tmp_path):
    inp, out = tmp_path / "in.json", tmp_path / "out.json"
    env = env_for(f"{PY} {EXAMPLES / 'python-stdio' / 'file_handler.py'}", EXECUTION_MODE="FILE",
                  INPUT_FILE=inp, OUTPUT_FILE=out, INVOCATION_PAYLOAD=json.dumps(PAYLOAD))
    cp = run_oneshot(env)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    output = result_of(cp)["output"]
    assert output["echo"] == PAYLOAD
    assert output["input_file"] == str(inp)
    assert output["output_file"] == str(out)
    assert not inp.exists() and not out.exists()


def test_file_runner_output_not_created_fails(tmp_path):
    env = env_for("true", EXECUTION_MODE="FILE", INPUT_FILE=tmp_path / "in.json",
                  OUTPUT_FILE=tmp_path / "out.json", INVOCATION_PAYLOAD="{}")
    cp = run_oneshot(env)
    msg = assert_failure(cp, "FUNCTION_ERROR")
    assert "not created" in msg


# -- the child's environment ------------------------------------------------------

def test_child_env_has_execution_id_but_no_secrets():
    with CallbackServer() as cb:
        env = env_for(fixture_cmd("env_dump.py"), EXECUTION_ID="exec-env-1", TRACE_ID="trace-env",
                      CALLBACK_URL=cb.url, CALLBACK_TOKEN="cb-secret", INVOKE_TOKEN="inv-secret",
                      MY_FUNCTION_SETTING="42", INVOCATION_PAYLOAD="{}")
        cp = run_oneshot(env)
        assert cp.returncode == 0, cp.stderr.decode(errors="replace")
        child_env = cb.wait_for(1)[0]["body"]["output"]
        assert child_env["EXECUTION_ID"] == "exec-env-1"
        assert child_env["TRACE_ID"] == "trace-env"
        assert child_env["MY_FUNCTION_SETTING"] == "42"
        for secret in ("CALLBACK_URL", "CALLBACK_TOKEN", "INVOKE_TOKEN"):
            assert secret not in child_env, secret


@pytest.mark.parametrize("payload", ["[]", '"just a string"', "0", "true"])
def test_any_json_payload_is_passed_through(payload):
    cp = run_oneshot(env_for("cat", INVOCATION_PAYLOAD=payload))
    assert result_of(cp)["output"] == json.loads(payload)

"""Binary payloads, HTTP-shaped answers and the request seen by a handler (CONTRACT.md
section 3; ember.Response; INVOKE_METHODS)."""

import json
import os
import sys

import requests

from harness import FIXTURES, PY, REPO, Warm, clean_env

PYFIX = FIXTURES / "python"
OCTET = {"Content-Type": "application/octet-stream"}


def py_env(function, **kw):
    return clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=PYFIX, HANDLER_MODULE="shaped",
                     HANDLER_FUNCTION=function, **kw)


def test_a_megabyte_of_random_bytes_round_trips_through_python():
    blob = os.urandom(1 << 20)
    with Warm(py_env("echo_bytes")) as w:
        r = w.post(data=blob, headers=OCTET)
        assert r.status_code == 200, r.text[:500]
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.content == blob


def test_a_megabyte_of_random_bytes_round_trips_through_stdio():
    blob = os.urandom(1 << 20)
    with Warm(clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat")) as w:
        r = w.post(data=blob, headers=OCTET)
        assert r.status_code == 200, r.text[:500]
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.content == blob
        # Without the content type the same request is JSON, and not valid JSON.
        assert w.post(data=b"\xff\x00", headers={"Content-Type": "text/plain"}).status_code == 400


def test_a_megabyte_of_random_bytes_round_trips_through_file(tmp_path):
    blob = os.urandom(1 << 20)
    script = tmp_path / "copy.sh"
    script.write_text('cp "$INPUT_FILE" "$OUTPUT_FILE"\n')
    env = clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD=f"sh {script}", MAX_CONCURRENCY=2,
                    INPUT_FILE=tmp_path / "in.bin", OUTPUT_FILE=tmp_path / "out.bin")
    with Warm(env) as w:
        r = w.post(data=blob, headers=OCTET)
        assert r.status_code == 200, r.text[:500]
        assert r.content == blob


def test_a_binary_payload_to_a_loop_child_is_refused_clearly():
    env = clean_env(EXECUTION_MODE="LOOP",
                    WATCHDOG_CMD=f"{PY} {FIXTURES / 'loop' / 'raw.py'}")
    with Warm(env) as w:
        r = w.post(data=b"\x00\x01", headers=OCTET)
        assert r.status_code == 400
        assert "JSON lines" in r.json()["error"]


def test_ember_response_sets_status_headers_and_content_type():
    with Warm(py_env("created")) as w:
        r = w.post(json={})
        assert r.status_code == 201
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert r.headers["X-Thing"] == "7"
        assert r.text == "<p>made</p>"
        # Hop-by-hop and the watchdog's own headers are not the function's to set.
        assert r.headers.get("Keep-Alive") is None
        assert r.headers.get("Connection", "").lower() != "close"
        assert r.headers["X-Execution-Id"] != "forged"


def test_ember_response_with_a_json_body_and_a_4xx_status():
    with Warm(py_env("problem")) as w:
        r = w.post(json={})
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.json() == {"title": "no such item"}


def test_the_handler_sees_the_request_and_invoke_methods_opens_get():
    with Warm(py_env("request_info", INVOKE_METHODS="get,POST")) as w:
        r = w.get("/invoke?item=7", headers={"X-Execution-Id": "g1", "X-Probe": "yes"})
        assert r.status_code == 200, r.text
        assert r.json() == {"method": "GET", "path": "/invoke?item=7", "probe": "yes",
                            "payload": None}
        r = w.post(json={"a": 1}, headers={"X-Probe": "p"})
        assert r.json()["method"] == "POST" and r.json()["payload"] == {"a": 1}
        r = requests.put(w.url + "/invoke", data="{}", timeout=5)
        assert r.status_code == 405
        assert "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]


def test_invoke_methods_rejects_unknown_methods_at_start():
    import subprocess
    from harness import BIN
    proc = subprocess.run([BIN], env=py_env("created", WARM="true", INVOKE_METHODS="POST,BREW"),
                          capture_output=True, timeout=10)
    assert proc.returncode == 2
    assert b"INVOKE_METHODS" in proc.stderr


def test_a_loop_result_line_can_carry_status_and_headers(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(
        "import json, os, sys\n"
        "out = os.fdopen(3, 'w')\n"
        "for line in sys.stdin:\n"
        "    req = json.loads(line)\n"
        "    out.write(json.dumps({'id': req['id'], 'output': {'ok': True}, 'status': 202,\n"
        "                          'headers': {'X-From-Loop': 'yes'}}) + '\\n')\n"
        "    out.flush()\n")
    with Warm(clean_env(EXECUTION_MODE="LOOP", WATCHDOG_CMD=f"{PY} {child}")) as w:
        r = w.post(json={})
        assert r.status_code == 202
        assert r.headers["X-From-Loop"] == "yes"
        assert r.json() == {"ok": True}


def test_a_binary_answer_reaches_the_callback_as_base64():
    import base64
    from harness import CallbackServer
    blob = os.urandom(4096)
    with CallbackServer() as cb:
        with Warm(clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat", CALLBACK_URL=cb.url)) as w:
            r = w.post(data=blob, headers=dict(OCTET, **{"X-Execution-Id": "b1"}))
            assert r.content == blob
            body = cb.wait_for(1)[0]["body"]
            assert body["success"] is True and body["output_encoding"] == "base64"
            assert base64.b64decode(body["output"]) == blob

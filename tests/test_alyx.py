"""Alyx, both generations, reproduced as Alyx calls (CONTRACT.md sections 1, 4, 5).

Subprocess runtime: the function's entrypoint (here the watchdog itself, or a script
that sets the function's own variables and execs it) runs in the function's
directory with the request on a stdin pipe, no variable added, stdout parsed whole as
one JSON document, stderr captured, the process killed at a 2 s deadline.

Container runtime (warm pool): the image runs with no environment of Alyx's own;
Alyx polls GET /health every 100 ms, then POSTs /invoke with no X-Execution-Id and
reads only the answer's body, whatever the status.
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
import requests

from harness import BIN, REPO, Warm, clean_env

NODE = shutil.which("node")
NODE_ADAPTER = REPO / "adapters" / "node" / "ember-loop.js"

HANDLER_PY = '''
import logging, os, subprocess, sys, time

def handle(request, context):
    what = request.get("input", {}).get("fn", "echo")
    if what == "noisy":
        print("printed by the handler")
        logging.getLogger("fn").warning("logged by the handler")
        subprocess.run(["sh", "-c", "echo from a child on fd 1"], check=True)
        os.write(1, b"raw bytes on fd 1\\n")
        sys.stdout.flush()
    if what == "raise":
        raise ValueError("the handler failed")
    if what == "sleep":
        time.sleep(request["input"].get("seconds", 1))
    return {"got": request.get("input"), "execution_id": context.execution_id}
'''

HANDLER_JS = '''
exports.handle = async (request, context) => {
  console.log("node says hello on stdout");
  return {got: request.input, execution_id: context.execution_id};
};
'''


def alyx_env():
    """The environment Alyx's process has: ours, without any contract variable and
    without LOG_FORMAT (Alyx adds nothing)."""
    return clean_env(LOG_FORMAT=None)


def function_dir(tmp_path, entry_script=None):
    """An Alyx function directory: the watchdog as entrypoint, handler.py beside it."""
    d = tmp_path / "fn"
    d.mkdir()
    os.symlink(BIN, d / "watchdog")
    (d / "handler.py").write_text(HANDLER_PY)
    (d / "handler.js").write_text(HANDLER_JS)
    entry = d / "watchdog"
    if entry_script:
        entry = d / "run.sh"
        entry.write_text(entry_script)
        entry.chmod(0o755)
    return d, entry


def alyx_subprocess_call(entry, cwd, request, deadline=2.0):
    """Alyx's subprocess runtime: stdin pipe, stdout parsed whole, killed at the deadline."""
    proc = subprocess.Popen([str(entry)], cwd=str(cwd), env=alyx_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"killed at the {deadline}s deadline; stderr: {err.decode()[-2000:]}")
    try:
        doc = json.loads(out)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document: {out!r}; stderr: {err.decode()[-2000:]}")
    return proc.returncode, doc, err.decode()


def request(rid, **input_):
    return {"request_id": rid, "function": "fn", "input": input_, "context": {"tenant": "t"}}


def test_subprocess_python_handler_beside_the_watchdog_entrypoint(tmp_path):
    d, entry = function_dir(tmp_path)
    rc, doc, _ = alyx_subprocess_call(entry, d, request("r-py", fn="echo"))
    assert rc == 0
    assert doc == {"request_id": "r-py", "success": True, "error": None,
                   "output": {"got": {"fn": "echo"}, "execution_id": doc["output"]["execution_id"]}}


def test_subprocess_stdout_is_the_result_alone_whatever_the_handler_prints(tmp_path):
    d, entry = function_dir(tmp_path)
    rc, doc, err = alyx_subprocess_call(entry, d, request("r-noisy", fn="noisy"))
    assert rc == 0, err
    assert doc["request_id"] == "r-noisy" and doc["success"] is True
    # What was printed went to stderr, where Alyx captures it.
    for text in ("printed by the handler", "logged by the handler", "from a child on fd 1",
                 "raw bytes on fd 1"):
        assert text in err, (text, err[-3000:])


def test_subprocess_handler_error_is_success_false(tmp_path):
    d, entry = function_dir(tmp_path)
    rc, doc, _ = alyx_subprocess_call(entry, d, request("r-err", fn="raise"))
    assert rc == 1
    assert doc["request_id"] == "r-err" and doc["success"] is False
    assert doc["error"]["code"] == "HANDLER_ERROR" and "the handler failed" in doc["error"]["message"]


def test_subprocess_node_handler_through_the_loop_adapter(tmp_path):
    assert NODE, "node is not installed: run scripts/test-deps.sh (apt-get install nodejs)"
    script = (f'#!/bin/sh\ncd "$(dirname "$0")"\n'
              f'EXECUTION_MODE=LOOP WATCHDOG_CMD="{NODE} {NODE_ADAPTER} ./handler.js" exec ./watchdog\n')
    d, entry = function_dir(tmp_path, entry_script=script)
    rc, doc, err = alyx_subprocess_call(entry, d, request("r-js", fn="echo"))
    assert rc == 0, err
    assert doc["request_id"] == "r-js" and doc["success"] is True
    assert doc["output"]["got"] == {"fn": "echo"}
    assert "node says hello on stdout" in err


def test_subprocess_node_script_through_stdio(tmp_path):
    assert NODE, "node is not installed: run scripts/test-deps.sh (apt-get install nodejs)"
    script = (f'#!/bin/sh\ncd "$(dirname "$0")"\n'
              f'EXECUTION_MODE=STDIO WATCHDOG_CMD="{NODE} ./stdio.js" exec ./watchdog\n')
    d, entry = function_dir(tmp_path, entry_script=script)
    (d / "stdio.js").write_text(
        'let s=""; process.stdin.on("data", d => s += d); process.stdin.on("end", () => {'
        ' const r = JSON.parse(s); console.log("a log line first");'
        ' process.stdout.write(JSON.stringify({echo: r.input}) + "\\n"); });')
    rc, doc, err = alyx_subprocess_call(entry, d, request("r-stdio", fn="echo"))
    assert rc == 0, err
    assert doc == {"request_id": "r-stdio", "success": True, "output": {"echo": {"fn": "echo"}},
                   "error": None}


# -- the container runtime (warm pool) ---------------------------------------------------

class AlyxPool:
    """Alyx's warm-pool calls against a running container (here, the binary)."""

    def __init__(self, url):
        self.url = url

    def wait_healthy(self, limit=30.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("never healthy")

    def invoke(self, rid, **input_):
        r = requests.post(self.url + "/invoke", data=json.dumps(request(rid, **input_)),
                          headers={"Content-Type": "application/json"}, timeout=10)
        return r.status_code, r.json()


def alyx_warm(tmp_path, **image_env):
    """The function image as Alyx starts it: no WARM, no EXECUTION_ID, stdin /dev/null;
    `image_env` stands for the image's own ENV lines."""
    d, _ = function_dir(tmp_path)
    w = Warm(clean_env(**image_env), cwd=d, wait_ready=False)
    w.env.pop("WARM")
    return w


def test_container_form_success_error_and_timeout(tmp_path):
    with alyx_warm(tmp_path, TIMEOUT_MS=500) as w:
        pool = AlyxPool(w.url)
        pool.wait_healthy()
        status, body = pool.invoke("c-ok", fn="echo")
        assert status == 200
        assert body["request_id"] == "c-ok" and body["success"] is True
        assert body["output"] == {"got": {"fn": "echo"}, "execution_id": "c-ok"}
        assert isinstance(body["duration_ms"], int)
        status, body = pool.invoke("c-err", fn="raise")
        assert body["request_id"] == "c-err" and body["success"] is False
        assert body["error"]["code"] == "HANDLER_ERROR"
        status, body = pool.invoke("c-slow", fn="sleep", seconds=2)
        assert body["request_id"] == "c-slow" and body["success"] is False
        assert body["error"]["code"] == "TIMEOUT"
        assert body["duration_ms"] >= 450


def test_container_form_refusals_are_alyx_shaped(tmp_path):
    with alyx_warm(tmp_path, MAX_CONCURRENCY=1, QUEUE_DEPTH=0, TIMEOUT_MS=3000) as w:
        pool = AlyxPool(w.url)
        pool.wait_healthy()
        slow = threading.Thread(target=lambda: pool.invoke("c-busy", fn="sleep", seconds=1))
        slow.start()
        time.sleep(0.3)
        status, body = pool.invoke("c-429", fn="echo")
        slow.join(5)
        assert status == 429
        assert body["request_id"] == "c-429" and body["success"] is False
        assert body["error"]["code"] == "OVERLOADED"
        # Draining: 503, still in Alyx's shape.
        w.signal(15)
        time.sleep(0.2)
        try:
            status, body = pool.invoke("c-503", fn="echo")
        except requests.ConnectionError:
            return  # already gone: nothing more to check
        assert status == 503 and body["request_id"] == "c-503" and body["success"] is False


def test_a_request_with_an_execution_id_header_is_not_alyx_form(tmp_path):
    with alyx_warm(tmp_path) as w:
        AlyxPool(w.url).wait_healthy()
        r = requests.post(w.url + "/invoke", json=request("r", fn="echo"),
                          headers={"X-Execution-Id": "hdr"}, timeout=10)
        assert r.status_code == 200
        assert r.json() == {"got": {"fn": "echo"}, "execution_id": "hdr"}

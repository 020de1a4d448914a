"""Security: secrets stay with their owner, callers cannot forge, bad input never hurts.

One test (or a few) per problem of the security review, each reproducing the attack
against the built binary and asserting it no longer works. tests/hostile/ throws bad
input at every runner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import (BIN, FIXTURES, PY, CallbackServer, Warm, clean_env, free_port, process_tree, run_oneshot,
                     wait_until)

SEC = FIXTURES / "security"
NOPY_BIN = os.environ.get("WATCHDOG_NOPY_BIN") or BIN
CALLBACK_SECRET = "cb-s3cret-4242"
INVOKE_SECRET = "inv-s3cret-4242"


def stdio_env(cmd="cat", **kw):
    return clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD=cmd, **kw)


def py_env(module, **kw):
    return clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=SEC, HANDLER_MODULE=module, **kw)


# -- 1. the callback token goes only where the operator said ----------------------------

def test_callback_token_never_reaches_an_origin_only_a_request_named():
    # No CALLBACK_URL: any X-Callback-Url is honoured, but none gets the token.
    with CallbackServer(prefix="/attacker") as attacker, Warm(stdio_env(CALLBACK_TOKEN=CALLBACK_SECRET)) as w:
        r = w.post(json={"a": 1}, headers={"X-Execution-Id": "x", "X-Callback-Url": attacker.url})
        assert r.status_code == 200, r.text
        [got] = attacker.wait_for(1)
        assert got["path"] == "/attacker/x:complete"
        assert "authorization" not in got["headers"], got["headers"]
        assert got["body"]["output"] == {"a": 1}
        assert "CALLBACK_TOKEN withheld" in w.logs()


def test_callback_token_goes_to_callback_url_and_listed_origins_only():
    with CallbackServer() as cp, CallbackServer() as listed, CallbackServer() as other:
        env = stdio_env(
            CALLBACK_TOKEN=CALLBACK_SECRET,
            CALLBACK_URL=cp.url,
            CALLBACK_ALLOWED_ORIGINS=f"http://127.0.0.1:{cp.port},http://127.0.0.1:{listed.port}",
        )
        with Warm(env) as w:
            assert w.post(json=1).status_code == 200
            assert w.post(json=2, headers={"X-Callback-Url": listed.url}).status_code == 200
            # Not listed: ignored, so the result goes to CALLBACK_URL.
            assert w.post(json=3, headers={"X-Callback-Url": other.url}).status_code == 200
            for got in cp.wait_for(2) + listed.wait_for(1):
                assert got["headers"]["authorization"] == f"Bearer {CALLBACK_SECRET}"
            time.sleep(0.3)
            assert other.requests == []


class Redirector:
    """Answers every POST with `status` and a Location pointing at `target`."""

    def __init__(self, status, target):
        self.status, self.target, self.hits = status, target, 0

    def __enter__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.hits += 1
                self.send_response(owner.status)
                self.send_header("Location", owner.target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_callback_redirect_is_a_failed_delivery_not_followed_nor_retried(status):
    with CallbackServer(prefix="/elsewhere") as elsewhere, \
            Redirector(status, f"http://127.0.0.1:{elsewhere.port}/elsewhere") as cp:
        env = stdio_env(
            EXECUTION_ID="e-redirect", INVOCATION_PAYLOAD="{}", CALLBACK_URL=cp.url,
            CALLBACK_TOKEN=CALLBACK_SECRET, CALLBACK_ATTEMPTS=3,
        )
        cp_run = run_oneshot(env, timeout=20)
        assert cp_run.returncode == 1, cp_run.stderr.decode(errors="replace")
        assert "redirects are not followed" in cp_run.stderr.decode(errors="replace")
        assert cp.hits == 1, "a 3xx must not be retried"
        time.sleep(0.2)
        assert elsewhere.requests == [], "the redirect was followed"


# -- 2. children cannot read what was removed from their environment -----------------------

def secrets_env(**kw):
    return dict(CALLBACK_TOKEN=CALLBACK_SECRET, INVOKE_TOKEN=INVOKE_SECRET,
                CALLBACK_URL="http://127.0.0.1:9/never", **kw)


def assert_no_secret(text, where):
    for secret in (CALLBACK_SECRET, INVOKE_SECRET, "CALLBACK_TOKEN", "INVOKE_TOKEN",
                   "CALLBACK_URL", "127.0.0.1:9/never"):
        assert secret not in text, f"{secret} found in {where}: {text[:2000]!r}"


AUTH = {"Authorization": f"Bearer {INVOKE_SECRET}"}


def test_a_child_finds_no_secret_in_its_parents_environ():
    with Warm(stdio_env(f"{PY} {SEC / 'parent_env.py'}", **secrets_env())) as w:
        r = w.post(json={}, headers=AUTH)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["ppid"] == w.proc.pid
        assert "PATH=" in seen["parent_environ"], seen  # it was readable, and read
        assert_no_secret(seen["parent_environ"], "/proc/$PPID/environ")
        assert_no_secret(json.dumps(seen["own_environ"]), "the child's environment")


def test_a_python_handler_finds_no_secret_in_os_environ_or_proc():
    with Warm(py_env("secrets_handler", **secrets_env())) as w:
        r = w.post(json={}, headers=AUTH)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert "PATH" in seen["os_environ"]
        assert_no_secret(json.dumps(seen["os_environ"]), "os.environ")
        assert_no_secret(seen["proc_self_environ"], "/proc/self/environ")
        assert "PATH=" in seen["child_view"]
        assert_no_secret(seen["child_view"], "a subprocess's view")


def test_the_watchdog_is_not_dumpable_and_still_reports_its_process_metrics():
    # Run as an unprivileged user, as in a hardened image: another process of that
    # user (a child) can then not read the watchdog's /proc files or memory.
    env = stdio_env(
        "sh -c 'cat /proc/$PPID/mem >/dev/null 2>&1 && echo \\\"readable\\\" || echo \\\"denied\\\"'",
        **secrets_env(),
    )
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        shutil.copy(NOPY_BIN, Path(d) / "watchdog")
        os.chmod(Path(d) / "watchdog", 0o755)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(Path(d) / "watchdog")]
        with Warm(env, command=as_nobody) as w:
            r = w.post(json={}, headers=AUTH)
            assert r.status_code == 200, r.text
            assert r.json() == "denied"
            # Non-dumpable: /proc/<pid> files belong to root, not to the process's user.
            assert os.stat(f"/proc/{w.proc.pid}/environ").st_uid == 0
            metrics = w.get("/metrics").text
            assert "process_open_fds " in metrics and "process_resident_memory_bytes " in metrics


# -- 4. the token check: any case for the scheme, the same refusal for any wrong token ---

def test_bearer_scheme_is_matched_in_any_case():
    with Warm(stdio_env(INVOKE_TOKEN=INVOKE_SECRET)) as w:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            r = w.post(json=1, headers={"Authorization": f"{scheme} {INVOKE_SECRET}"})
            assert r.status_code == 200, (scheme, r.text)


def test_a_wrong_token_of_any_length_is_refused_the_same_way():
    with Warm(stdio_env(INVOKE_TOKEN=INVOKE_SECRET)) as w:
        answers = set()
        for given in ["", "Bearer", "Bearer x", f"Bearer {INVOKE_SECRET[:-1]}",
                      f"Bearer {INVOKE_SECRET}x", f"Bearer {INVOKE_SECRET.upper()}",
                      "Bearer " + "y" * 4000, f"Basic {INVOKE_SECRET}"]:
            r = w.post(json=1, headers={"Authorization": given} if given else {})
            assert r.status_code == 401, (given, r.text)
            answers.add((r.status_code, r.text, r.headers.get("Content-Type")))
        assert len(answers) == 1, answers


# -- 5. slow and many connections -------------------------------------------------------

def test_headers_sent_a_byte_a_second_are_cut_while_other_clients_are_served():
    with Warm(stdio_env(HEADER_READ_TIMEOUT_MS=2000)) as w:
        slow = socket.create_connection(("127.0.0.1", w.port))
        slow.settimeout(0.2)
        request = b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: slow\r\n" + b"X-Pad: a\r\n" * 50
        started = time.monotonic()
        closed_after = None
        served = 0
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            try:
                if slow.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
            # Meanwhile everybody else is answered at once.
            r = w.post(json={"n": served}, timeout=2)
            assert r.status_code == 200, r.text
            served += 1
            time.sleep(0.8)
            if time.monotonic() - started > 10:
                break
        slow.close()
        assert closed_after is not None, "the slow connection was never closed"
        assert 1.5 <= closed_after <= 4.5, closed_after
        assert served >= 2


def test_a_request_body_that_stops_coming_is_cut_and_frees_its_place():
    # One slot, no queue: the stalled body holds the only place while it is read.
    env = stdio_env(HEADER_READ_TIMEOUT_MS=1500, MAX_CONCURRENCY=1, QUEUE_DEPTH=0)
    with Warm(env) as w:
        s = socket.create_connection(("127.0.0.1", w.port))
        s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: stall\r\n"
                  b"Content-Length: 100\r\n\r\n[1, 2")
        s.settimeout(6)
        started = time.monotonic()
        assert s.recv(4096) == b""  # closed, no answer
        assert 1.0 <= time.monotonic() - started <= 4, time.monotonic() - started
        s.close()
        assert w.post(json={"after": 1}).json() == {"after": 1}


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    with Warm(stdio_env(IDLE_TIMEOUT_MS=1500, HEADER_READ_TIMEOUT_MS=10000)) as w:
        s = socket.create_connection(("127.0.0.1", w.port))
        s.sendall(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert b"200 OK" in s.recv(4096)
        started = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server
        assert 1.0 <= time.monotonic() - started <= 4, time.monotonic() - started
        s.close()


def test_connections_over_max_connections_wait_and_oversized_headers_get_431():
    with Warm(stdio_env(MAX_CONNECTIONS=4, HEADER_READ_TIMEOUT_MS=1500)) as w:
        time.sleep(0.3)  # the readiness probes' connections are closed
        held = [socket.create_connection(("127.0.0.1", w.port)) for _ in range(4)]
        time.sleep(0.2)
        started = time.monotonic()
        # Served once the held connections hit their header timeout.
        r = w.get("/live", timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - started >= 0.8, time.monotonic() - started
        for s in held:
            s.close()
        assert "MAX_CONNECTIONS=4 reached" in w.logs()
    with Warm(stdio_env(MAX_HEADER_BYTES=16384)) as w:
        r = w.post(json=1, headers={"X-Big": "a" * 20000})
        assert r.status_code == 431
        assert w.post(json=1, headers={"X-Fits": "a" * 8000}).status_code == 200


def test_help_lists_the_connection_limits_with_their_defaults():
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, env=clean_env(), timeout=10).stdout
    for var, default in [("HEADER_READ_TIMEOUT_MS", "10000"), ("IDLE_TIMEOUT_MS", "60000"),
                         ("MAX_CONNECTIONS", "1024"), ("MAX_HEADER_BYTES", "65536")]:
        assert var in out, var
        block = out[out.index(var):]
        block = block[: block.index("[default:") + 30]
        assert f"[default: {default}]" in block, (var, block)


# -- 6. as PID 1: orphans are reaped, Python's own children are left to Python -------------

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]


def test_popen_wait_sees_the_exit_status_when_the_watchdog_is_pid_1():
    assert shutil.which("unshare"), "unshare (util-linux) is needed"
    with Warm(py_env("popen_status"), command=UNSHARE + [BIN]) as w:
        r = w.post(json={"sleep": 1.5}, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["returncode"] == 3, r.json()
        assert r.json()["pid"] == 2, "the watchdog runs under a PID-1 init"
        # The orphaned `sleep` was re-parented to PID 1 and is reaped there.
        def no_zombie():
            tree = process_tree(w.proc.pid)
            return len(tree) >= 3 and not [p for p, (_, st) in tree.items() if st == "Z"]
        wait_until(no_zombie, 5)
        # SIGTERM to PID 1 reaches the watchdog, which drains and exits 0.
        init = [p for p, (pp, _) in process_tree(w.proc.pid).items() if pp == w.proc.pid][0]
        os.kill(init, signal.SIGTERM)
        assert w.wait(10) == 0
        assert "drained, exiting" in w.logs()


def test_pid_1_init_passes_on_the_exit_code_of_a_oneshot_run():
    env = stdio_env("sh -c 'exit 3'", EXECUTION_ID="e1", INVOCATION_PAYLOAD="{}")
    cp = subprocess.run(UNSHARE + [BIN], env=env, capture_output=True, timeout=20)
    assert cp.returncode == 1, cp.stderr.decode(errors="replace")
    result = json.loads(cp.stdout.decode().strip().splitlines()[-1])
    assert "exited with code 3" in result["error"]["message"]
    env = stdio_env("cat", EXECUTION_ID="e1", INVOCATION_PAYLOAD='{"a": 1}')
    cp = subprocess.run(UNSHARE + [BIN], env=env, capture_output=True, timeout=20)
    assert cp.returncode == 0 and json.loads(cp.stdout.decode().strip().splitlines()[-1])["output"] == {"a": 1}


# -- 7. a handler module cannot take SIGTERM away from the watchdog ------------------------

@pytest.mark.parametrize("module", ["signal_ign", "signal_ctypes"])
@pytest.mark.parametrize("threads", [1, 4])
def test_a_module_ignoring_sigterm_at_import_still_drains(module, threads):
    # One thread: the module is imported on the thread that started CPython, Python's
    # main thread, where signal.signal() reaches the process.
    with Warm(py_env(module, MAX_CONCURRENCY=threads)) as w:
        r = w.post(json={})
        assert r.status_code == 200, r.text
        if module == "signal_ign":
            assert r.json() == {"getsignal": int(signal.SIG_IGN)}  # what it set, as it sees it
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
        logs = w.logs()
        assert "drained, exiting" in logs
        if module == "signal_ign":
            assert "signal.signal(SIGTERM, ...) ignored" in logs
        else:
            assert "changed the process's SIGTERM handler" in logs


# -- 8. /health does not carry a function's output ----------------------------------------

def test_health_of_a_crash_looping_loop_child_has_no_stderr_text():
    marker = f"stderr-marker-{uuid.uuid4().hex}"
    cmd = f"{PY} -c \"import sys; sys.stderr.write('{marker}\\n'); sys.exit(1)\""
    env = clean_env(EXECUTION_MODE="LOOP", WATCHDOG_CMD=cmd, MAX_CONCURRENCY=1)
    with Warm(env, wait_ready=False) as w:
        def unhealthy():
            r = w.get("/health")
            return r.status_code == 503 and r.json().get("status") == "unhealthy" and r.text
        text = wait_until(unhealthy, 10)
        assert marker not in text, text
        assert "log" in json.loads(text)["reason"]
        assert marker in w.logs()


def test_health_of_a_dead_http_runtime_has_no_stderr_text():
    marker = f"stderr-marker-{uuid.uuid4().hex}"
    runtime_port = free_port()
    # Serves /health until the first request on /invoke... simpler: healthy for a
    # moment, then dies with a message on stderr.
    script = (
        "import http.server, os, sys, threading, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length','0'); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        f"time.sleep(1.5); sys.stderr.write('{marker}\\n'); sys.stderr.flush(); os._exit(1)\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    try:
        env = clean_env(EXECUTION_MODE="HTTP", WATCHDOG_CMD=f"{PY} {f.name}",
                        RUNTIME_URL=f"http://127.0.0.1:{runtime_port}/invoke", DRAIN_TIMEOUT_MS=3000)
        with Warm(env) as w:
            seen = []

            def unhealthy():
                r = w.get("/health", timeout=1)
                seen.append(r.text)
                return r.status_code == 503
            try:
                wait_until(unhealthy, 10, interval=0.01)
            except AssertionError:
                pass  # it may exit before a probe sees it; what was seen is checked
            for text in seen:
                assert marker not in text, text
            w.wait(10)
            assert marker in w.logs()
    finally:
        os.unlink(f.name)

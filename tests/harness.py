"""Shared helpers for Ember's black-box tests.

The tests start the built `watchdog` binary, speak HTTP to it and read what it
prints; nothing here knows how the watchdog is written. Every wait is bounded,
output goes to temporary files (never pipes that can fill up), and every
process started here is stopped again, by its own pid or process group.
"""

from __future__ import annotations

import json as _json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(REPO / "scripts"))
from ports import free_port  # noqa: E402  (shared with bench/ and tests/images/)

BIN = os.environ.get("WATCHDOG_BIN") or str(REPO / "target" / "debug" / "watchdog")

# The interpreter running the tests, for WATCHDOG_CMD values (absolute, so the
# watchdog's PATH and working directory do not matter).
PY = sys.executable

# Every variable of CONTRACT.md: cleared from the inherited environment so a
# developer's shell cannot change what a test sees.
CONTRACT_VARS = (
    # section 1: mode
    "WARM", "EXECUTION_ID",
    # section 2: runners
    "EXECUTION_MODE", "HANDLER_MODULE", "HANDLER_PATH", "HANDLER_FUNCTION",
    "WATCHDOG_CMD", "HEALTH_URL", "RUNTIME_URL", "READY_TIMEOUT_MS",
    "INPUT_FILE", "OUTPUT_FILE", "KILL_GRACE_MS",
    # section 4: warm HTTP surface
    "WARM_PORT", "PORT", "BIND_ADDRESS", "INVOKE_TOKEN", "MAX_BODY_BYTES",
    "MAX_CONCURRENCY", "QUEUE_DEPTH",
    # section 5: one-shot
    "INVOCATION_PAYLOAD", "INPUT_DATA", "NORN_REQUEST_BODY", "TIMEOUT_MS",
    "ONESHOT_OUTPUT", "TRACE_ID", "TRACEPARENT", "TRACESTATE", "FUNCTION_NAME",
    # section 6: callback
    "CALLBACK_URL", "CALLBACK_TOKEN", "CALLBACK_ATTEMPTS", "CALLBACK_TIMEOUT_MS",
    "CALLBACK_ALLOWED_ORIGINS",
    # section 10: logs, signals
    "LOG_FORMAT", "LOG_LEVEL", "DRAIN_TIMEOUT_MS",
    # section 11: validation
    "INPUT_SCHEMA", "OUTPUT_SCHEMA",
    # development settings (README)
    "RELOAD",
    # span export (README "Tracing"): OpenTelemetry's standard variables
    "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)

_OMIT = object()


def _request(method, url, **kw):
    """One request on a fresh session that ignores proxy settings (everything is local)."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, **kw)


def clean_env(**overrides) -> dict:
    """os.environ without the contract's variables, LOG_FORMAT=json, then overrides.

    Values are str()-ed; a value of None removes the key.
    """
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARS}
    env["LOG_FORMAT"] = "json"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def wait_until(predicate, timeout, interval=0.05):
    """Polls predicate until it returns something truthy, and returns that.

    Raises AssertionError after `timeout` seconds, so a bare call cannot pass
    silently; exceptions raised by the predicate count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"condition not met within {timeout}s{detail}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # The state follows the parenthesised command name.
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _process_table() -> dict:
    """pid -> (parent pid, state) of every process, zombies included."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The state and the parent follow the parenthesised command name.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _live_parents() -> dict:
    """parent pid -> [child pids] of every live (not zombie) process."""
    parents = {}
    for pid, (ppid, state) in _process_table().items():
        if state not in ("Z", "X"):
            parents.setdefault(ppid, []).append(pid)
    return parents


def process_tree(root: int) -> dict:
    """pid -> (parent pid, state) of `root` and every process below it, zombies included."""
    table, tree, todo = _process_table(), {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree[pid] = table[pid]
            todo.extend(p for p, (pp, _) in table.items() if pp == pid)
    return tree


def children_of(pid: int) -> list:
    """Live processes whose parent is `pid`."""
    return _live_parents().get(pid, [])


def descendants(pid: int) -> list:
    """Every live process below `pid`: children, grandchildren..."""
    parents, found, todo = _live_parents(), [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_pid(pid: int) -> None:
    """SIGKILLs a pid a test started (directly or through the watchdog), if alive."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class Warm:
    """A warm watchdog on a free port, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, env: dict, cwd=None, wait_ready=True, ready_timeout=15, command=None):
        self.env = {k: str(v) for k, v in env.items()}
        self.env.setdefault("WARM", "true")
        if "WARM_PORT" in self.env:
            self.port = int(self.env["WARM_PORT"])
        elif "PORT" in self.env:
            self.port = int(self.env["PORT"])
        else:
            self.port = free_port()
            self.env["PORT"] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd = str(cwd) if cwd is not None else None
        self.wait_ready = wait_ready
        self.ready_timeout = ready_timeout
        self.proc = None
        self._dir = None
        # What to run: the watchdog, or the watchdog under a wrapper (setpriv, unshare).
        self.command = list(command) if command is not None else [BIN]

    # -- life cycle -------------------------------------------------------
    def __enter__(self):
        self._dir = Path(tempfile.mkdtemp(prefix="ember-warm-"))
        self._out_path = self._dir / "stdout"
        self._err_path = self._dir / "stderr"
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            self._wait_for("/live", self.ready_timeout)
            if self.wait_ready:
                self._wait_for("/health", self.ready_timeout)
        except BaseException:
            self._stop()
            logs = self.logs()
            self._cleanup_dir()
            raise RuntimeError(
                f"watchdog did not become ready (rc={self.proc.returncode}); logs:\n{logs[-20000:]}"
            ) from None
        return self

    def _wait_for(self, path, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"watchdog exited with {self.proc.returncode}")
            try:
                if _request("GET", self.url + path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"GET {path} was not 200 within {timeout}s")

    def __exit__(self, exc_type, exc, tb):
        self._stop()
        if exc_type is not None:
            # pytest shows captured stdout of a failing test.
            print(f"---- watchdog logs (rc={self.proc.returncode}) ----")
            print(self.logs()[-20000:])
        self._cleanup_dir()
        return False

    def _stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            # Still unreaped, so its pid is still its process group's id.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def _cleanup_dir(self):
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- HTTP -------------------------------------------------------------
    def post(self, path="/invoke", json=_OMIT, data=None, headers=None, timeout=15):
        """POSTs to the watchdog; adds a fresh X-Execution-Id unless given.

        `json` may be any JSON value, None included (sent as `null`).
        `headers={"X-Execution-Id": None}` sends no execution id.
        """
        hdrs = {"X-Execution-Id": str(uuid.uuid4())}
        for key, value in (headers or {}).items():
            for existing in [k for k in hdrs if k.lower() == key.lower()]:
                del hdrs[existing]
            hdrs[key] = value
        hdrs = {k: str(v) for k, v in hdrs.items() if v is not None}
        if json is not _OMIT:
            data = _json.dumps(json).encode()
            if not any(k.lower() == "content-type" for k in hdrs):
                hdrs["Content-Type"] = "application/json"
        return _request("POST", self.url + path, data=data, headers=hdrs, timeout=timeout)

    def get(self, path, headers=None, timeout=5):
        return _request("GET", self.url + path, headers=headers, timeout=timeout)

    # -- process ----------------------------------------------------------
    def logs(self) -> str:
        """stderr then stdout, as printed so far."""
        if self._dir is None:
            return ""
        return _read(self._err_path) + _read(self._out_path)

    def log_lines(self) -> list:
        """The JSON lines of stderr, parsed; other lines are skipped."""
        lines = []
        if self._dir is None:
            return lines
        for line in _read(self._err_path).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                lines.append(_json.loads(line))
            except ValueError:
                continue
        return lines

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout)


def run_oneshot(env: dict, stdin: bytes | None = None, timeout=30, cwd=None) -> subprocess.CompletedProcess:
    """Runs the watchdog to completion; stdout/stderr are bytes.

    Output goes through temporary files, so a grandchild that keeps a pipe
    open cannot hang the test. On timeout the process group is killed and
    subprocess.TimeoutExpired is raised.
    """
    env = {k: str(v) for k, v in env.items()}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as inp:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        proc = subprocess.Popen(
            [BIN],
            env=env,
            cwd=str(cwd) if cwd is not None else None,
            stdin=inp if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
            out.seek(0)
            err.seek(0)
            raise subprocess.TimeoutExpired([BIN], timeout, output=out.read(), stderr=err.read())
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([BIN], proc.returncode, out.read(), err.read())


class CallbackServer:
    """A control plane's callback endpoint on 127.0.0.1, recording what it receives.

    `.statuses` are answered in order, then 200; `.delay` seconds are slept
    before answering (the request is recorded on arrival).
    """

    def __init__(self, statuses=None, delay=0.0, prefix="/cb"):
        self.statuses = list(statuses or [])
        self.delay = delay
        self.prefix = prefix
        self.requests = []
        self._cond = threading.Condition()
        self._server = None
        self.port = None
        self.url = None

    def __enter__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = self.headers.get("Content-Length")
                if length is not None:
                    raw = self.rfile.read(int(length))
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        raw += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    raw = b""
                text = raw.decode("utf-8", "replace")
                try:
                    body = _json.loads(text)
                except ValueError:
                    body = text
                with owner._cond:
                    status = owner.statuses.pop(0) if owner.statuses else 200
                    owner.requests.append({
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "time": time.monotonic(),
                    })
                    owner._cond.notify_all()
                if owner.delay:
                    time.sleep(owner.delay)
                reply = b'{"ok": true}' if status < 400 else b'{"error": "test callback server"}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (timeout tests)

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{self.prefix}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        return False

    def wait_for(self, n, timeout=10):
        """Waits until n requests arrived; returns all received so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {n} callback request(s) within {timeout}s, got "
                        f"{len(self.requests)}: {self.requests!r}"
                    )
                self._cond.wait(left)
            return list(self.requests)

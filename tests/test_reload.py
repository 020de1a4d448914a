"""RELOAD=true (a development setting): the function's files are edited while requests
keep coming, and the watchdog picks the new code up without failing one of them.

Each test sends 50 requests/s from a thread while it rewrites the function's file, then
checks that every request was answered 200 and that every request sent from a while after
the write on was answered by the new code. That while is the pick-up latency, printed
(`pytest -s`) and bounded by 500 ms. HTTP holds the requests that arrive while its runtime
restarts, so its first new answer comes later: a new Python process must start and answer
its health check (bounded by FIRST_ANSWER_HTTP).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from harness import PY, REPO, Warm, clean_env, free_port, wait_until

PY_ADAPTER = REPO / "adapters" / "python" / "ember_loop.py"

RATE = 50  # requests per second

# Write to the first request answered by the new code, for every request sent after.
LATENCY = 0.5
# Write to the first answer of a restarted HTTP runtime: a Python process that starts
# (100-300 ms on a busy 2-core machine) and is polled on HEALTH_URL every 50 ms.
FIRST_ANSWER_HTTP = 1.0

WATCHING = "the function is reloaded when its files change"


class Load:
    """Sends POST /invoke at RATE per second from a thread, each on its own pool worker
    (so a request that waits does not slow the rate), and records every answer."""

    def __init__(self, url: str):
        self.url = url
        self.results = []  # (sent, status, body or text, answered)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32)
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True)
        return False

    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.trust_env = False
        return s

    def _one(self, sent: float):
        try:
            r = self._session().post(self.url + "/invoke", json={"n": 1},
                                     headers={"X-Execution-Id": str(uuid.uuid4())}, timeout=10)
            try:
                body = r.json()
            except ValueError:
                body = r.text
            result = (sent, r.status_code, body, time.monotonic())
        except requests.RequestException as e:
            result = (sent, None, repr(e), time.monotonic())
        with self._lock:
            self.results.append(result)

    def _run(self):
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            at = start + n / RATE
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._pool.submit(self._one, time.monotonic())
            n += 1

    def answered(self):
        with self._lock:
            return sorted(self.results, key=lambda r: r[0])


def rewrite(path: Path, text: str) -> float:
    """Writes `text` over `path` as an editor saving in place would; returns when."""
    path.write_text(text)
    return time.monotonic()


def pick_up(answers, written: float, is_new, runner: str) -> float:
    """Seconds from `written` to the first request sent from which on every answer is new;
    printed with when the first new answer arrived and the slowest answer meanwhile."""
    last_old = max((a[0] for a in answers if not is_new(a[2])), default=written)
    later = [a for a in answers if a[0] > last_old]
    assert later, "no request was answered by the new code"
    latency = max(0.0, min(a[0] for a in later) - written)
    first_new = min(a[3] for a in answers if is_new(a[2])) - written
    slowest = max(a[3] - a[0] for a in answers if a[0] >= written - 0.1)
    print(f"\n{runner} pick-up: every request sent {latency * 1000:.0f} ms after the write on is "
          f"answered by the new code; first new answer at {first_new * 1000:.0f} ms; "
          f"slowest answer meanwhile {slowest * 1000:.0f} ms")
    return latency, first_new


def assert_all_200(answers):
    failed = [(round(a[0], 3), a[1], a[2]) for a in answers if a[1] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"


def version_is(n):
    return lambda body: isinstance(body, dict) and body.get("version") == n


def watching(w):
    # The watch starts right after the function is ready.
    wait_until(lambda: WATCHING in w.logs(), 5)


# -- PYTHON ---------------------------------------------------------------------------

PY_HANDLER = """\
def handle(request):
    return {{"version": {n}}}
"""


def test_python_handler_edited_under_load(tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text(PY_HANDLER.format(n=1))
    env = clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=tmp_path, HANDLER_MODULE="handler",
                    RELOAD="true")
    with Warm(env) as w:
        watching(w)
        with Load(w.url) as load:
            time.sleep(0.5)
            written = rewrite(handler, PY_HANDLER.format(n=2))
            time.sleep(1.0)
            broken_at = rewrite(handler, "def handle(request):\n    return {'version': 3\n")
            time.sleep(1.0)
        answers = load.answered()
        assert_all_200(answers)
        latency, _ = pick_up([a for a in answers if a[0] < broken_at], written, version_is(2),
                             "PYTHON")
        assert latency <= LATENCY, latency
        # The module with a syntax error never replaced the code that works.
        after = [a[2] for a in answers if a[0] >= broken_at]
        assert after and all(version_is(2)(b) for b in after), after[:5]
        r = w.get("/health")
        assert r.status_code == 200, r.text
        wait_until(lambda: "could not be reloaded" in w.logs(), 2)
        line = next(l for l in w.log_lines() if "could not be reloaded" in l.get("message", ""))
        assert "SyntaxError" in line["message"], line
        assert "handler.py" in line["message"], line

        # Fixed again: served at once.
        rewrite(handler, PY_HANDLER.format(n=4))
        wait_until(lambda: version_is(4)(w.post(json={}).json()), 2, interval=0.02)


def test_python_start_with_a_broken_handler_then_fixed(tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text("def handle(request) return 1\n")
    env = clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=tmp_path, HANDLER_MODULE="handler",
                    RELOAD="true")
    with Warm(env, wait_ready=False) as w:
        wait_until(lambda: w.get("/health").status_code == 503 and WATCHING in w.logs(), 10)
        assert w.get("/health").json()["status"] == "unhealthy"
        assert w.post(json={}).json()["code"] == "HANDLER_LOAD_ERROR"
        rewrite(handler, PY_HANDLER.format(n=1))
        wait_until(lambda: w.get("/health").status_code == 200, 2, interval=0.02)
        r = w.post(json={})
        assert r.status_code == 200 and r.json() == {"version": 1}, r.text


def test_python_module_in_a_subpackage_reloads_and_noise_does_not(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    helper = tmp_path / "pkg" / "helper.py"
    helper.write_text("VERSION = 1\n")
    (tmp_path / "handler.py").write_text(
        "from pkg import helper\n\ndef handle(request):\n    return {'version': helper.VERSION}\n")
    env = clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=tmp_path, HANDLER_MODULE="handler",
                    RELOAD="true")
    with Warm(env) as w:
        watching(w)
        (tmp_path / "__pycache__").mkdir(exist_ok=True)
        (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"x")
        (tmp_path / ".handler.py.swp").write_bytes(b"x")
        (tmp_path / "handler.py~").write_text("x")
        (tmp_path / ".venv" / "lib").mkdir(parents=True)
        (tmp_path / ".venv" / "lib" / "x.py").write_text("x")
        time.sleep(0.5)
        assert "files changed" not in w.logs(), w.logs()[-2000:]
        assert w.post(json={}).json() == {"version": 1}
        rewrite(helper, "VERSION = 2\n")
        wait_until(lambda: w.post(json={}).json() == {"version": 2}, 2, interval=0.02)


# -- LOOP -----------------------------------------------------------------------------

LOOP_HANDLER = """\
import os

def handle(request):
    return {{"version": {n}, "pid": os.getpid()}}
"""


def test_loop_children_replaced_under_load(tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text(LOOP_HANDLER.format(n=1))
    env = clean_env(EXECUTION_MODE="LOOP", WATCHDOG_CMD=f"{PY} {PY_ADAPTER} {handler}",
                    MAX_CONCURRENCY=2, RELOAD="true")
    with Warm(env) as w:
        watching(w)
        # The children are ready once spawned, before their Python has imported the
        # handler; the load should meet children that answer.
        with ThreadPoolExecutor(max_workers=2) as pool:
            wait_until(lambda: len({r.json()["pid"] for r in pool.map(lambda _: w.post(json={}), range(2))}) == 2, 10)
        with Load(w.url) as load:
            time.sleep(0.5)
            written = rewrite(handler, LOOP_HANDLER.format(n=2))
            time.sleep(1.5)
        answers = load.answered()
        assert_all_200(answers)
        latency, _ = pick_up(answers, written, version_is(2), "LOOP (2 children)")
        assert latency <= LATENCY, latency
        old = {a[2]["pid"] for a in answers if version_is(1)(a[2])}
        new = {a[2]["pid"] for a in answers if version_is(2)(a[2])}
        assert len(new) == 2 and not old & new, (old, new)
        replaced = [l for l in w.log_lines() if "LOOP child replaced" in l.get("message", "")]
        assert len(replaced) == 2, replaced


# -- HTTP -----------------------------------------------------------------------------

HTTP_RUNTIME = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = {n}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({{"status": "ok"}})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({{"version": VERSION, "pid": os.getpid()}})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


def test_http_runtime_restarted_under_load(tmp_path):
    server = tmp_path / "server.py"
    server.write_text(HTTP_RUNTIME.format(n=1))
    env = clean_env(EXECUTION_MODE="HTTP", WATCHDOG_CMD=f"{PY} {server}",
                    RUNTIME_URL=f"http://127.0.0.1:{free_port()}/invoke", RELOAD="true")
    with Warm(env) as w:
        watching(w)
        with Load(w.url) as load:
            time.sleep(0.5)
            written = rewrite(server, HTTP_RUNTIME.format(n=2))
            time.sleep(1.5)
        answers = load.answered()
        assert_all_200(answers)
        latency, first_new = pick_up(answers, written, version_is(2), "HTTP")
        assert latency <= LATENCY, latency
        assert first_new <= FIRST_ANSWER_HTTP, first_new
        old = {a[2]["pid"] for a in answers if version_is(1)(a[2])}
        new = {a[2]["pid"] for a in answers if version_is(2)(a[2])}
        assert len(old) == 1 and len(new) == 1 and old != new, (old, new)
        assert w.get("/health").status_code == 200


def test_http_runtime_that_does_not_restart_is_unhealthy_until_fixed(tmp_path):
    server = tmp_path / "server.py"
    server.write_text(HTTP_RUNTIME.format(n=1))
    env = clean_env(EXECUTION_MODE="HTTP", WATCHDOG_CMD=f"{PY} {server}",
                    RUNTIME_URL=f"http://127.0.0.1:{free_port()}/invoke", RELOAD="true")
    with Warm(env) as w:
        watching(w)
        rewrite(server, "import sys\nsys.exit('broken: ' + 'on purpose')\n")
        wait_until(lambda: w.get("/health").status_code == 503, 5)
        body = w.get("/health").json()
        assert body["status"] == "unhealthy" and "exited with code 1" in body["reason"], body
        # /health answers anyone: the runtime's stderr is in the log, not there.
        assert "broken: on purpose" not in body["reason"], body
        assert "reload failed" in w.logs() and "broken: on purpose" in w.logs()
        rewrite(server, HTTP_RUNTIME.format(n=2))
        wait_until(lambda: w.get("/health").status_code == 200, 5)
        r = w.post(json={})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text

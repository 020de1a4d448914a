"""Bad input thrown at a running watchdog, for every runner.

Each runner gets one watchdog; every case below is thrown at it in turn, and the
last test checks what must hold afterwards: /health answers 200, a normal invocation
works, the watchdog's resident memory is back within 10% of where it started (after
legitimate use, see the `target` fixture), and no child process is left behind (the
kept children of LOOP and HTTP are the same ones).

A case passes when the watchdog answers with a 4xx or closes the connection: what
matters is that it stays up and serves everybody else meanwhile.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import (EXAMPLES, FIXTURES, PY, REPO, Warm, clean_env, free_port, process_tree,
                     wait_until)

MB = 1024 * 1024

# Short, so that what waits for it (slow heads and bodies) ends quickly here.
HEADER_READ_TIMEOUT_S = 2

RUNNERS = ["STDIO", "FILE", "HTTP", "LOOP", "PYTHON"]


def runner_env(kind: str) -> dict:
    return dict(_runner_env(kind), HEADER_READ_TIMEOUT_MS=str(HEADER_READ_TIMEOUT_S * 1000))


def _runner_env(kind: str) -> dict:
    if kind == "STDIO":
        return clean_env(EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat")
    if kind == "FILE":
        return clean_env(EXECUTION_MODE="FILE", WATCHDOG_CMD="sh -c 'cat \"$INPUT_FILE\" > \"$OUTPUT_FILE\"'")
    if kind == "HTTP":
        port = free_port()
        return clean_env(EXECUTION_MODE="HTTP",
                         WATCHDOG_CMD=f"{PY} {EXAMPLES / 'http-upstream' / 'server.py'}",
                         RUNTIME_URL=f"http://127.0.0.1:{port}/invoke")
    if kind == "LOOP":
        return clean_env(EXECUTION_MODE="LOOP", MAX_CONCURRENCY=2,
                         WATCHDOG_CMD=f"{PY} {REPO / 'adapters' / 'python' / 'ember_loop.py'} "
                                      f"{FIXTURES / 'loop' / 'handler.py'} echo")
    if kind == "PYTHON":
        return clean_env(EXECUTION_MODE="PYTHON", HANDLER_PATH=EXAMPLES / "python" / "echo",
                         HANDLER_MODULE="handler")
    raise ValueError(kind)


def output_of(kind, body):
    """What a runner's echo answers, reduced to the payload."""
    return body["payload"] if kind == "HTTP" else body


# -- raw HTTP --------------------------------------------------------------------------

def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_all(s, limit=1 * MB):
    out = b""
    try:
        while len(out) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, OSError):
        pass
    return out


def answer_or_close(s, deadline):
    """What the server sent before closing `s` (b"" for nothing), or None if it
    was still open at `deadline`."""
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk


def exchange(port, data: bytes, timeout=5.0) -> bytes:
    """Sends `data` (errors ignored: the server may close first) and reads the answer."""
    s = connect(port, timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass
        return read_all(s)
    finally:
        s.close()


def status_of(answer: bytes):
    if not answer.startswith(b"HTTP/1.1 "):
        return None  # closed without an answer
    return int(answer[9:12])


def assert_refused(answer: bytes, *allowed):
    """A 4xx (one of `allowed` when given) or a closed connection."""
    status = status_of(answer)
    if status is None:
        return
    assert 400 <= status < 500, answer[:300]
    if allowed:
        assert status in allowed, answer[:300]


def invoke_bytes(body: bytes, headers: dict | None = None) -> bytes:
    hdrs = {"Host": "x", "X-Execution-Id": str(uuid.uuid4()), "Content-Length": str(len(body)),
            "Content-Type": "application/json", "Connection": "close"}
    hdrs.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None)
    return f"POST /invoke HTTP/1.1\r\n{head}\r\n".encode() + body


# -- process -------------------------------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def descendants(pid):
    """{pid: state} of every process below pid, zombies included."""
    return {p: st for p, (_, st) in process_tree(pid).items() if p != pid}


class Target:
    def __init__(self, kind, warm):
        self.kind, self.w, self.port = kind, warm, warm.port
        self.start_rss = None
        self.start_children = None

    def normal_invocation(self):
        probe = {"probe": str(uuid.uuid4())}
        r = self.w.post(json=probe, timeout=15)
        assert r.status_code == 200, r.text
        assert output_of(self.kind, r.json()) == probe, r.text


@pytest.fixture(scope="class", params=RUNNERS)
def target(request):
    kind = request.param
    with Warm(runner_env(kind), cwd=REPO, ready_timeout=20) as w:
        t = Target(kind, w)
        # The baseline is the watchdog after legitimate use of its limits: ordinary
        # invocations, a deep payload (100 levels, within serde_json's limit of 128: its parse
        # touches stack pages that stay resident) and a 1 MiB payload, a few times so
        # each worker thread has seen them. Hostile input may not cost more than that.
        deepest = b"[" * 100 + b"]" * 100
        big = b'"' + b"a" * MB + b'"'
        for _ in range(4):
            for body in (deepest, big):
                assert status_of(exchange(t.port, invoke_bytes(body))) == 200
        for _ in range(20):
            t.normal_invocation()
        time.sleep(1.5)  # the memory given back after connections close
        t.start_rss = rss_kb(w.proc.pid)
        t.start_children = descendants(w.proc.pid)
        yield t


class TestHostile:
    """The cases run in order for one runner, then the next runner's watchdog starts."""

    def test_invalid_and_truncated_json(self, target):
        for body in [b'{"a":', b'{"a": 1', b"[1, 2", b'"unterminated', b"{,}", b"nul", b"{'a': 1}",
                     b'{"a": 1}}', b"\x00", b"1 2"]:
            assert_refused(exchange(target.port, invoke_bytes(body)), 400)

    def test_deeply_nested_json(self, target):
        for body in [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                     b"[" * 100_000]:
            assert_refused(exchange(target.port, invoke_bytes(body)), 400)

    def test_invalid_utf8(self, target):
        assert_refused(exchange(target.port, invoke_bytes(b'"\xff\xfe\xfd"')), 400)
        assert_refused(exchange(target.port, invoke_bytes(b'{"\xc3\x28": 1}')), 400)
        # In a header: obs-text is not a valid id, so there is none.
        answer = exchange(target.port, invoke_bytes(b"{}", {"X-Execution-Id": None}).replace(
            b"Host: x\r\n", b"Host: x\r\nX-Execution-Id: \xff\xfe\r\n"))
        assert_refused(answer, 400)

    def test_huge_and_many_headers(self, target):
        assert_refused(exchange(target.port, invoke_bytes(b"{}", {"X-Big": "a" * 200_000})), 431)
        many = {f"X-H{i}": "v" for i in range(1000)}
        assert_refused(exchange(target.port, invoke_bytes(b"{}", many)), 431)
        # A head that never ends: larger than any limit, no blank line.
        assert_refused(exchange(target.port, b"POST /invoke HTTP/1.1\r\n" + b"X-A: b\r\n" * 200_000), 431)

    def test_header_values_with_control_characters(self, target):
        for value in [b"a\x00b", b"a\x01b", b"a\x7fb", b"a\rb", b"a\x1bb"]:
            data = invoke_bytes(b"{}").replace(b"Host: x\r\n", b"Host: x\r\nX-Trace-Id: " + value + b"\r\n")
            assert_refused(exchange(target.port, data), 400)
        # A bare LF inside a value splits it: whatever is made of it, never a crash.
        data = invoke_bytes(b"{}").replace(b"Host: x\r\n", b"Host: x\r\nX-Trace-Id: a\nb: c\r\n")
        answer = exchange(target.port, data)
        assert status_of(answer) in (None, 200, 400), answer[:300]

    def test_100_mb_body_with_and_without_content_length(self, target):
        chunk = b"[" + b"1," * (MB // 2 - 1) + b"1]"  # 1 MiB of valid JSON text
        assert_refused(exchange(target.port, invoke_bytes(chunk * 100)), 413)
        # Chunked, no length: refused once past MAX_BODY_BYTES, the rest unread.
        s = connect(target.port, timeout=10)
        try:
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: big\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            try:
                for _ in range(100):
                    s.sendall(frame)
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server stopped reading: expected
            assert_refused(read_all(s), 413)
        finally:
            s.close()

    def test_chunked_bodies_that_never_end(self, target):
        # Each holds a place among the running and queued invocations while its
        # body is read; a body that stops coming loses it after the header timeout.
        open_ = []
        for i in range(20):
            s = connect(target.port)
            s.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: never-" + str(i).encode() +
                      b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1, 2\r\n")
            open_.append(s)
        try:
            deadline = time.monotonic() + HEADER_READ_TIMEOUT_S + 3
            for s in open_:
                # Closed by the server, or refused at once when all places are taken.
                answer = answer_or_close(s, deadline)
                assert answer is not None, "a stalled body kept its connection"
                assert answer == b"" or status_of(answer) == 429, answer[:300]
        finally:
            for s in open_:
                s.close()
        for _ in range(5):
            target.normal_invocation()

    def test_pipelined_garbage(self, target):
        data = (b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GARBAGE / NOT-HTTP\r\n\r\n"
                b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = exchange(target.port, data)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"HTTP/1.1 400" in answer or answer.count(b"HTTP/1.1 ") == 1, answer[:600]
        data = invoke_bytes(b"{}") * 3 + os.urandom(512)
        assert status_of(exchange(target.port, data)) in (None, 200, 400)
        # A smuggling attempt, both lengths at once: chunked wins and the connection
        # closes after that request (RFC 9112, 6.3), so the smuggled one is never read.
        data = (b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: s\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = exchange(target.port, data)
        assert answer.count(b"HTTP/1.1 ") <= 1 and b"connection: close" in answer.lower(), answer[:600]

    def test_2000_idle_connections(self, target):
        held = []
        try:
            for _ in range(2000):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", target.port))
                held.append(s)
            time.sleep(1.5)
        finally:
            for s in held:
                s.close()
        # The connections the server had accepted close on its side too.
        wait_until(lambda: target.w.get("/health", timeout=2).status_code == 200, 20)

    def test_random_bytes(self, target):
        def one(seed):
            data = os.urandom(4096 + seed)
            return exchange(target.port, data, timeout=3)
        with ThreadPoolExecutor(16) as pool:
            for answer in pool.map(one, range(64)):
                assert_refused(answer)
        # Random bytes after a valid request line and head.
        assert_refused(exchange(target.port, invoke_bytes(os.urandom(2048))), 400)

    def test_zz_afterwards_it_still_works_and_gave_everything_back(self, target):
        w = target.w
        assert w.proc.poll() is None, "the watchdog died"
        assert w.get("/health").status_code == 200
        target.normal_invocation()
        # Memory: back within 10% of the baseline (allocators return memory lazily).
        limit = target.start_rss * 1.10
        try:
            wait_until(lambda: rss_kb(w.proc.pid) <= limit, 10, interval=0.25)
        except AssertionError:
            raise AssertionError(
                f"{target.kind}: VmRSS {rss_kb(w.proc.pid)} kB, started at {target.start_rss} kB"
            ) from None
        # Children: none left behind (LOOP and HTTP keep the ones they started with).
        def settled():
            now = descendants(w.proc.pid)
            zombies = [p for p, st in now.items() if st == "Z"]
            return not zombies and set(now) == set(target.start_children) and now
        if target.start_children:
            wait_until(settled, 10)
        else:
            wait_until(lambda: descendants(w.proc.pid) == {}, 10)

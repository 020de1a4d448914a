#!/usr/bin/env python3
"""The polling process of the start-up benchmarks (bench/run starts it).

It starts the measured process itself, so "process start" is the moment just
before the spawn, and measures from outside the process:

  probe.py cold    --port P --runs N -- CMD...   process start -> first 200 from POST /invoke
  probe.py oneshot --runs N -- CMD...            process start -> callback request received

`cold` polls with a raw socket every POLL_S; `oneshot` serves the callback on
127.0.0.1 (the command gets CALLBACK_URL in its environment). The measured
process runs on SERVER_CPU and the probe on PROBE_CPU when the machine has
several cores. Prints one JSON object: {"ms": [...], "errors": [...]}.
Environment for the command: the probe's own, plus --env NAME=VALUE pairs. In
`cold`, "{PORT}" in the command or the environment becomes the run's free port.
"""
import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from ports import free_port  # noqa: E402  (ports below the ephemeral range)

POLL_S = 0.001
BODY = b'{"input": {"message": "hello"}}'
_CORES = sorted(os.sched_getaffinity(0))
MULTI_CPU = len(_CORES) > 1
SERVER_CPU, PROBE_CPU = {_CORES[0]}, {_CORES[1 if MULTI_CPU else 0]}


def spawn(cmd, env):
    """Start cmd on the server core (the child inherits the affinity at fork),
    then move the probe to its own core. Returns (process, t0)."""
    if MULTI_CPU:
        os.sched_setaffinity(0, SERVER_CPU)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if MULTI_CPU:
        os.sched_setaffinity(0, PROBE_CPU)
    return proc, t0


def stop(proc):
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return err


def invoke_once(port):
    """One POST /invoke on a fresh connection; the status code, or None if the
    port does not accept yet."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"POST /invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Execution-Id: cold\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(BODY), BODY)
        )
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout, OSError):
        return None
    finally:
        s.close()


def cold(args, env):
    proc, t0 = spawn(args.cmd, env)
    deadline = t0 + args.timeout
    status = None
    while time.perf_counter() < deadline:
        status = invoke_once(args.port)
        if status == 200:
            ms = (time.perf_counter() - t0) * 1000
            stop(proc)
            return ms, None
        if proc.poll() is not None:
            break
        time.sleep(POLL_S)
    err = stop(proc)
    return None, "no 200 from /invoke (last status %s, exit %s): %s" % (
        status,
        proc.returncode,
        err.strip()[-400:],
    )


def read_request(conn, deadline):
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode(errors="replace")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(data) >= end + 4 + length:
                return head, data[end + 4 : end + 4 + length]
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError("callback request not complete in time")
        conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("callback connection closed mid-request")
        data += chunk


def oneshot(args, env):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    env = dict(env, CALLBACK_URL="http://127.0.0.1:%d/cb" % port, EXECUTION_ID="e1")
    proc, t0 = spawn(args.cmd, env)
    deadline = t0 + args.timeout
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("no callback within %.0f s" % args.timeout)
            ready, _, _ = select.select([lsock], [], [], min(left, 0.05))
            if not ready:
                if proc.poll() is not None:
                    raise RuntimeError("exited %s before any callback" % proc.returncode)
                continue
            conn, _ = lsock.accept()
            with conn:
                head, body = read_request(conn, deadline)
                ms = (time.perf_counter() - t0) * 1000
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            line = head.split("\r\n", 1)[0]
            result = json.loads(body)
            if "/cb/e1:complete" not in line or result.get("success") is not True:
                raise RuntimeError("unexpected callback %r: %s" % (line, body[:300]))
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise RuntimeError("did not exit within 5 s after its callback")
            if code != 0:
                raise RuntimeError("exit code %s after callback" % code)
            stop(proc)
            return ms, None
    except Exception as e:  # noqa: BLE001 - reported, not raised
        err = stop(proc)
        return None, "%s: %s" % (e, err.strip()[-400:])
    finally:
        lsock.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["cold", "oneshot"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--env", action="append", default=[])
    p.add_argument("cmd", nargs="+")
    args = p.parse_args()
    env = dict(os.environ)
    for pair in args.env:
        k, _, v = pair.partition("=")
        env[k] = v
    out = {"ms": [], "errors": []}
    cmd_template = list(args.cmd)
    for _ in range(args.runs):
        if args.what == "cold":
            # A fresh port per run: no TIME_WAIT or late listener from the run before.
            args.port = free_port()
            port = str(args.port)
            env_run = {k: v.replace("{PORT}", port) for k, v in env.items()}
            args.cmd = [a.replace("{PORT}", port) for a in cmd_template]
            ms, err = cold(args, env_run)
        else:
            ms, err = oneshot(args, env)
        if ms is not None:
            out["ms"].append(round(ms, 2))
        else:
            out["errors"].append(err)
            if len(out["errors"]) >= 2:
                break
        time.sleep(0.05)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

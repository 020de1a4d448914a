#!/usr/bin/env python3
"""Host-side helpers for tests/images/run (standard library only).

  serve PORTFILE LOGFILE [CERT KEY]  callback server: records every request as a JSON line
                                     (HTTPS with CERT and KEY, PEM files)
  freeport                           prints a free TCP port on 127.0.0.1
  wait-health URL TIMEOUT_S START_NS polls URL until 200; prints ms since START_NS (ns clock)
  invoke URL EXEC_ID BODY [TIMEOUT_S] POST /invoke; prints {"status", "headers", "body"}
  get URL TIMEOUT_S                  GET URL once it answers at all; prints {"status", "body"}
  image-files                        reads `podman save` (docker-archive) on stdin; prints the
                                     number of layers, then every path that is not a directory
  callback LOGFILE EXEC_ID TIMEOUT_S waits for POST .../EXEC_ID:complete; prints it
  no-callback LOGFILE EXEC_ID WAIT_S fails if such a callback arrives within WAIT_S
  expect JSON EXPR                   exits 0 if the Python EXPR, with v = the parsed JSON, is true
  wheel DIR                          writes a tiny pure-Python wheel (embertiny) into DIR
"""
import base64
import hashlib
import http.client
import http.server
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
from ports import free_port  # noqa: E402  (ports below the ephemeral range)


def serve(portfile, logfile, certfile=None, keyfile=None):
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _record(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            rec = {"method": self.command, "path": self.path,
                   "headers": {k.lower(): v for k, v in self.headers.items()},
                   "body": body, "time_ns": time.time_ns()}
            with lock, open(logfile, "a") as f:
                f.write(json.dumps(rec) + "\n")
            out = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_POST = do_PUT = _record

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            # A client that closes its keep-alive connection (a container that exits) is normal.
            # A client that rejects our certificate (the test without the CA) too.
            if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
                super().handle_error(request, client_address)

    srv = Server(("127.0.0.1", 0), Handler)
    if certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(portfile + ".tmp", portfile)
    srv.serve_forever()


def freeport():
    print(free_port())


def wait_health(url, timeout_s, start_ns):
    u = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + float(timeout_s)
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=1)
            c.request("GET", u.path or "/")
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200:
                print(round((time.time_ns() - int(start_ns)) / 1e6, 1))
                return 0
            last = f"{r.status} {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.005)
    print(f"{url} not 200 within {timeout_s}s, last: {last}", file=sys.stderr)
    return 1


def invoke(url, exec_id, body, timeout_s="30"):
    u = urllib.parse.urlsplit(url)
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=float(timeout_s))
        c.request("POST", u.path, body=body.encode(),
                  headers={"Content-Type": "application/json", "X-Execution-Id": exec_id})
        r = c.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                          "body": parsed}))
    except OSError as e:
        print(json.dumps({"status": None, "error": repr(e)}))
    return 0


def alyx_invoke(url, request_id, timeout_s="30"):
    """Alyx's warm-pool call: polls GET /health every 100 ms (30 s at most), then POSTs
    its request with no X-Execution-Id; prints the status and the parsed body."""
    u = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(json.dumps({"status": None, "error": "never healthy"}))
            return 0
        time.sleep(0.1)
    body = {"request_id": request_id, "function": "echo", "input": {"hello": "alyx"},
            "context": {"tenant": "t"}}
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=float(timeout_s))
    c.request("POST", "/invoke", body=json.dumps(body).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    print(json.dumps({"status": r.status, "body": parsed}))
    return 0


def get(url, timeout_s):
    u = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + float(timeout_s)
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=1)
            c.request("GET", u.path or "/")
            r = c.getresponse()
            raw = r.read()
            c.close()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            print(json.dumps({"status": r.status, "body": parsed}))
            return 0
        except OSError as e:
            last = repr(e)
        time.sleep(0.02)
    print(json.dumps({"status": None, "error": last}))
    return 1


def image_files():
    import io
    import tarfile
    outer = tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read()))
    manifest = json.load(outer.extractfile("manifest.json"))[0]
    names = set()
    for layer in manifest["Layers"]:
        with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
            names.update("/" + m.name.lstrip("./") for m in inner.getmembers() if not m.isdir())
    print(len(manifest["Layers"]), " ".join(sorted(names)))
    return 0


def _find_callback(logfile, exec_id):
    try:
        with open(logfile) as f:
            for line in f:
                rec = json.loads(line)
                if rec["path"].endswith(f"/{exec_id}:complete"):
                    return rec
    except FileNotFoundError:
        pass
    return None


def callback(logfile, exec_id, timeout_s):
    deadline = time.monotonic() + float(timeout_s)
    while time.monotonic() < deadline:
        rec = _find_callback(logfile, exec_id)
        if rec:
            print(json.dumps(rec))
            return 0
        time.sleep(0.02)
    print(f"no callback for {exec_id} within {timeout_s}s", file=sys.stderr)
    return 1


def no_callback(logfile, exec_id, wait_s):
    time.sleep(float(wait_s))
    rec = _find_callback(logfile, exec_id)
    if rec:
        print(f"unexpected callback: {json.dumps(rec)}", file=sys.stderr)
        return 1
    return 0


def expect(text, expr):
    try:
        v = json.loads(text)
    except ValueError as e:
        print(f"not JSON ({e}): {text[:300]!r}", file=sys.stderr)
        return 1
    try:
        ok = eval(expr, {"v": v})
    except Exception as e:  # noqa: BLE001 - report any failure of the check itself
        print(f"check {expr!r} raised {e!r} on {text[:300]}", file=sys.stderr)
        return 1
    if not ok:
        print(f"check {expr!r} failed on {text[:500]}", file=sys.stderr)
        return 1
    return 0


def wheel(directory):
    name, ver = "embertiny", "1.0"
    files = {
        f"{name}/__init__.py": "GREETING = 'hello from a pip-installed package'\n",
        f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
        f"{name}-{ver}.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: ember-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = f"{name}-{ver}.dist-info/RECORD"
    lines = []
    path = os.path.join(directory, f"{name}-{ver}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{p},sha256={digest},{len(data)}")
            z.writestr(p, data)
        lines.append(f"{record},,")
        z.writestr(record, "\n".join(lines) + "\n")
    print(path)
    return 0


COMMANDS = {"serve": serve, "freeport": freeport, "wait-health": wait_health, "invoke": invoke, "alyx-invoke": alyx_invoke, "get": get, "image-files": image_files,
            "callback": callback, "no-callback": no_callback, "expect": expect, "wheel": wheel}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]) or 0)

"""An HTTP runtime for the watchdog's HTTP runner, standard library only.

Listens on 127.0.0.1:$PORT (the watchdog sets PORT to the runtime's port).
GET /health answers 200; POST /invoke echoes the payload and the forwarded headers:

    {"payload": <body JSON>, "headers": {...}, "pid": <server pid>}

A payload object (or its "input" object) may ask for test behaviours:
{"status": 500} answers with that status, {"sleep": 1.5} sleeps first,
{"exit": 1} exits the server with that code right after answering,
{"raw": "text", "content_type": "text/plain"} answers 200 with that body as it is and that
Content-Type (`"content_type": null` sends none), {"ok_status": 201} answers that 2xx status,
{"stream": 5, "every": 0.1, "format": "sse"} streams that many values {"i": k, "t": <time>}
`every` seconds apart, chunked, as server-sent events ("sse") or NDJSON ("ndjson").
UPSTREAM_START_DELAY (seconds) delays listening, to show readiness waits on health.
"""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FORWARDED = ("x-execution-id", "x-trace-id", "traceparent", "tracestate", "x-dispatch-attempt",
             "idempotency-key")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has Content-Length

    def _send(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/invoke":
            self._send(404, {"error": "not found"})
            return
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            self._send(400, {"error": "body is not JSON"})
            return
        spec = payload if isinstance(payload, dict) else {}
        if isinstance(spec.get("input"), dict):
            spec = spec["input"]
        if "sleep" in spec:
            time.sleep(float(spec["sleep"]))
        ok = int(spec.get("ok_status", 200))
        if "status" in spec:
            self._send(int(spec["status"]), {"error": f"upstream asked to answer {spec['status']}"})
        elif "stream" in spec:
            self._stream(ok, int(spec["stream"]), float(spec.get("every", 0)), spec.get("format"))
        elif "raw" in spec:
            self._send(ok, spec["raw"].encode(), spec.get("content_type"))
        else:
            headers = {k: self.headers[k] for k in FORWARDED if self.headers.get(k) is not None}
            self._send(ok, {"payload": payload, "headers": headers, "pid": os.getpid()})
        if "exit" in spec:
            code = int(spec["exit"])
            # Let the answer leave before the process goes.
            threading.Timer(0.05, lambda: os._exit(code)).start()

    def _stream(self, status, count, every, fmt):
        sse = fmt == "sse"
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream" if sse else "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(count):
                if i and every:
                    time.sleep(every)
                value = json.dumps({"i": i, "t": time.time()})
                data = (f": tick {i}\nid: {i}\ndata: {value}\n\n" if sse else value + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the watchdog stopped reading: stop producing

    def log_message(self, fmt, *args):
        print("upstream: " + fmt % args, flush=True)


if __name__ == "__main__":
    time.sleep(float(os.environ.get("UPSTREAM_START_DELAY", "0")))
    port = int(os.environ.get("PORT", "8081"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"upstream: listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()

"""Minimal WSGI JSON echo for granian (--interface wsgi): decode and re-encode
the body, as the other echo handlers do."""
import json


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b"null"
    body = json.dumps(json.loads(raw)).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]

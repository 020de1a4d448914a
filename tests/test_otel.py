"""W3C trace context and span export (README "Tracing"), black-box.

An OTLP/HTTP receiver (stdlib http.server, protobuf decoded with the
`opentelemetry-proto` package) stands in for a collector on 127.0.0.1.
The Python tests need a watchdog built with `--features python`.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from harness import FIXTURES, PY, REPO, Warm, clean_env, free_port, run_oneshot, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
ENV_DUMP = f"{PY} {FIXTURES / 'env_dump.py'}"
PY_FIXTURES = FIXTURES / "python"
SPAN_KIND_SERVER = 2


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint: decodes and keeps every span."""

    def __init__(self):
        self.spans = []
        self.content_types = set()
        self._lock = threading.Lock()
        self._server = None
        self.endpoint = None

    def __enter__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(raw)
                spans = []
                for rs in request.resource_spans:
                    resource = _attrs(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            spans.append({
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "kind": s.kind,
                                "start": s.start_time_unix_nano,
                                "end": s.end_time_unix_nano,
                                "attributes": _attrs(s.attributes),
                                "status": s.status.code,
                                "resource": resource,
                                "scope": ss.scope.name,
                            })
                with owner._lock:
                    owner.content_types.add(self.headers.get("Content-Type"))
                    owner.spans.extend(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        return False

    def trace(self, execution_id, timeout=10) -> dict:
        """The invocation span with this execution id and its children, by name."""
        def found():
            with self._lock:
                spans = list(self.spans)
            top = [s for s in spans if s["attributes"].get("ember.execution_id") == execution_id]
            if not top:
                return None
            children = {s["name"]: s for s in spans if s["parent_span_id"] == top[0]["span_id"]}
            return {"invoke": top[0], **children} if "run" in children else None
        return wait_until(found, timeout)


def otel_env(receiver, **overrides):
    # A short batch delay so spans arrive while the test waits.
    return clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY=50,
                     **overrides)


def stdio_env(**kw):
    return dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=ENV_DUMP, FUNCTION_NAME="envfn", **kw)


def parse_traceparent(value):
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent_id) == 16, value
    return trace_id, parent_id, flags


def test_one_span_per_invocation_continues_the_callers_trace():
    with OtlpReceiver() as rx, Warm(otel_env(rx, **stdio_env())) as w:
        r = w.post(json={"x": 1}, headers={"X-Execution-Id": "exec-span-1",
                                           "traceparent": TRACEPARENT, "tracestate": "vendor=v1"})
        assert r.status_code == 200, r.text
        child_env = r.json()
        t = rx.trace("exec-span-1")
        invoke, queue, run = t["invoke"], t["queue"], t["run"]
        assert invoke["name"] == "invoke envfn"
        assert invoke["kind"] == SPAN_KIND_SERVER
        assert invoke["trace_id"] == TRACE
        assert invoke["parent_span_id"] == PARENT
        assert invoke["span_id"] not in (PARENT, "0" * 16)
        assert invoke["attributes"]["ember.mode"] == "STDIO"
        assert invoke["attributes"]["ember.success"] is True
        assert "ember.error_code" not in invoke["attributes"]
        assert invoke["resource"]["service.name"] == "envfn"
        for child in (queue, run):
            assert child["trace_id"] == TRACE
            assert invoke["start"] <= child["start"] <= child["end"] <= invoke["end"]
        assert queue["end"] <= run["start"]
        assert rx.content_types == {"application/x-protobuf"}

        # The child's parent is the watchdog's span, in the caller's trace.
        assert parse_traceparent(child_env["TRACEPARENT"]) == (TRACE, invoke["span_id"], "01")
        assert child_env["TRACESTATE"] == "vendor=v1"
        assert child_env["TRACE_ID"] == TRACE

        # A request without a traceparent starts a trace.
        r = w.post(json={}, headers={"X-Execution-Id": "exec-span-2"})
        assert r.status_code == 200, r.text
        t = rx.trace("exec-span-2")
        assert t["invoke"]["parent_span_id"] == ""
        own_env = r.json()
        assert parse_traceparent(own_env["TRACEPARENT"])[:2] == (t["invoke"]["trace_id"],
                                                                t["invoke"]["span_id"])
        assert own_env["TRACE_ID"] == t["invoke"]["trace_id"]
        assert "TRACESTATE" not in own_env


def test_a_failed_invocation_span_has_its_error_code():
    fail = dict(EXECUTION_MODE="STDIO", WATCHDOG_CMD=f"{PY} {FIXTURES / 'fail.py'}")
    with OtlpReceiver() as rx, Warm(otel_env(rx, **fail)) as w:
        r = w.post(json={}, headers={"X-Execution-Id": "exec-fail-1", "traceparent": TRACEPARENT})
        assert r.status_code == 500, r.text
        invoke = rx.trace("exec-fail-1")["invoke"]
        assert invoke["attributes"]["ember.success"] is False
        assert invoke["attributes"]["ember.error_code"] == "FUNCTION_ERROR"
        assert invoke["status"] == 2  # STATUS_CODE_ERROR


def test_x_trace_id_wins_and_an_invalid_traceparent_is_ignored():
    with OtlpReceiver() as rx, Warm(otel_env(rx, **stdio_env())) as w:
        r = w.post(json={}, headers={"X-Execution-Id": "exec-xt", "X-Trace-Id": "my-trace",
                                     "traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        assert r.json()["TRACE_ID"] == "my-trace"
        assert parse_traceparent(r.json()["TRACEPARENT"])[0] == TRACE
        for bad in ("00-" + TRACE.upper() + "-" + PARENT + "-01", "ff-" + TRACE + "-" + PARENT + "-01",
                    f"00-{'0' * 32}-{PARENT}-01", "00-abc"):
            r = w.post(json={}, headers={"X-Execution-Id": "exec-bad", "traceparent": bad,
                                         "tracestate": "a=b"})
            assert r.status_code == 200, (bad, r.text)
            tp = r.json()["TRACEPARENT"]
            assert parse_traceparent(tp)[0] != TRACE, bad
            assert "TRACESTATE" not in r.json()


def test_without_otel_the_callers_context_goes_on_unchanged():
    with Warm(clean_env(**stdio_env())) as w:
        r = w.post(json={}, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=v1"})
        assert r.status_code == 200, r.text
        assert r.json()["TRACEPARENT"] == TRACEPARENT
        assert r.json()["TRACESTATE"] == "vendor=v1"
        assert r.json()["TRACE_ID"] == TRACE
        r = w.post(json={}, headers={"traceparent": "00-nope"})
        assert r.status_code == 200, r.text
        assert not {"TRACEPARENT", "TRACESTATE", "TRACE_ID"} & set(r.json())
        assert "watchdog_trace_spans_dropped_total" not in w.get("/metrics").text


def test_an_http_runtime_gets_the_watchdogs_span_as_parent():
    port = free_port()
    with OtlpReceiver() as rx:
        env = otel_env(rx, EXECUTION_MODE="HTTP", WATCHDOG_CMD="python3 examples/http-upstream/server.py",
                       RUNTIME_URL=f"http://127.0.0.1:{port}/invoke")
        with Warm(env, cwd=REPO) as w:
            r = w.post(json={}, headers={"X-Execution-Id": "exec-http-1", "traceparent": TRACEPARENT,
                                         "tracestate": "vendor=v1"})
            assert r.status_code == 200, r.text
            headers = r.json()["headers"]
            invoke = rx.trace("exec-http-1")["invoke"]
            assert parse_traceparent(headers["traceparent"]) == (TRACE, invoke["span_id"], "01")
            assert headers["tracestate"] == "vendor=v1"
            assert headers["x-trace-id"] == TRACE


def test_a_python_handler_sees_context_traceparent():
    py = dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PY_FIXTURES, HANDLER_MODULE="handlers",
              HANDLER_FUNCTION="with_context")
    with OtlpReceiver() as rx, Warm(otel_env(rx, **py)) as w:
        r = w.post(json={}, headers={"X-Execution-Id": "exec-py-1", "traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        invoke = rx.trace("exec-py-1")["invoke"]
        assert r.json()["traceparent"] == f"00-{TRACE}-{invoke['span_id']}-01"
        assert r.json()["trace_id"] == TRACE
    with Warm(clean_env(**py)) as w:
        assert w.post(json={}).json()["traceparent"] is None
        r = w.post(json={}, headers={"traceparent": TRACEPARENT})
        assert r.json()["traceparent"] == TRACEPARENT


def test_oneshot_honours_traceparent_and_flushes_before_exit():
    with OtlpReceiver() as rx:
        # The SDK's default 5 s batch delay: the spans arrive only by the flush on exit.
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint, EXECUTION_ID="exec-once-1",
                        TRACEPARENT=TRACEPARENT, INVOCATION_PAYLOAD="{}", ONESHOT_OUTPUT="output",
                        **stdio_env())
        started = time.monotonic()
        done = run_oneshot(env)
        assert done.returncode == 0, done.stderr.decode()
        assert time.monotonic() - started < 4
        child_env = json.loads(done.stdout)
        t = rx.trace("exec-once-1", timeout=1)
        assert t["invoke"]["trace_id"] == TRACE
        assert t["invoke"]["parent_span_id"] == PARENT
        assert "init" in t and t["invoke"]["attributes"]["faas.coldstart"] is True
        assert parse_traceparent(child_env["TRACEPARENT"]) == (TRACE, t["invoke"]["span_id"], "01")
        assert child_env["TRACE_ID"] == TRACE


def test_warm_flushes_spans_on_sigterm():
    with OtlpReceiver() as rx:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint, **stdio_env())
        with Warm(env) as w:
            assert w.post(json={}, headers={"X-Execution-Id": "exec-term-1"}).status_code == 200
            w.signal(15)
            assert w.wait(10) == 0
            assert rx.trace("exec-term-1", timeout=1)["invoke"]


def _dropped(w) -> float:
    for line in w.get("/metrics").text.splitlines():
        if line.startswith("watchdog_trace_spans_dropped_total{"):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def test_a_down_collector_slows_nothing_and_drops_are_counted():
    py = dict(EXECUTION_MODE="PYTHON", HANDLER_PATH=PY_FIXTURES, HANDLER_MODULE="handlers",
              HANDLER_FUNCTION="echo", FUNCTION_NAME="echo")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=closed, OTEL_BSP_SCHEDULE_DELAY=20, **py)
    with Warm(clean_env(**py)) as plain, Warm(down) as traced:
        for w in (plain, traced):  # warm up both
            for _ in range(20):
                assert w.post(json={"a": 1}).status_code == 200
        times = {plain: [], traced: []}
        # Interleaved, so the machine's noise falls on both alike.
        for i in range(200):
            for w in (plain, traced) if i % 2 else (traced, plain):
                t0 = time.perf_counter()
                r = w.post(json={"a": 1}, headers={"traceparent": TRACEPARENT})
                times[w].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        p50_plain = statistics.median(times[plain])
        p50_traced = statistics.median(times[traced])
        print(f"p50 without OTel {p50_plain * 1e3:.3f} ms, with a down collector {p50_traced * 1e3:.3f} ms")
        assert p50_traced <= p50_plain * 1.10 + 0.001, (p50_plain, p50_traced)
        wait_until(lambda: _dropped(traced) > 0, 10)
        # One warning per outage, not one per batch.
        assert traced.logs().count("span export failed") == 1, traced.logs()[-3000:]

"""Ember's Python API for function handlers.

    import ember

    def handle(request, context):
        if "input" not in request:
            raise ember.FunctionError("INVALID_INPUT", "the request has no 'input'")
        context.logger.info("working on %s", request["input"])
        return {"result": request["input"]}

The Ember watchdog has this module built in and registers it before it imports your
handler, so `import ember` needs no installation in an Ember image. Installing it with pip
(`pip install runtime-python/python`) is only for editors and for testing handlers without
the watchdog; it behaves the same there, minus the log forwarding.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import logging

__all__ = ["Context", "FunctionError", "Request", "Response"]


class FunctionError(Exception):
    """Fails the invocation with a code of your choice (contract section 7).

    `raise FunctionError("RATE_LIMITED", "try again in 10 s")` ends the invocation with
    `{"code": "RATE_LIMITED", "error": "try again in 10 s"}` (HTTP 500 in warm mode), and
    the same code in the callback. Any other exception becomes `HANDLER_ERROR`.
    """

    def __init__(self, code: str, message: str = "") -> None:
        if not isinstance(code, str) or not code:
            raise TypeError("FunctionError(code, message): code must be a non-empty str")
        super().__init__(code, message)
        self.code = code
        self.message = str(message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class Response:
    """An HTTP-shaped answer (warm mode): `return ember.Response(body, status=201,
    headers={"Location": "/items/7"}, content_type="text/html")`.

    `body` is sent as JSON (any JSON-serialisable value), as raw bytes (`bytes`:
    `application/octet-stream` unless `content_type` says otherwise), or as text (a `str`
    with a `text/*` `content_type`). `status` is 200 to 499. Hop-by-hop headers,
    `Content-Length` and `X-Execution-Id` are dropped. A callback carries the body as the
    output (bytes as base64, see the README); one-shot mode ignores status and headers.
    """

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=None, status: int = 200, headers=None, content_type=None) -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 499:
            raise ValueError(f"Response status must be an int from 200 to 499, not {status!r}")
        if headers is not None and not isinstance(headers, dict):
            raise TypeError("Response headers must be a dict of str to str")
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError("Response content_type must be a str")
        self.body = body
        self.status = status
        self.headers = dict(headers or {})
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, content_type={self.content_type!r})"


class Request:
    """The HTTP request that carried a warm invocation: `context.request.method`,
    `.path` (with the query), `.headers` (a dict, names in lower case). `None` in one-shot
    mode."""

    __slots__ = ("method", "path", "headers")

    def __init__(self, method: str, path: str, headers: dict) -> None:
        self.method = method
        self.path = path
        self.headers = headers

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, path={self.path!r})"


class Context:
    """What travels with one invocation; the second argument of `handle(request, context)`.

    `attempt` is `X-Dispatch-Attempt` (1 when the control plane did not say),
    `deadline_ms` the deadline as Unix milliseconds, `cold_start` true for the first
    invocation after start-up. `traceparent` is the W3C trace context to continue in
    spans of your own (the watchdog's span of this invocation as parent when it exports
    spans, else the caller's), or None. `logger` is a `logging.LoggerAdapter` whose records carry
    the execution id and trace id, so the watchdog's log can tie them to this invocation.
    """

    __slots__ = (
        "execution_id",
        "trace_id",
        "attempt",
        "function_name",
        "deadline_ms",
        "cold_start",
        "request",
        "traceparent",
        "_logger",
    )

    def __init__(
        self,
        execution_id: str,
        trace_id: Optional[str] = None,
        attempt: int = 1,
        function_name: str = "",
        deadline_ms: int = 0,
        cold_start: bool = False,
        request: Optional[Request] = None,
        traceparent: Optional[str] = None,
    ) -> None:
        self.execution_id = execution_id
        self.trace_id = trace_id
        self.attempt = attempt
        self.function_name = function_name
        self.deadline_ms = deadline_ms
        self.cold_start = cold_start
        self.request = request
        self.traceparent = traceparent
        self._logger: Optional[logging.LoggerAdapter] = None

    def remaining_ms(self) -> int:
        """Milliseconds left before the deadline; 0 once it has passed."""
        return max(0, self.deadline_ms - time.time_ns() // 1_000_000)

    @property
    def logger(self) -> logging.LoggerAdapter:
        # Built on first use: most handlers never log, and an adapter per call is not free.
        if self._logger is None:
            import logging

            self._logger = logging.LoggerAdapter(
                logging.getLogger(self.function_name or "function"),
                {"execution_id": self.execution_id, "trace_id": self.trace_id},
            )
        return self._logger

    def __repr__(self) -> str:
        return (
            f"Context(execution_id={self.execution_id!r}, trace_id={self.trace_id!r}, "
            f"attempt={self.attempt!r}, function_name={self.function_name!r}, "
            f"deadline_ms={self.deadline_ms!r}, cold_start={self.cold_start!r}, "
            f"traceparent={self.traceparent!r})"
        )

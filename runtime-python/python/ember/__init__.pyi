# Public API of the `ember` module that the Ember watchdog builds in (see __init__.py).
import logging
from typing import Any, Dict, Optional

__all__ = ["Context", "FunctionError", "Request", "Response"]

class FunctionError(Exception):
    code: str
    message: str
    def __init__(self, code: str, message: str = "") -> None: ...

class Response:
    body: Any
    status: int
    headers: Dict[str, str]
    content_type: Optional[str]
    def __init__(
        self,
        body: Any = None,
        status: int = 200,
        headers: Optional[Dict[str, str]] = None,
        content_type: Optional[str] = None,
    ) -> None: ...

class Request:
    method: str
    path: str
    headers: Dict[str, str]
    def __init__(self, method: str, path: str, headers: Dict[str, str]) -> None: ...

class Context:
    execution_id: str
    trace_id: Optional[str]
    attempt: int
    function_name: str
    deadline_ms: int
    cold_start: bool
    request: Optional[Request]
    traceparent: Optional[str]
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
    ) -> None: ...
    def remaining_ms(self) -> int: ...
    @property
    def logger(self) -> logging.LoggerAdapter: ...

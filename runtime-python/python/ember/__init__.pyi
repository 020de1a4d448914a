# Public API of the `ember` module that the Ember watchdog builds in (see __init__.py).
import logging
from typing import Optional

__all__ = ["Context", "FunctionError"]

class FunctionError(Exception):
    code: str
    message: str
    def __init__(self, code: str, message: str = "") -> None: ...

class Context:
    execution_id: str
    trace_id: Optional[str]
    attempt: int
    function_name: str
    deadline_ms: int
    cold_start: bool
    def __init__(
        self,
        execution_id: str,
        trace_id: Optional[str] = None,
        attempt: int = 1,
        function_name: str = "",
        deadline_ms: int = 0,
        cold_start: bool = False,
    ) -> None: ...
    def remaining_ms(self) -> int: ...
    @property
    def logger(self) -> logging.LoggerAdapter: ...

#!/usr/bin/env python3
"""Ember LOOP adapter for Python (docs/loop-protocol.md). Standard library only.

    WATCHDOG_CMD="python3 /path/ember_loop.py module_or_path [function]"

Imports the module once (a dotted name found from the working directory, or a
path to a .py file), then for each request line on stdin calls
`function(request)` or `function(request, context)` (default `handle`; async
functions are awaited) and writes one result line to fd 3. print() and
stderr are logs. An exception becomes `{"code": exc.code or "HANDLER_ERROR",
"message": ...}`.
"""

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback

RESULT_FD = 3


class Context:
    """What the handler knows about its invocation."""

    def __init__(self, request):
        self.execution_id = request.get("id")
        self.trace_id = request.get("trace_id")
        self.deadline_ms = request.get("deadline_ms")

    def remaining_ms(self):
        if self.deadline_ms is None:
            return None
        return max(0, int(self.deadline_ms - time.time() * 1000))


def load(target, function):
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        name = os.path.splitext(os.path.basename(path))[0]
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise SystemExit(f"ember_loop: {target} has no function {function!r}")
    return fn


def takes_context(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def error_result(rid, exc):
    code = getattr(exc, "code", None)
    if not isinstance(code, str) or not code:
        code = "HANDLER_ERROR"
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        message = str(exc)
    return {"id": rid, "error": {"code": code, "message": message}}


def main(argv):
    if len(argv) < 2:
        print("usage: ember_loop.py module_or_path [function]", file=sys.stderr)
        return 2
    fn = load(argv[1], argv[2] if len(argv) > 2 else "handle")
    with_context = takes_context(fn)
    results = os.fdopen(RESULT_FD, "w", encoding="utf-8")
    # Logs show up as they are printed, not when a block buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    loop = asyncio.new_event_loop()
    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        request = json.loads(raw)
        rid = request.get("id")
        try:
            args = (request.get("payload"), Context(request)) if with_context else (request.get("payload"),)
            output = fn(*args)
            if inspect.isawaitable(output):
                output = loop.run_until_complete(output)
            try:
                line = json.dumps({"id": rid, "output": output}, allow_nan=False)
            except (TypeError, ValueError) as exc:
                line = json.dumps({"id": rid, "error": {"code": "OUTPUT_SERIALIZATION_ERROR", "message": str(exc)}})
        except Exception as exc:  # noqa: BLE001 - every failure is an answer
            traceback.print_exc()
            line = json.dumps(error_result(rid, exc))
        # What the handler printed belongs to this invocation: out first.
        sys.stdout.flush()
        sys.stderr.flush()
        results.write(line + "\n")
        results.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

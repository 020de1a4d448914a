"""The Python half of Ember's in-process runtime; not part of the handler API.

The Rust half (`runtime-python`) registers `ember._native` and then runs this module. Each
piece here is called from Rust: `install` once before the handler is imported, `load` to
import it (`reload` to import it afresh), `AsyncRunner` once per worker thread, `describe` and `format_traceback` when a
handler raises.
"""

from __future__ import annotations

# Only what loading needs: asyncio (25 ms), inspect, traceback and logging (6 ms) are
# imported when first used, since every millisecond here is cold-start time.
import importlib
import io
import os
import sys

from ember import FunctionError

_native = sys.modules.get("ember._native")

_STDOUT, _STDERR = 1, 2


class _Stream(io.TextIOBase):
    """sys.stdout and sys.stderr while Ember runs: text goes to the watchdog's log.

    The native side buffers per OS thread and forwards each complete line with the
    execution id of the invocation that thread is running (contract section 10). Nothing
    reaches file descriptor 1, which in one-shot mode carries only the result line.
    """

    def __init__(self, name: str, stream: int) -> None:
        super().__init__()
        self._name = name
        self._stream = stream

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        _native.write(self._stream, s)
        return len(s)

    def flush(self) -> None:
        # Partial lines are sent when the invocation ends, so that print(..., end="")
        # pieces stay one line in the log.
        pass


def install(level: int) -> None:
    """Routes print() and logging to the watchdog's log; `level` mirrors LOG_LEVEL.

    `logging` is routed as soon as it is imported, by whoever imports it first (the
    handler, a library, `context.logger`); a function that never logs never loads it.
    """
    global _log_level
    _guard_signals()
    sys.stdout = _Stream("<stdout>", _STDOUT)
    sys.stderr = _Stream("<stderr>", _STDERR)
    _log_level = level
    if "logging" in sys.modules:
        _route_logging(sys.modules["logging"])
    elif not any(isinstance(f, _WhenLoggingLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenLoggingLoads())


_log_level = 0


def _route_logging(logging) -> None:
    """Makes a root handler of `logging` send each record to the watchdog's log, as one
    event at the mapped level. Records from `context.logger` carry their execution id;
    any other record logged on a worker thread gets the id of the invocation that thread
    is running."""

    class _LogHandler(logging.Handler):
        _ember = True

        def emit(self, record) -> None:
            try:
                _native.log(
                    record.levelno,
                    record.name,
                    self.format(record),
                    getattr(record, "execution_id", None),
                    getattr(record, "trace_id", None),
                )
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ember", False):
            root.removeHandler(h)
    root.addHandler(_LogHandler())
    root.setLevel(_log_level)


class _WhenLoggingLoads:
    """A meta path finder that finds nothing itself: it has `logging` found by the
    finders after it and routes the module once its code has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRoute(spec.loader)
                return spec
        return None


class _ThenRoute:
    """The loader of `logging`, with the routing done after the module's code."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _route_logging(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


# Signals the watchdog handles itself: SIGTERM and SIGINT start its drain (contract
# section 10), and it relies on SIGPIPE being ignored (a write to a closed socket must
# fail, not kill the process). Handler code runs in the watchdog's process, and the
# thread that started CPython is Python's main thread, so a module calling
# signal.signal(SIGTERM, ...) there would replace the watchdog's own handler.
_OWNED_SIGNALS = ("SIGTERM", "SIGINT", "SIGPIPE")


def _guard_signals() -> None:
    """Makes signal.signal() a no-op for the watchdog's signals, with a warning.

    The handler given is remembered (signal.getsignal returns it, and signal.signal the
    one before) but never installed, so code that saves and restores a handler keeps
    working. Patched on `_signal`, which `signal.signal` calls at each use, so it holds
    whether `signal` is imported before or after this, without importing it now.
    """
    import _signal

    if getattr(_signal.signal, "_ember_guard", False):
        return
    real_signal, real_getsignal = _signal.signal, _signal.getsignal
    owned = {getattr(_signal, n) for n in _OWNED_SIGNALS if hasattr(_signal, n)}
    names = {getattr(_signal, n): n for n in _OWNED_SIGNALS if hasattr(_signal, n)}
    shadow = {}
    warned = set()

    def signal(signalnum, handler):
        num = int(signalnum)
        if num not in owned:
            return real_signal(signalnum, handler)
        if not callable(handler) and handler not in (_signal.SIG_DFL, _signal.SIG_IGN):
            raise TypeError(
                "signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object"
            )
        previous = shadow[num] if num in shadow else real_getsignal(num)
        shadow[num] = handler
        if num not in warned:
            warned.add(num)
            _native.log(
                30,  # logging.WARNING, without importing logging
                "ember",
                f"signal.signal({names[num]}, ...) ignored: the watchdog handles {names[num]} "
                "itself (SIGTERM and SIGINT drain running invocations, then exit)",
                None,
                None,
            )
        return previous

    def getsignal(signalnum):
        num = int(signalnum)
        if num in shadow:
            return shadow[num]
        return real_getsignal(signalnum)

    signal.__doc__ = real_signal.__doc__
    getsignal.__doc__ = real_getsignal.__doc__
    signal._ember_guard = True
    _signal.signal = signal
    _signal.getsignal = getsignal


_FunctionType = type(install)
_CO_VARARGS = 0x04
_CO_COROUTINE = 0x80
_CO_GENERATOR = 0x20
_CO_ASYNC_GENERATOR = 0x200


def arity(func) -> int:
    """How many arguments the handler takes: 1 (request) or 2 (request, context)."""
    name = getattr(func, "__qualname__", None) or repr(func)
    if type(func) is _FunctionType and not hasattr(func, "__wrapped__"):
        # A plain function: its code object says it all, without importing inspect.
        code = func.__code__
        positional = code.co_argcount
        required = positional - len(func.__defaults__ or ())
        varargs = bool(code.co_flags & _CO_VARARGS)
        kwonly = code.co_varnames[positional : positional + code.co_kwonlyargcount]
        missing = [k for k in kwonly if k not in (func.__kwdefaults__ or {})]
        if missing:
            raise TypeError(
                f"{name}() has a required keyword-only parameter {missing[0]!r}; "
                "a handler is handle(request) or handle(request, context)"
            )
        return _check(name, positional, required, varargs)
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return 1  # uninspectable (some builtins): the contract's basic form
    positional = required = 0
    varargs = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
            required += p.default is p.empty
        elif p.kind is p.VAR_POSITIONAL:
            varargs = True
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise TypeError(
                f"{name}() has a required keyword-only parameter {p.name!r}; "
                "a handler is handle(request) or handle(request, context)"
            )
    return _check(name, positional, required, varargs)


def _check(name: str, positional: int, required: int, varargs: bool) -> int:
    if required > 2:
        raise TypeError(
            f"{name}() requires {required} arguments; "
            "a handler is handle(request) or handle(request, context)"
        )
    if positional == 0 and not varargs:
        raise TypeError(
            f"{name}() takes no arguments; "
            "a handler is handle(request) or handle(request, context)"
        )
    return 2 if varargs or positional >= 2 else 1


def is_async(func) -> bool:
    if type(func) is _FunctionType and not hasattr(func, "__wrapped__"):
        return bool(func.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(func)


def is_generator(func) -> bool:
    if type(func) is _FunctionType and not hasattr(func, "__wrapped__"):
        return bool(func.__code__.co_flags & (_CO_GENERATOR | _CO_ASYNC_GENERATOR))
    import inspect

    return inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)


def load(path: str, module: str, function: str):
    """Imports HANDLER_MODULE from HANDLER_PATH; returns (func, arity,
    is_coroutine_function, is_generator_function)."""
    path = os.path.abspath(path or ".")
    if not sys.path or sys.path[0] != path:
        # A new list, not an edit: an import iterating sys.path meanwhile on another
        # thread (a handler's lazy import during a reload) would skip an entry when
        # one before it is removed.
        sys.path = [path] + [p for p in sys.path if p != path]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise ModuleNotFoundError(
                f"{e} (HANDLER_MODULE={module}, HANDLER_PATH={path})", name=e.name
            ) from None
        raise
    try:
        func = getattr(mod, function)
    except AttributeError:
        raise AttributeError(
            f"module {module!r} has no attribute {function!r} (HANDLER_FUNCTION={function})"
        ) from None
    if not callable(func):
        raise TypeError(
            f"{module}.{function} is not callable (it is of type {type(func).__name__}; "
            f"HANDLER_FUNCTION={function})"
        )
    coroutine = is_async(func)
    if coroutine:
        import asyncio  # noqa: F401 - now, not in the first invocation's time

    return func, arity(func), coroutine, is_generator(func)


def reload(path: str, module: str, function: str):
    """`load` again in a fresh module namespace (RELOAD, a development setting).

    The handler's module and every module loaded from HANDLER_PATH leave sys.modules
    first, so the import runs their new code (installed packages under it, in a
    site-packages directory, and compiled extensions, which cannot be loaded twice,
    stay). Their bytecode caches go too: a cache is trusted when the source's mtime (in
    whole seconds) and size match, which an edit within the same second can keep. If
    the import fails, sys.modules is put back as it was, so the old handler's lazy
    imports still find the modules it was loaded with.
    """
    root = os.path.abspath(path or ".")
    saved = {
        name: mod
        for name, mod in list(sys.modules.items())
        if name == module or _loaded_from(mod, root)
    }
    for name in saved:
        del sys.modules[name]
    for mod in saved.values():
        cached = getattr(mod, "__cached__", None)
        if isinstance(cached, str) and _loaded_from(mod, root):
            try:
                os.unlink(cached)
            except OSError:
                pass
    importlib.invalidate_caches()
    try:
        return load(path, module, function)
    except BaseException:
        for name, mod in list(sys.modules.items()):
            if name not in saved and _loaded_from(mod, root):
                del sys.modules[name]
        sys.modules.update(saved)
        raise


def _loaded_from(mod, root: str) -> bool:
    """Whether `mod` is the function's own source code, loaded from under `root`."""
    name = getattr(mod, "__name__", None)
    if not isinstance(name, str) or name == "ember" or name.startswith("ember."):
        return False
    file = getattr(mod, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return False
    file = os.path.abspath(file)
    try:
        if os.path.commonpath((root, file)) != root:
            return False
    except ValueError:
        return False
    parts = os.path.relpath(file, root).split(os.sep)
    return "site-packages" not in parts and "dist-packages" not in parts


class AsyncRunner:
    """A worker thread's event loop, created on its first async call and reused."""

    __slots__ = ("loop", "task", "seq", "cancelled")

    def __init__(self) -> None:
        self.loop = None
        self.task = None
        self.seq = 0
        self.cancelled = 0

    def run(self, coro, seq: int = 0):
        import asyncio

        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        task = self.task = loop.create_task(coro)
        self.seq = seq
        if self.cancelled == seq:
            task.cancel()  # the deadline came before the task existed
        try:
            return loop.run_until_complete(task)
        except BaseException:
            if not task.done():
                # The loop itself was interrupted (the deadline's TimeoutError landed
                # outside the task). Leave that loop behind; the next call gets a new one.
                self.loop = None
                asyncio.set_event_loop(None)
                task.cancel()
                loop.close()
            raise
        finally:
            self.task = None

    def cancel(self, seq: int) -> None:
        """Called from another thread at the deadline of invocation `seq`: cancel its task.

        call_soon_threadsafe wakes the loop even while it waits in select(), which the
        asynchronous TimeoutError alone would not do. `seq` guards against cancelling the
        next invocation's task if this one ended meanwhile.
        """
        self.cancelled = seq
        task, loop = self.task, self.loop
        if task is not None and self.seq == seq and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    def wake(self) -> None:
        """Wakes the loop from select() so a pending TimeoutError is raised now."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_noop)


def _noop() -> None:
    pass


def _type_name(t: type) -> str:
    if t.__module__ in ("builtins", "__main__"):
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def describe(exc: BaseException):
    """(code, message): FunctionError's own code, else (None, "<Type>: <message>")."""
    if isinstance(exc, FunctionError):
        return exc.code, _one_line(exc.message)
    try:
        text = _one_line(str(exc))
    except Exception:
        text = "<exception str() failed>"
    name = _type_name(type(exc))
    return None, f"{name}: {text}" if text else name


def format_traceback(exc: BaseException, tb=None) -> str:
    import traceback

    tb = tb if tb is not None else exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()

import sys
import time

import ember


def value_error(request):
    raise ValueError("boom")


def function_error(request):
    raise ember.FunctionError("RATE_LIMITED", "slow down")


def returns_set(request):
    return {"a": [1, {2, 3}]}


def returns_nan(request):
    return float("nan")


def spin(request):
    while True:
        pass


def stubborn(request):
    # Swallows the deadline's TimeoutError: the runtime must report it stuck.
    end = time.monotonic() + request["seconds"]
    while time.monotonic() < end:
        try:
            while time.monotonic() < end:
                pass
        except BaseException:
            pass
    return "done"


def sleep(request):
    time.sleep(request["seconds"])
    return "slept"


async def async_sleep(request):
    import asyncio

    await asyncio.sleep(request["seconds"])
    return "slept"


async def async_spin(request):
    while True:
        pass


def slow_import(request):
    import t_slow_import  # noqa: F401 - still importing at the deadline

    while True:
        pass


def slow_import_state(request):
    return getattr(sys.modules.get("t_slow_import"), "DONE", False)


def handle(request):
    return "ok"


def dispatch(request):
    """One handler, many behaviours: {"fn": "<name>", ...} calls that function (a
    coroutine function's coroutine is returned as is, for the runtime to run)."""
    return globals()[request["fn"]](request)

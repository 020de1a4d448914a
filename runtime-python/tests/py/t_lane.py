"""Handlers that tell which OS thread ran them (the lane test)."""
import threading
import time


def where(request):
    time.sleep(request.get("sleep", 0))
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def streams(request):
    yield where(request)


async def coroutine(request):
    return where(request)


def returns_stream(request):
    return (where(request) for _ in range(1))

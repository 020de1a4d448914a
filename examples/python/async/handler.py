import asyncio


async def handle(request, context):
    """An async handler: it runs on its worker thread's event loop, reused across calls."""
    await asyncio.sleep(0.01)
    return {
        "execution_id": context.execution_id,
        "trace_id": context.trace_id,
        "attempt": context.attempt,
        "function_name": context.function_name,
        "deadline_ms": context.deadline_ms,
        "remaining_ms": context.remaining_ms(),
        "cold_start": context.cold_start,
    }

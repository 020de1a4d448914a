import asyncio
import threading

loops = set()


async def handle(request, context):
    await asyncio.sleep(request.get("sleep", 0.01))
    loops.add((threading.get_ident(), id(asyncio.get_running_loop())))
    return {"execution_id": context.execution_id, "loops": len(loops)}

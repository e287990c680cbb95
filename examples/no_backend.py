"""Without a backend: fire-and-forget tasks.

    app = Chicory(broker=BrokerType.REDIS)  # no backend

send() publishes and returns the task id; there is nowhere to read a result from, so
AsyncResult.get() raises BackendNotConfiguredError.
"""

from __future__ import annotations

import asyncio
import logging

from _local import worker_running
from chicory import BackendNotConfiguredError, BrokerType, Chicory

app = Chicory(broker=BrokerType.REDIS)  # No backend
logger = logging.getLogger("examples.events")
seen: asyncio.Queue[str] = asyncio.Queue()


@app.task(name="examples.log_event")
async def log_event(message: str) -> None:
    logger.info(message)
    seen.put_nowait(message)  # only so that this example can show the task ran


async def main() -> None:
    async with worker_running(app):
        task_id = await log_event.send("Event occurred")  # fire-and-forget
        print(f"sent task {task_id}")
        print(f"the worker ran it: {await asyncio.wait_for(seen.get(), timeout=10)!r}")

        result = await log_event.delay("test")  # publishes too, but...
        try:
            await result.get(timeout=1)
        except BackendNotConfiguredError:
            print("no backend: result.get() raised BackendNotConfiguredError")
        await asyncio.wait_for(seen.get(), timeout=10)


if __name__ == "__main__":
    asyncio.run(main())

"""PostgreSQL backend: persistent, queryable results; waiting clients woken by NOTIFY.

    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.POSTGRES))

Configured by CHICORY_BACKEND_POSTGRES_HOST, _PORT, _DATABASE, _USERNAME, _PASSWORD (or
_URL). Chicory's own AsyncResult polls every 100 ms; ``async_result(app, task_id)`` gives
ours, which sleeps until the database says the task finished (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio

from _local import ensure_postgres_database, local_defaults, worker_running
from chicory import BrokerType, Chicory

from chicory_backends import BackendType, TaskFailedError
from chicory_backends.chicory import async_result, chicory_backend

local_defaults()
app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.POSTGRES))


@app.task(name="examples.square")
async def square(x: int) -> int:
    await asyncio.sleep(0.2)
    return x * x


@app.task(name="examples.divide")
async def divide(a: float, b: float) -> float:
    return a / b


async def main() -> None:
    await ensure_postgres_database()
    async with worker_running(app):
        sent = await square.delay(12)
        value = await async_result(app, sent.task_id).get(timeout=10)
        print(f"square(12) = {value}")

        failed = await divide.delay(1, 0)
        try:
            await async_result(app, failed.task_id).get(timeout=10)
        except TaskFailedError as error:
            print(f"divide(1, 0) failed: {error.error}")
            assert error.traceback and "ZeroDivisionError" in error.traceback

        assert app.backend is not None
        workers = await app.backend.get_active_workers()
        print(f"active workers: {[w.worker_id for w in workers]}")
        print(f"postgres backend: square(12) = {value}")
        assert value == 144


if __name__ == "__main__":
    asyncio.run(main())

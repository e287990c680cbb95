"""Redis backend: fast, in-memory result storage with native TTL.

    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.REDIS))

Configured by CHICORY_BACKEND_REDIS_HOST, _PORT, _DB (1), _RESULT_TTL (3600), ...
The broker is Chicory's own Redis Streams broker (CHICORY_BROKER_REDIS_*, db 0).
"""

from __future__ import annotations

import asyncio

from _local import worker_running
from chicory import BrokerType, Chicory

from chicory_backends import BackendType
from chicory_backends.chicory import chicory_backend

app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.REDIS))


@app.task(name="examples.add")
async def add(a: int, b: int) -> int:
    return a + b


async def main() -> None:
    async with worker_running(app):
        result = await add.delay(2, 3)  # Chicory's AsyncResult, reading through our backend
        value = await result.get(timeout=10)
        print(f"state: {await result.state()}")
        print(f"redis backend: add(2, 3) = {value}")
        assert value == 5


if __name__ == "__main__":
    asyncio.run(main())

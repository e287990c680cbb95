"""Mixed setup: RabbitMQ broker + our Redis backend.

    app = Chicory(broker=BrokerType.RABBITMQ, backend=chicory_backend(BackendType.REDIS))

Needs RabbitMQ (guest@localhost:5672) and Redis (localhost:6379); the backend reads
CHICORY_BACKEND_REDIS_* (db 1 by default).
"""

from __future__ import annotations

import asyncio

from _local import worker_running
from chicory import BrokerType, Chicory

from chicory_backends import BackendType
from chicory_backends.chicory import chicory_backend

app = Chicory(broker=BrokerType.RABBITMQ, backend=chicory_backend(BackendType.REDIS))


@app.task(name="examples.word_count")
async def word_count(text: str) -> int:
    return len(text.split())


async def main() -> None:
    async with worker_running(app):
        result = await word_count.delay("results travel by Redis, tasks by RabbitMQ")
        count = await result.get(timeout=10)
        print(f"rabbitmq broker + redis backend: word_count = {count}")
        assert count == 7


if __name__ == "__main__":
    asyncio.run(main())

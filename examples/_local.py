"""What lets each example run on its own against servers on this machine.

Not part of any lesson: a deployment sets CHICORY_BACKEND_* in its environment, migrates
with `alembic upgrade head` and runs `chicory worker myapp:app` as its own process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chicory import Chicory, Worker, WorkerConfig
from chicory.broker.redis import RedisBroker
from sqlalchemy.engine import make_url

LOCAL_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/chicory_examples"


def local_defaults() -> None:
    """Point the PostgreSQL backend at the local server unless the environment says otherwise.

    Redis (localhost:6379, db 1) and RabbitMQ (guest@localhost:5672) need nothing: those
    are the defaults already.
    """
    os.environ.setdefault("CHICORY_BACKEND_POSTGRES_URL", LOCAL_POSTGRES_URL)
    os.environ.setdefault("CHICORY_BACKEND_POSTGRES_AUTO_MIGRATE", "true")


async def ensure_postgres_database() -> None:
    """Create the examples' database on first use (the tables come from auto_migrate)."""
    import asyncpg

    url = make_url(os.environ["CHICORY_BACKEND_POSTGRES_URL"])
    admin = await asyncpg.connect(
        user=url.username, password=url.password, host=url.host, port=url.port,
        database="postgres",
    )  # fmt: skip
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await admin.close()


@asynccontextmanager
async def worker_running(app: Chicory) -> AsyncIterator[Worker]:
    """A Chicory worker inside this process, as `chicory worker` would run it; stopped on exit.

    Worker.start() connects the app (broker and backend), so the example's client code
    shares those connections.
    """
    if isinstance(app.broker, RedisBroker):
        app.broker.block_ms = 100  # a short blocking read, so this worker stops promptly
    worker = Worker(app, WorkerConfig(concurrency=4, heartbeat_interval=1, heartbeat_ttl=10))
    await worker.start()
    try:
        yield worker
    finally:
        stopping = asyncio.create_task(worker.stop(timeout=5))
        if type(app.broker).__name__ == "RabbitMQBroker":  # needs chicory[rabbitmq]
            # Chicory 0.1.0's RabbitMQ consumer notices a stop only at the next message (or
            # after 5 s); once stop() has begun, closing the consumer channel ends the wait.
            await asyncio.sleep(0)
            await app.broker._close_consumer_channel()  # type: ignore[attr-defined]
        await stopping

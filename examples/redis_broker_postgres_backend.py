"""Mixed setup: Redis broker + our PostgreSQL backend, with a retry.

    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.POSTGRES))

The task fails once, Chicory records RETRY and re-publishes it, the second attempt stores
SUCCESS: every state change goes through the backend's atomic upserts.
"""

from __future__ import annotations

import asyncio

from _local import ensure_postgres_database, local_defaults, worker_running
from chicory import BrokerType, Chicory, RetryBackoff, RetryPolicy, TaskContext

from chicory_backends import BackendType
from chicory_backends.chicory import chicory_backend

local_defaults()
app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.POSTGRES))


@app.task(
    name="examples.fetch_quote",
    retry_policy=RetryPolicy(max_retries=2, retry_delay=0.1, backoff=RetryBackoff.FIXED),
)
async def fetch_quote(ctx: TaskContext, symbol: str) -> dict[str, object]:
    if ctx.retries == 0:
        raise ConnectionError("upstream timed out")  # the first attempt fails
    return {"symbol": symbol, "price": 101.5, "attempt": ctx.retries + 1}


async def main() -> None:
    await ensure_postgres_database()
    async with worker_running(app):
        result = await fetch_quote.delay("CHIC")
        quote = await result.get(timeout=10)
        print(f"redis broker + postgres backend: {quote}")
        assert quote == {"symbol": "CHIC", "price": 101.5, "attempt": 2}


if __name__ == "__main__":
    asyncio.run(main())

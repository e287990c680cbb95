"""Result TTL: Redis expires results natively; the SQL backends hide them once expired.

    from chicory_backends import RedisBackendConfig
    config = RedisBackendConfig(result_ttl=3600)  # results expire after 1 hour

Here the TTL is one second, so that the example can watch a result disappear.
Environment: CHICORY_BACKEND_REDIS_RESULT_TTL (0 = never expire), and
CHICORY_BACKEND_<SQL>_RESULT_TTL for the database backends.
"""

from __future__ import annotations

import asyncio

from _local import worker_running
from chicory import BrokerType, Chicory

from chicory_backends import BackendType, RedisBackendConfig
from chicory_backends.chicory import async_result, chicory_backend

config = RedisBackendConfig(result_ttl=1)  # Results expire after 1 second
app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(BackendType.REDIS, config))


@app.task(name="examples.greet")
async def greet(name: str) -> str:
    return f"hello, {name}"


async def main() -> None:
    async with worker_running(app):
        sent = await greet.delay("ttl")
        result = async_result(app, sent.task_id)
        print(f"right away: {await result.get(timeout=10)!r}")
        await asyncio.sleep(1.5)
        state = await result.state()
        print(f"after 1.5 s: {state} (expired, nothing stored any more)")
        assert state == "PENDING"
        print("result ttl: the result expired after 1 s")


if __name__ == "__main__":
    asyncio.run(main())

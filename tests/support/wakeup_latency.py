"""Store -> wake-up latency of a waiting client, per backend (a script, not a test).

    python -m tests.support.wakeup_latency [--waiters 200] [--spread 2.0]

``--waiters`` clients wait at once through ``AsyncResult.get()``; a writer (its own
backend object, so its own connections) stores each task's result at a random moment
within ``--spread`` seconds. Latency is measured from the start of the writer's
``store_result`` call to the moment the waiting ``get()`` returns, so it includes the
write itself ("store->wake"), and from the moment that call returned ("stored->wake"),
which is what the waking mechanism alone costs. PostgreSQL is woken by LISTEN/NOTIFY,
Redis by pub/sub (where its backend overrides wait_for_result); the others poll with
the contract's back-off (5 ms doubling to ``poll_interval_cap``, 0.5 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chicory_backends import TaskResult, TaskState, create_backend
from chicory_backends.base import Backend
from chicory_backends.result import AsyncResult
from chicory_backends.sql.backend import DatabaseBackend
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

Pair = tuple[Backend, Backend]


@asynccontextmanager
async def sql_pair(kind: str) -> AsyncIterator[Pair]:
    name = run_database_name(f"latency_{kind}")
    config = fresh_config(kind, name, auto_migrate=True)
    try:
        async with DatabaseBackend(config) as client, DatabaseBackend(config) as writer:
            yield client, writer
    finally:
        drop_database(kind, name)


@asynccontextmanager
async def redis_pair() -> AsyncIterator[Pair]:
    from chicory_backends.config import RedisBackendConfig
    from tests.support.services import REDIS_HOST, REDIS_PORT, require

    require("Redis", REDIS_HOST, REDIS_PORT)
    config = RedisBackendConfig(
        host=REDIS_HOST,
        port=REDIS_PORT,
        key_prefix=f"latency-{uuid.uuid4().hex[:8]}",
        result_ttl=60,
    )
    async with create_backend("redis", config) as client, create_backend("redis", config) as writer:
        yield client, writer


async def measure(pair: Pair, waiters: int, spread: float) -> tuple[list[float], list[float]]:
    client, writer = pair
    ids = [f"latency-{uuid.uuid4().hex}" for _ in range(waiters)]
    started: dict[str, float] = {}
    stored: dict[str, float] = {}
    woken: dict[str, float] = {}

    async def wait(task_id: str) -> None:
        await AsyncResult(task_id, client).get(timeout=spread + 30)
        woken[task_id] = time.perf_counter()

    async def store(task_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        started[task_id] = time.perf_counter()
        done = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=1)
        await writer.store_result(task_id, done)
        stored[task_id] = time.perf_counter()

    # Open the pools' connections first: a connection made mid-run (tens of ms) is not
    # what this measures.
    await asyncio.gather(*(backend.healthcheck() for backend in pair for _ in range(20)))
    waiting = [asyncio.create_task(wait(task_id)) for task_id in ids]
    await asyncio.sleep(0.2)  # every waiter is registered and has read once
    await asyncio.gather(*(store(task_id, random.uniform(0, spread)) for task_id in ids))
    await asyncio.gather(*waiting)
    return (
        [(woken[task_id] - started[task_id]) * 1000 for task_id in ids],
        [max(0.0, woken[task_id] - stored[task_id]) * 1000 for task_id in ids],
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=2.0)
    args = parser.parse_args()

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("postgres", lambda: sql_pair("postgres")),
        ("redis", redis_pair),
        ("sqlite", lambda: sql_pair("sqlite")),
        ("mariadb", lambda: sql_pair("mysql")),
    ]
    print(f"{args.waiters} concurrent waiters, stores spread over {args.spread:g} s")
    print(f"{'':<32} {'store->wake ms':^26} {'stored->wake ms':^17}")
    print(f"{'backend':<32} {'p50':>8} {'p99':>8} {'max':>8} {'p50':>8} {'p99':>8}")
    for kind, make in cases:
        label = kind
        try:
            async with make() as pair:
                label = f"{kind} ({mechanism(pair[0])})"
                latencies, after = await measure(pair, args.waiters, args.spread)
        except BaseException as error:  # pytest's skip outside pytest, an unreachable server
            if isinstance(error, KeyboardInterrupt):
                raise
            print(f"{label:<32} skipped: {error}")
            continue
        print(
            f"{label:<32} {statistics.median(latencies):8.1f} "
            f"{percentile(latencies, 0.99):8.1f} {max(latencies):8.1f} "
            f"{statistics.median(after):8.1f} {percentile(after, 0.99):8.1f}"
        )


def mechanism(backend: Backend) -> str:
    """How this backend wakes a waiter: pushed, or the contract's polling."""
    if isinstance(backend, DatabaseBackend):
        return "LISTEN/NOTIFY" if backend._result_listener() else _polling(backend)
    if type(backend).wait_for_result is Backend.wait_for_result:
        return _polling(backend)
    return "pub/sub" if type(backend).__name__ == "RedisBackend" else "pushed"


def _polling(backend: Backend) -> str:
    return f"polling, cap {backend.poll_interval_cap:g} s"


if __name__ == "__main__":
    asyncio.run(main())

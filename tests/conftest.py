"""Fixtures shared by the suite: one contract, every backend, real servers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

sys.path.insert(0, str(Path(__file__).parent))

from redis_servers import (  # noqa: F401  (session fixtures, found by name)
    REDIS_MODES,
    redis_backends,
    redis_cluster,
    redis_sentinel,
)
from sql_databases import SQL_KINDS, migrated_database, run_database_name

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.redis import RedisBackend
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.schema import task_results, worker_heartbeats

CONTRACT_KINDS = (*SQL_KINDS, *REDIS_MODES)

MakeBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture(scope="session")
def sql_databases() -> Iterator[Callable[[str], SQLBackendConfig]]:
    """Migrated test databases, created on first use and kept for the session."""
    configs: dict[str, SQLBackendConfig] = {}
    with ExitStack() as stack:

        def get(kind: str) -> SQLBackendConfig:
            if kind not in configs:
                configs[kind] = stack.enter_context(
                    migrated_database(kind, run_database_name("test"))
                )
            return configs[kind]

        yield get


async def _empty_tables(backend: DatabaseBackend) -> None:
    assert backend._engine is not None
    async with backend._engine.connect() as connection:
        await connection.execute(delete(task_results))
        await connection.execute(delete(worker_heartbeats))


@asynccontextmanager
async def _sql_backends(
    kind: str, sql_databases: Callable[[str], SQLBackendConfig]
) -> AsyncIterator[MakeBackend]:
    opened: list[Backend] = []

    async def make(**overrides: Any) -> Backend:
        config = sql_databases(kind).model_copy(update=overrides)
        backend = DatabaseBackend(config)
        await backend.connect()
        if not opened:
            await _empty_tables(backend)
        opened.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in opened:
            await backend.disconnect()


@pytest.fixture(params=CONTRACT_KINDS)
async def make_backend(
    request: pytest.FixtureRequest, sql_databases: Callable[[str], SQLBackendConfig]
) -> AsyncIterator[MakeBackend]:
    """Connected backends of one kind, with config overrides; all start from empty storage."""
    kind: str = request.param
    factory = redis_backends(kind) if kind in REDIS_MODES else _sql_backends(kind, sql_databases)
    async with factory as make:
        yield make


@pytest.fixture
async def backend(make_backend: MakeBackend) -> Backend:
    return await make_backend()


@pytest.fixture(params=SQL_KINDS)
async def make_sql_backend(
    request: pytest.FixtureRequest, sql_databases: Callable[[str], SQLBackendConfig]
) -> AsyncIterator[MakeBackend]:
    """Like make_backend, for the tests of what only the SQL backends promise."""
    async with _sql_backends(request.param, sql_databases) as make:
        yield make


@pytest.fixture
async def sql_backend(make_sql_backend: MakeBackend) -> Backend:
    return await make_sql_backend()


# -- the Redis modes, for the Redis-only test modules ---------------------------------


@pytest.fixture(params=REDIS_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each Redis mode; the session fixtures own (and finally stop) the servers it starts."""
    if request.param == "redis-sentinel":
        request.getfixturevalue("redis_sentinel")
    elif request.param == "redis-cluster":
        request.getfixturevalue("redis_cluster")
    return str(request.param)


@pytest.fixture
async def make(mode: str) -> AsyncIterator[Callable[..., Awaitable[RedisBackend]]]:
    """RedisBackends of one mode sharing one fresh key prefix (a waiter and a writer see
    the same results); their keys are deleted afterwards."""
    async with redis_backends(mode) as factory:
        yield factory

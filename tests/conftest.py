"""Fixtures shared by the suite: one contract, every backend, real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack

import pytest

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.redis import RedisBackend
from tests.support.backends import MakeBackend, sql_backends
from tests.support.redis_servers import (  # noqa: F401  (session fixtures, found by name)
    REDIS_MODES,
    redis_backends,
    redis_cluster,
    redis_sentinel,
)
from tests.support.sql_databases import SQL_KINDS, migrated_database, run_database_name

CONTRACT_KINDS = (*SQL_KINDS, *REDIS_MODES)


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


@pytest.fixture(params=CONTRACT_KINDS)
async def make_backend(
    request: pytest.FixtureRequest, sql_databases: Callable[[str], SQLBackendConfig]
) -> AsyncIterator[MakeBackend]:
    """Connected backends of one kind, with config overrides; all start from empty storage."""
    kind: str = request.param
    factory = redis_backends(kind) if kind in REDIS_MODES else sql_backends(kind, sql_databases)
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
    async with sql_backends(request.param, sql_databases) as make:
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


# -- a marker per backend --------------------------------------------------------------

# What a parameter names, as the marker that selects it: `pytest -m postgres` runs every
# test of a PostgreSQL backend, whichever fixture or parametrize brought it in.
BACKEND_MARKERS = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "mysql": "mysql",
    "redis": "redis",
    "redis-sentinel": "redis",
    "redis-cluster": "redis",
}
TOPOLOGY_MARKERS = {"redis-sentinel": "sentinel", "redis-cluster": "cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the backends its parameters name (see BACKEND_MARKERS)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        for value in callspec.params.values():
            if isinstance(value, str) and value in BACKEND_MARKERS:
                item.add_marker(BACKEND_MARKERS[value])
                if value in TOPOLOGY_MARKERS:
                    item.add_marker(TOPOLOGY_MARKERS[value])

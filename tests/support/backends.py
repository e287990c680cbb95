"""Backends for the tests: the SQL ones on the session's migrated databases, emptied first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import delete

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.schema import task_results, worker_heartbeats

MakeBackend = Callable[..., Awaitable[Backend]]


async def _empty_tables(backend: DatabaseBackend) -> None:
    assert backend._engine is not None
    async with backend._engine.connect() as connection:
        await connection.execute(delete(task_results))
        await connection.execute(delete(worker_heartbeats))


@asynccontextmanager
async def sql_backends(
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

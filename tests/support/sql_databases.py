"""Fresh, migrated SQL databases for the test run, one per dialect."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from chicory_backends.config import (
    MySQLBackendConfig,
    PostgresBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, require

T = TypeVar("T")

SQL_KINDS = ("sqlite", "postgres", "mysql")


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even under a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _address(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 0


async def _drop_and_create(admin_url: str, name: str, *, create: bool) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    postgres = admin_url.startswith("postgresql")
    quoted = f'"{name}"' if postgres else f"`{name}`"
    try:
        async with engine.connect() as connection:
            force = " WITH (FORCE)" if postgres else ""
            await connection.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
            if create:
                await connection.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        await engine.dispose()


def run_database_name(purpose: str) -> str:
    """Unique per test process, so that concurrent runs never drop each other's data."""
    return f"chicory_{purpose}_{os.getpid()}"


async def recreate_database(admin_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``admin_url``; return its URL."""
    await _drop_and_create(admin_url, name, create=True)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(kind: str, name: str) -> None:
    if kind in ("postgres", "mysql"):
        admin = POSTGRES_ADMIN_URL if kind == "postgres" else MYSQL_ADMIN_URL
        run_blocking(_drop_and_create(admin, name, create=False))


def require_server(kind: str) -> None:
    if kind == "postgres":
        require("PostgreSQL", *_address(POSTGRES_ADMIN_URL))
    elif kind == "mysql":
        require("MariaDB/MySQL", *_address(MYSQL_ADMIN_URL))


def fresh_config(kind: str, database: str, **overrides: Any) -> SQLBackendConfig:
    """A config for a newly created, empty database of ``kind`` (no schema)."""
    require_server(kind)
    if kind == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="chicory-test-")) / f"{database}.db"
        return SQLiteBackendConfig(file_path=str(path), **overrides)
    admin = POSTGRES_ADMIN_URL if kind == "postgres" else MYSQL_ADMIN_URL
    url = run_blocking(recreate_database(admin, database))
    config_class = PostgresBackendConfig if kind == "postgres" else MySQLBackendConfig
    return config_class(url=url, **overrides)


@contextmanager
def migrated_database(kind: str, database: str) -> Iterator[SQLBackendConfig]:
    """A fresh database of ``kind`` at the schema head, for one test session."""
    from chicory_backends.sql.backend import DatabaseBackend

    config = fresh_config(kind, database, auto_migrate=True)

    async def migrate() -> None:
        async with DatabaseBackend(config):
            pass

    run_blocking(migrate())
    try:
        yield config.model_copy(update={"auto_migrate": False})
    finally:
        drop_database(kind, database)

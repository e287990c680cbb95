"""Where the servers are, the bench databases on them, and what machine this is."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from chicory_backends.config import (
    MySQLBackendConfig,
    PostgresBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)

KINDS = ("postgres", "mysql", "sqlite", "redis")
SQL_KINDS = ("postgres", "mysql", "sqlite")
LABELS = {"postgres": "PostgreSQL", "mysql": "MariaDB", "sqlite": "SQLite", "redis": "Redis"}

# Ours (and the raw driver, which writes our schema) live in chicory_bench; Chicory 0.1.0
# uses the very same table names (chicory_task_results, chicory_worker_heartbeats) with
# other columns, so its backend gets a database of its own.
OURS_DATABASE = "chicory_bench"
CHICORY_DATABASE = "chicory_bench_upstream"

# One pool size for all three implementations of a server backend (our defaults).
POOL_SIZE = 10
MAX_OVERFLOW = 10
# SQLAlchemy's own default for a file SQLite engine (ours does not size the SQLite pool).
SQLITE_POOL_SIZE = 5
SQLITE_MAX_OVERFLOW = 10
SQLITE_BUSY_TIMEOUT_MS = 5000


@dataclass
class Servers:
    postgres_url: URL  # admin URL (any database); the bench databases are made beside it
    mysql_url: URL
    redis_host: str
    redis_port: int
    redis_db: int  # ours and raw (distinct key prefixes)
    redis_chicory_db: int  # Chicory's fixed "chicory:*" keys, kept apart from ours
    _sqlite_dir: Path | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> Servers:
        env = os.environ.get
        return cls(
            postgres_url=make_url(
                env("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
            ),
            mysql_url=make_url(
                env("BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/mysql")
            ),
            redis_host=env("BENCH_REDIS_HOST", "127.0.0.1"),
            redis_port=int(env("BENCH_REDIS_PORT", "6379")),
            redis_db=int(env("BENCH_REDIS_DB", "15")),
            redis_chicory_db=int(env("BENCH_REDIS_CHICORY_DB", "14")),
        )

    def admin_url(self, kind: str) -> URL:
        return self.postgres_url if kind == "postgres" else self.mysql_url

    def database_url(self, kind: str, database: str, port: int | None = None) -> URL:
        url = self.admin_url(kind).set(database=database)
        return url.set(port=port) if port is not None else url

    def sqlite_path(self, name: str) -> Path:
        if self._sqlite_dir is None:  # made on first use, removed by remove_sqlite_dir
            self._sqlite_dir = Path(tempfile.mkdtemp(prefix="chicory-bench-"))
        return self._sqlite_dir / f"{name}.db"

    def remove_sqlite_dir(self) -> None:
        if self._sqlite_dir is not None:
            shutil.rmtree(self._sqlite_dir, ignore_errors=True)
            self._sqlite_dir = None


def remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def plain_url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def recreate_database(servers: Servers, kind: str, name: str, *, create: bool = True) -> None:
    """DROP (and CREATE) database ``name`` on the PostgreSQL or MariaDB server."""
    engine = create_async_engine(servers.admin_url(kind), isolation_level="AUTOCOMMIT")
    postgres = kind == "postgres"
    quoted = f'"{name}"' if postgres else f"`{name}`"
    try:
        async with engine.connect() as connection:
            force = " WITH (FORCE)" if postgres else ""
            await connection.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
            if create:
                await connection.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        await engine.dispose()


def ours_config(
    servers: Servers, kind: str, *, port: int | None = None, **overrides: Any
) -> SQLBackendConfig:
    """Our config for the bench database; ``port`` points it at a counting proxy."""
    if kind == "sqlite":
        return SQLiteBackendConfig(
            file_path=str(servers.sqlite_path(OURS_DATABASE)),
            busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
            **overrides,
        )
    url = plain_url(servers.database_url(kind, OURS_DATABASE, port))
    config_class = PostgresBackendConfig if kind == "postgres" else MySQLBackendConfig
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW}
    options.update(overrides)
    return config_class(url=SecretStr(url), **options)


async def migrate_ours(servers: Servers, kind: str) -> None:
    """Fresh database, then our Alembic migration through ``auto_migrate=True``."""
    await migrate_database(servers, kind, OURS_DATABASE)


async def migrate_database(servers: Servers, kind: str, name: str) -> None:
    """Database (or SQLite file) ``name`` made afresh and migrated to our schema head."""
    from chicory_backends.sql.backend import DatabaseBackend

    if kind == "sqlite":
        remove_sqlite_files(servers.sqlite_path(name))
        config: SQLBackendConfig = SQLiteBackendConfig(
            file_path=str(servers.sqlite_path(name)), auto_migrate=True
        )
    else:
        await recreate_database(servers, kind, name)
        url = plain_url(servers.database_url(kind, name))
        config_class = PostgresBackendConfig if kind == "postgres" else MySQLBackendConfig
        config = config_class(url=SecretStr(url), auto_migrate=True)
    async with DatabaseBackend(config):
        pass


def versions() -> dict[str, str]:
    found = {}
    for name in ("sqlalchemy", "asyncpg", "aiomysql", "aiosqlite", "redis", "chicory"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    import sqlite3

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite_library": sqlite3.sqlite_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": versions(),
    }


def log(message: str) -> None:
    """Progress on stderr: the tables go to stdout and the result files."""
    print(message, file=sys.stderr, flush=True)


def describe(error: BaseException) -> str:
    """One line for a failed cell or case: the error's type and first line."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]

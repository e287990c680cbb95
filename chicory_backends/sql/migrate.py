"""Schema revisions: check at connect(), upgrade in-process on request, one migrator at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chicory_backends.config import SQLBackendConfig
from chicory_backends.sql.dialects import statements_for

# Our own version table, so our revisions never mix with those of an application that
# keeps its own Alembic history in the same database.
VERSION_TABLE = "chicory_alembic_version"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """Migrations ship inside the wheel; in a source checkout they sit at the top level."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("chicory-backends migrations not found beside the package")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def current_revision(connection: AsyncConnection) -> str | None:
    """The database's schema revision, or None where our tables were never created."""
    try:
        result = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    except DBAPIError as error:
        if "version" in str(error.orig).lower() or "exist" in str(error.orig).lower():
            return None
        raise
    return result.scalar_one_or_none()


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the database's migration lock (an advisory/application lock, session-wide).

    Two deploys running at once: the first migrates, the second waits on the lock and
    then finds the version table already at head.
    """
    stmts = statements_for(connection.dialect)
    if stmts.lock_migrations:
        acquired = connection.exec_driver_sql(stmts.lock_migrations).scalar()
        connection.commit()
        if acquired == 0:  # GET_LOCK's answer when it timed out; the others raise or wait
            raise TimeoutError("timed out waiting for another migration to finish")
    try:
        yield
    finally:
        if stmts.unlock_migrations:
            connection.exec_driver_sql(stmts.unlock_migrations)
            connection.commit()


def _upgrade_on(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_in_process(config: SQLBackendConfig, engine: AsyncEngine) -> None:
    """What auto_migrate=True does at connect(): `alembic upgrade head` inside the loop.

    The backend's own engine runs in AUTOCOMMIT, which would split a migration into
    separate statements, so a transactional engine is made for it; only an in-memory
    SQLite database must be migrated on the one connection that holds it.
    """
    from chicory_backends.sql.engine import create_engine, is_memory_sqlite

    shared = is_memory_sqlite(engine.url.database)
    migrator = engine if shared else create_engine(config, autocommit=False)
    try:
        async with migrator.connect() as connection:
            await connection.run_sync(_upgrade_on)
    finally:
        if not shared:
            await migrator.dispose()

"""Alembic environment for chicory-backends.

The database is the one the library would use (CHICORY_BACKEND_TYPE and its
CHICORY_BACKEND_<TYPE>_* variables), unless ``-x url=...`` names another. When the
library upgrades in-process (auto_migrate), it hands its connection over in
``config.attributes["connection"]`` because an event loop is already running.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from sqlalchemy import Connection

from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import DriverNotInstalledError
from chicory_backends.factory import config_for, require_driver, sql_config_from_url
from chicory_backends.sql.adopt import ADOPTION_TABLE, inspect_layout
from chicory_backends.sql.engine import create_engine
from chicory_backends.sql.migrate import VERSION_TABLE, migration_lock
from chicory_backends.sql.schema import POSTGRESQL_ONLY_TABLES, metadata

config = context.config

# The alembic command line logs what it runs; inside the library (auto_migrate, the CLI)
# the application's own logging configuration stays untouched.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _backend_config() -> SQLBackendConfig:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if url:
        return sql_config_from_url(url)
    backend_config = config_for()
    if not isinstance(backend_config, SQLBackendConfig):
        raise SystemExit("alembic migrates SQL backends only: CHICORY_BACKEND_TYPE is redis")
    return backend_config


def _include_object(
    _object: object, name: str | None, type_: str, reflected: bool, _compare_to: object
) -> bool:
    """Leave the PostgreSQL-only tables (revision 0003's waiters) and the adoption marker
    (sql/adopt.py) out of autogenerate: they are not in the shared metadata, which
    describes the tables of every dialect."""
    return not (type_ == "table" and name in (*POSTGRESQL_ONLY_TABLES, ADOPTION_TABLE))


def _compare_type(
    _context: object,
    inspected: Any,
    metadata_column: Any,
    inspected_type: Any,
    metadata_type: Any,
) -> bool | None:
    """``state`` is VARCHAR(16) where we created the table and VARCHAR(50) where Chicory
    did (adopted in place, never rewritten): both hold every state. Anything else: the
    default comparison."""
    if metadata_column.name == "state" and isinstance(inspected_type, sa.String):
        return inspected_type.length not in (16, 50)
    if _ADOPTED and _kept_by_adoption(inspected_type, metadata_column):
        return False
    return None


# Whether the database's tables are Chicory's, adopted in place (sql/adopt.py); set for
# each online run. On MySQL/MariaDB those keep Chicory's column types, which a rewrite
# with writes locked out would be needed to change: DATETIME to the second, TEXT
# documents.
_ADOPTED = False


def _kept_by_adoption(inspected_type: Any, metadata_column: Any) -> bool:
    name = type(inspected_type).__name__.upper()
    if name == "DATETIME":
        return metadata_column.name in ("created_at", "updated_at", "expires_at")
    return name == "TEXT" and metadata_column.name in ("result_json", "heartbeat_json")


def _configure(**kwargs: object) -> None:
    # The CLI's progress lines: called after each revision is applied.
    if (on_version_apply := config.attributes.get("on_version_apply")) is not None:
        kwargs["on_version_apply"] = on_version_apply
    context.configure(
        target_metadata=metadata,
        include_object=_include_object,
        version_table=VERSION_TABLE,
        compare_type=_compare_type,
        render_as_batch=True,
        # Each revision commits on its own: the adoption's index builds on PostgreSQL run
        # CONCURRENTLY, outside any transaction, and must not find one holding locks.
        transaction_per_migration=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(url=_backend_config().sqlalchemy_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    global _ADOPTED  # env.py runs afresh for each alembic command
    with migration_lock(connection):
        _ADOPTED = inspect_layout(connection).adopted
        connection.commit()  # the migrations' transactions are Alembic's to begin
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


async def run_async() -> None:
    backend_config = _backend_config()
    try:
        require_driver(backend_config)
    except DriverNotInstalledError as error:
        if config.cmd_opts is None:  # called from Python: the caller gets our error
            raise
        raise SystemExit(f"alembic: {error}") from None  # the command line: one line
    engine = create_engine(backend_config, autocommit=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif (shared := config.attributes.get("connection")) is not None:
    run_on(shared)
else:
    asyncio.run(run_async())

"""From a config to one async engine, and from driver exceptions to ours.

What differs per driver (connect arguments, pragmas, TLS, error codes) is asked of the
driver object (drivers.py); this module holds what every engine shares.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    ChicoryBackendError,
    DatabaseError,
    PoolExhaustedError,
    SchemaNotReadyError,
)
from chicory_backends.sql.drivers import EngineArguments, driver_for, is_memory_sqlite
from chicory_backends.sql.schema import SCHEMA_REVISION

__all__ = ["create_engine", "is_memory_sqlite", "is_unreachable", "translate_error"]


def _pass_through(value: Any) -> Any:
    # The backend encodes and decodes JSON itself (strictly, once, with errors that name
    # the task); the JSON column only carries the text.
    return value


def create_engine(config: SQLBackendConfig, *, autocommit: bool = True) -> AsyncEngine:
    """The one engine a backend uses.

    AUTOCOMMIT: every backend operation is a single statement, so the driver needs no
    BEGIN/COMMIT around it and the pool no ROLLBACK when a connection comes back.
    No pre-ping either: a connection the server dropped is invalidated on first use and
    the operation retried once on a fresh one (see execution.Executor).
    """
    driver = driver_for(config)
    if driver.transaction_per_statement:
        autocommit = False
    arguments = EngineArguments(
        url=config.sqlalchemy_url(),
        options={
            "echo": config.echo,
            "json_serializer": _pass_through,
            "json_deserializer": _pass_through,
        },
    )
    if autocommit:
        arguments.options["isolation_level"] = "AUTOCOMMIT"
        arguments.options["pool_reset_on_return"] = None
        # Without it the driver's rollback() still runs when a connection is released,
        # and aiomysql sends that ROLLBACK to the server: a second round trip per call.
        arguments.options["skip_autocommit_rollback"] = True
    if not driver.single_connection:
        arguments.options.update(pool_options(config))
    driver.configure(arguments)
    if arguments.connect_args:
        arguments.options["connect_args"] = arguments.connect_args
    engine = create_async_engine(arguments.url, **arguments.options)
    driver.install(engine)
    return engine


def pool_options(config: SQLBackendConfig) -> dict[str, Any]:
    """A pool that never churns: every connection it opens stays until ``pool_recycle``.

    SQLAlchemy closes an overflow connection as soon as it comes back to a full pool, so
    a burst wider than ``pool_size`` (Chicory's worker runs 32 tasks at once) opened and
    closed connections at the rate of the bursts: a new server session for every second
    task. Here ``max_overflow`` only raises the ceiling: the pool holds up to
    ``pool_size + max_overflow`` connections, opened on demand and kept. Coalesced writes
    and reads (coalesce.py) keep the number a worker needs small, so the default ceiling
    of 10 serves any ``--concurrency``; size it per process (``--workers`` processes each
    have their own pool, plus one listening connection on PostgreSQL).
    """
    # LIFO: the connection used last goes out first, so a quiet process works on one warm
    # connection (its prepared statements and type codecs in place) and the others idle.
    return {
        "pool_size": config.pool_size + config.max_overflow,
        "max_overflow": 0,
        "pool_use_lifo": True,
        "pool_timeout": config.pool_timeout,
        "pool_recycle": config.pool_recycle,
    }


def translate_error(error: BaseException, config: SQLBackendConfig) -> ChicoryBackendError:
    """Our error for a driver or pool failure; its message never carries the password."""
    if isinstance(error, ChicoryBackendError):
        return error
    if isinstance(error, exc.TimeoutError):  # the pool's, not the server's
        return PoolExhaustedError(config.pool_size, config.max_overflow, config.pool_timeout)
    if is_unreachable(error, config):
        return BackendUnreachableError(config.address(), _reason(error))
    if isinstance(error, exc.ProgrammingError | exc.OperationalError) and _names_missing_table(
        error
    ):
        return SchemaNotReadyError(None, SCHEMA_REVISION)
    return DatabaseError(f"database error: {_reason(error)}")


def _names_missing_table(error: exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(
        hint in text
        for hint in ("no such table", "does not exist", "doesn't exist", "invalid object name")
    )


def is_unreachable(error: BaseException, config: SQLBackendConfig) -> bool:
    if isinstance(error, OSError | asyncio.TimeoutError | ConnectionError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated or driver_for(config).unreachable_code(error.orig):
            return True
        return isinstance(error, exc.OperationalError | exc.InterfaceError) and _looks_unreachable(
            error
        )
    return False


_UNREACHABLE_HINTS = (
    "connect",
    "refused",
    "closed",
    "lost connection",
    "gone away",
    "timeout",
    "timed out",
    "broken pipe",
    "reset by peer",
    "shutting down",
    "terminat",
    "unable to open",
)


def _looks_unreachable(error: exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(hint in text for hint in _UNREACHABLE_HINTS)


def _reason(error: BaseException) -> str:
    orig = error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    text = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__

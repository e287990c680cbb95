"""Running statements: on the pool, on a pooled driver connection, or on the held one.

Three ways, one error shape: every failure comes out as SQLAlchemy's DBAPIError with
``connection_invalidated`` set (and the connection discarded) when the server dropped
it, which the backend turns into ours and retries once on a fresh connection.

- ``on_pool``: through SQLAlchemy's Connection (SQL Server, PgBouncer, ``echo``, and the
  statements that are not hot);
- ``on_driver``: a pooled driver connection, SQLAlchemy's Connection skipped, all in one
  greenlet on the sync engine (the hot statements);
- ``HeldConnection``: one pooled connection kept checked out while writes keep coming,
  called straight from the event loop. The write coalescer sends one batch at a time, so
  one connection serves every write of a busy worker without the pool checkout, return
  and greenlet of each call: about half of a local write's client CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Engine, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from chicory_backends.sql.internals import adapted_error, greenlet_spawn

T = TypeVar("T")
Work = Callable[[Any], Awaitable[T]]  # given the driver's own connection


def on_pool(
    statement: Executable,
    params: Mapping[str, Any],
    fetch: bool,
    in_transaction: bool,
    engine: Engine,
    on_checkout: Callable[[], None],
) -> int | list[Any]:
    with engine.begin() if in_transaction else engine.connect() as connection:
        on_checkout()
        result: CursorResult[Any] = connection.execute(statement, params)
        return list(result.all()) if fetch else result.rowcount


def batch_on_pool(
    parts: list[tuple[Executable, list[dict[str, Any]]]],
    engine: Engine,
    on_checkout: Callable[[], None],
) -> None:
    with engine.begin() as connection:  # the driver's executemany, per statement
        on_checkout()
        for statement, rows in parts:
            connection.execute(statement, rows)


def on_driver(work: Work[T], sql: str, engine: Engine, on_checkout: Callable[[], None]) -> T:
    """``work(driver_connection)`` on a pooled connection, skipping SQLAlchemy's Connection
    (run in a greenlet); a call cancelled mid-statement (``command_timeout``) discards the
    connection, whose state is then unknown."""
    pooled = _checkout(engine)
    try:
        on_checkout()
        try:
            adapted = pooled.dbapi_connection
            assert adapted is not None
            outcome: T = adapted.run_async(work)
            return outcome
        except Exception as error:
            wrapped, dropped = driver_error(engine.dialect, pooled, sql, error)
            if dropped:
                pooled.invalidate(wrapped.orig)
            raise wrapped from error
        except BaseException:
            pooled.invalidate()
            raise
    finally:
        pooled.close()


def _checkout(engine: Engine) -> PoolProxiedConnection:
    dialect = engine.dialect
    try:
        return engine.raw_connection()
    except dialect.loaded_dbapi.Error as error:
        raise DBAPIError.instance(
            None, None, error, dialect.loaded_dbapi.Error, hide_parameters=True,
            connection_invalidated=dialect.is_disconnect(error, None, None), dialect=dialect,
        ) from error  # fmt: skip


def driver_error(
    dialect: Dialect, pooled: PoolProxiedConnection, sql: str, error: Exception
) -> tuple[StatementError, bool]:
    """A raw driver exception as SQLAlchemy would have raised it, and whether the server
    dropped the connection."""
    orig = adapted_error(pooled.dbapi_connection, error)
    if isinstance(orig, dialect.loaded_dbapi.Error):
        dropped = dialect.is_disconnect(orig, pooled.dbapi_connection, None)
        wrapped = DBAPIError.instance(
            sql, None, orig, dialect.loaded_dbapi.Error,
            hide_parameters=True, connection_invalidated=dropped, dialect=dialect,
        )  # fmt: skip
        return wrapped, dropped
    dropped = isinstance(orig, OSError)
    return DBAPIError(
        sql, None, orig, hide_parameters=True, connection_invalidated=dropped
    ), dropped


class HeldConnection:
    """One pooled connection for one caller at a time (the write coalescer), kept while
    it is used and returned to the pool after ``idle`` seconds without use.

    ``run`` has the same errors as ``on_driver``; the backend's retry and timeout apply
    (``start_clock`` is called once the connection is in hand).
    """

    def __init__(self, engine: AsyncEngine, idle: float = 0.5) -> None:
        self._engine = engine.sync_engine
        self._idle = idle
        self._pooled: PoolProxiedConnection | None = None
        self._last_used = 0.0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def run(self, work: Work[T], sql: str, start_clock: Callable[[], None]) -> T:
        if self._busy:  # the coalescer sends one write batch at a time
            raise RuntimeError("HeldConnection serves one caller at a time")
        self._busy = True
        try:
            loop = asyncio.get_running_loop()
            pooled = self._pooled
            if pooled is None:
                pooled = self._pooled = await greenlet_spawn(_checkout, self._engine)
                if self._timer is None:
                    self._timer = loop.call_later(self._idle, self._maybe_release)
            start_clock()
            try:
                return await work(pooled.driver_connection)
            except Exception as error:
                wrapped, dropped = driver_error(self._engine.dialect, pooled, sql, error)
                if dropped:
                    await self._discard(pooled, wrapped.orig)
                raise wrapped from error
            except BaseException:  # cancelled mid-statement: the connection's state is unknown
                await asyncio.shield(self._discard(pooled, None))
                raise
        finally:
            self._busy = False
            self._last_used = asyncio.get_running_loop().time()

    async def release(self) -> None:
        """Give the connection back to the pool (the backend drained its writes and
        disconnects, or a test wants every statement to go through a fresh checkout)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            await greenlet_spawn(pooled.close)

    async def _discard(self, pooled: PoolProxiedConnection, error: BaseException | None) -> None:
        if self._pooled is pooled:
            self._pooled = None
        await greenlet_spawn(_invalidate, pooled, error)

    def _maybe_release(self) -> None:
        """Idle for ``idle`` seconds: back to the pool; else look again when it could be."""
        self._timer = None
        if self._pooled is None:
            return
        loop = asyncio.get_running_loop()
        unused = loop.time() - self._last_used
        if self._busy or unused < self._idle:
            self._timer = loop.call_later(max(self._idle - unused, 0.01), self._maybe_release)
            return
        pooled, self._pooled = self._pooled, None  # detached now: the next run checks out
        task = loop.create_task(greenlet_spawn(pooled.close))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)


def _invalidate(pooled: PoolProxiedConnection, error: BaseException | None) -> None:
    pooled.invalidate(error)
    pooled.close()

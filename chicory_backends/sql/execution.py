"""Running statements: ``Executor``, the one way the backend runs one, and its paths.

The paths: through SQLAlchemy's Connection, on a pooled driver connection, or on the held
one. One error shape: every failure comes out as SQLAlchemy's DBAPIError with
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
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Engine, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from chicory_backends.sql.drivers import Driver
from chicory_backends.sql.internals import adapted_error, greenlet_spawn
from chicory_backends.sql.statements import NamedStatement, Runnable, executable_of

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


class CommandDeadline:
    """``command_timeout`` for one attempt, counted from the moment a connection is in
    hand (``start``): waiting in the pool's queue is ``pool_timeout``'s business."""

    __slots__ = ("_loop", "_scope", "_seconds")

    def __init__(self, scope: asyncio.Timeout, seconds: float) -> None:
        self._scope = scope
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._scope.reschedule(self._loop.time() + self._seconds)


# One attempt of a call on one of the paths below, given its deadline.
Attempt = Callable[[CommandDeadline], Awaitable[T]]


class Executor:
    """The one way a backend runs a statement.

    A named statement compiled for the driver (statements.py) runs on the driver
    connection, any other through SQLAlchemy's Connection; a write batch runs on the held
    connection where there is one (``hold_writes``). Whatever the path, the call gets the
    same errors (SQLAlchemy's, turned into ours by ``errors_of``), one retry on a fresh
    connection when the server dropped the one in use, and ``command_timeout``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        driver: Driver,
        command_timeout: float,
        errors_of: Callable[[BaseException], Exception],
        timed_out: Callable[[], Exception],
        hold_writes: bool,
    ) -> None:
        self._engine = engine.sync_engine
        self._driver = driver
        self._in_transaction = driver.transaction_per_statement
        self._command_timeout = command_timeout
        self._errors_of = errors_of
        self._timed_out = timed_out
        self._held = HeldConnection(engine) if hold_writes else None

    async def execute(self, statement: Runnable, params: Mapping[str, Any]) -> int:
        """Run ``statement`` once; the count of rows it changed."""
        result = await self._attempted(self._one(statement, params, fetch=False, held=False))
        assert isinstance(result, int)
        return result

    async def fetch(self, statement: Runnable, params: Mapping[str, Any]) -> list[Any]:
        """Run ``statement`` once; every row it returned."""
        result = await self._attempted(self._one(statement, params, fetch=True, held=False))
        assert isinstance(result, list)
        return result

    async def write(self, statement: NamedStatement, params: Mapping[str, Any]) -> None:
        """One write of the coalescer: on the held connection where there is one."""
        await self._attempted(self._one(statement, params, fetch=False, held=True))

    async def write_many(self, parts: list[tuple[NamedStatement, list[dict[str, Any]]]]) -> None:
        """Each statement once per row (a multi-row statement per part), in one
        transaction where the driver can (drivers.py)."""
        if any(statement.driver is None for statement, _rows in parts):
            sqlalchemy_parts = [(statement.statement, rows) for statement, rows in parts]
            await self._attempted(self._in_greenlet(partial(batch_on_pool, sqlalchemy_parts)))
            return
        driver = self._driver
        compiled = [
            (statement.driver, [statement.driver.arguments(row) for row in rows])
            for statement, rows in parts
            if statement.driver is not None
        ]

        def run(raw: Any) -> Awaitable[None]:
            return driver.run_many(raw, compiled)

        sql = "; ".join(statement.sql for statement, _ in compiled)
        await self._attempted(self._on_driver(run, sql, held=True))

    @property
    def holds_writes(self) -> bool:
        """Whether writes run on one held connection (not on an in-memory SQLite
        database, whose one connection is shared, nor off the fast path)."""
        return self._held is not None

    async def release_held(self) -> None:
        """Give the writes' held connection back to the pool (at disconnect; a test that
        wants every statement on a fresh checkout)."""
        if self._held is not None:
            await self._held.release()

    def _one(
        self, statement: Runnable, params: Mapping[str, Any], *, fetch: bool, held: bool
    ) -> Attempt[int | list[Any]]:
        fast = statement.driver if isinstance(statement, NamedStatement) else None
        if fast is None:
            job = partial(on_pool, executable_of(statement), params, fetch, self._in_transaction)
            return self._in_greenlet(job)
        args = fast.arguments(params)
        driver = self._driver

        def run(raw: Any) -> Awaitable[int | list[Any]]:
            return driver.run(raw, fast, args, fetch)

        return self._on_driver(run, fast.sql, held)

    def _in_greenlet(self, job: Callable[[Engine, Callable[[], None]], T]) -> Attempt[T]:
        """``job(engine, start)`` in one greenlet on the sync engine: the whole
        checkout-execute-return of one call, where the AsyncConnection wrappers would cost
        a greenlet switch each for connect, execute, fetch and close."""
        engine = self._engine
        return lambda deadline: greenlet_spawn(job, engine, deadline.start)

    def _on_driver(self, work: Work[T], sql: str, held: bool) -> Attempt[T]:
        connection = self._held if held else None
        if connection is not None:
            return lambda deadline: connection.run(work, sql, deadline.start)
        return self._in_greenlet(partial(on_driver, work, sql))

    async def _attempted(self, attempt: Attempt[T]) -> T:
        """``attempt``, with our errors, one retry and ``command_timeout``.

        A connection the server dropped (restart, failover, idle timeout) is found on use
        rather than by a pre-ping on every checkout; every statement here is idempotent, so
        it is retried once on a fresh connection. A server that stops answering (a hung
        host, a partition) is given ``command_timeout`` from the moment a connection is
        in hand; the connection is then discarded.
        """
        for try_number in (1, 2):
            try:
                async with asyncio.timeout(None) as scope:
                    return await attempt(CommandDeadline(scope, self._command_timeout))
            except TimeoutError:
                raise self._timed_out() from None
            except (SQLAlchemyError, OSError) as error:
                stale = isinstance(error, DBAPIError) and error.connection_invalidated
                if try_number == 1 and stale:
                    continue
                raise self._errors_of(error) from None
        raise AssertionError("unreachable")

"""DatabaseBackend: the contract over one SQLAlchemy Core async engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from chicory_backends import coalesce
from chicory_backends.base import Backend, check_heartbeat_ttl
from chicory_backends.chicory_format import decode_chicory_result, encode_chicory_result
from chicory_backends.coalesce import Coalescer
from chicory_backends.codec import (
    build_result,
    check_task_id,
    check_text,
    decode_stats,
    encode_stats,
    encode_value,
    record_from_row,
)
from chicory_backends.config import PostgresBackendConfig, SQLBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    CorruptResultError,
    DatabaseError,
    NotConnectedError,
)
from chicory_backends.history import (
    HistoryQuery,
    Position,
    Spread,
    encode_cursor,
    name_order,
    summary_of,
    write_fields,
)
from chicory_backends.sql import maintenance
from chicory_backends.sql.dialects import (
    CHICORY_DOCUMENT_MAX_BYTES,
    PAGE_COLUMNS,
    PAGE_FILTERS,
    RECORD_COLUMNS,
    Statements,
    batch_arrays,
    history_page,
    statements_for,
)
from chicory_backends.sql.drivers import Driver, driver_for
from chicory_backends.sql.engine import create_engine, translate_error
from chicory_backends.sql.execution import Executor
from chicory_backends.sql.maintenance import Progress
from chicory_backends.sql.migrate import current_revision, schema_problem, upgrade_in_process
from chicory_backends.sql.notify import WaiterRegistry, connect_listener
from chicory_backends.sql.statements import NamedStatement, Runnable
from chicory_backends.types import (
    BackendStatus,
    ProgressUpdate,
    QueueStatus,
    TaskDetails,
    TaskPage,
    TaskProgress,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    WorkerStats,
    WriteKind,
)
from chicory_backends.waiting import (
    RECHECK_INTERVAL,
    SWITCH_RECHECK_INTERVAL,
    Listener,
    wait_for,
    woken_reads,
)

# A write as the coalescer carries it: its kind, its single-row statement and its
# parameters.
Write = tuple[WriteKind, NamedStatement, dict[str, Any]]


def _row_may_be_at_fault(error: BaseException) -> bool:
    """A batch refused by the server (not lost with it) may be one row's fault."""
    return isinstance(error, DatabaseError | CorruptResultError)


class DatabaseBackend(Backend):
    """Results and heartbeats in PostgreSQL, MySQL/MariaDB, SQLite or SQL Server.

    Every operation is one statement; writes are upserts with the terminal-state guard
    inside, so concurrent writers of one task id never collide. Concurrent ``set_state``
    / ``store_result`` calls go to the server as one multi-row upsert, and concurrent
    ``get_result`` calls as one ``IN``/``ANY`` read (see coalesce.py); a lone call is sent
    at once.
    """

    def __init__(self, config: SQLBackendConfig) -> None:
        self.config = config
        self._engine: AsyncEngine | None = None
        self._statements: Statements | None = None
        self._ttl = timedelta(seconds=config.result_ttl) if config.result_ttl else None
        self._driver: Driver = driver_for(config)
        self._executor: Executor | None = None  # made at connect (execution.py)
        self._chicory_document_limit: int | None = None
        if config.write_chicory_format:  # Chicory's own workers store without a wake-up
            self.recheck_interval = SWITCH_RECHECK_INTERVAL
        self._connecting = asyncio.Lock()
        self._write_calls: Coalescer[Write, None] = coalesce.writes(
            self._write_one, self._write_batch, _row_may_be_at_fault
        )
        # Looked up at each call, so a wrapped get_results (a test's, a tracer's) sees them.
        self._woken_read = woken_reads(lambda task_ids: self.get_results(task_ids))
        self._read_calls: Coalescer[str, TaskResult | None] = coalesce.reads(
            self._read_one, self._read_batch, _row_may_be_at_fault
        )

    def __repr__(self) -> str:
        state = "connected" if self._engine else "not connected"
        return f"<{type(self).__name__} {self.config.sqlalchemy_url()!r} {state}>"

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        async with self._connecting:  # callers racing here share one engine
            if self._engine is None:
                await self._connect()

    async def _connect(self) -> None:
        engine = create_engine(self.config)
        try:
            if self.config.auto_migrate:
                await upgrade_in_process(self.config, engine)
            async with engine.connect() as connection:
                found = await current_revision(connection)
                problem = await connection.run_sync(schema_problem, found)
        except Exception as error:
            await engine.dispose()
            raise translate_error(error, self.config) from None
        if problem is not None:
            await engine.dispose()
            raise problem
        statements = statements_for(engine.dialect, self.config.cleanup_batch_size)
        self._statements = self._compiled(statements, engine.dialect)
        fast = self._uses_fast_path()
        self._executor = Executor(
            engine,
            self._driver,
            self.config.command_timeout,
            errors_of=lambda error: translate_error(error, self.config),
            timed_out=self._timed_out,
            hold_writes=fast and not self._driver.single_connection,
        )
        self._chicory_document_limit = CHICORY_DOCUMENT_MAX_BYTES.get(engine.dialect.name)
        self._engine = engine

    async def disconnect(self) -> None:
        await self._write_calls.drain()  # what was acknowledged-to-be is written first
        await self._read_calls.drain()
        executor, self._executor = self._executor, None
        if executor is not None:
            await executor.release_held()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    # -- results ---------------------------------------------------------------------

    async def set_state(
        self, task_id: str, state: TaskState, details: TaskDetails | None = None
    ) -> None:
        stmts = self._require()
        now = _utcnow()
        state = TaskState(state)
        params = {
            "task_id": check_task_id(task_id),
            "state": state.value,
            "created_at": now,
            "updated_at": now,
            "expires_at": self._expiry(now),
            **write_fields(task_id, state, details, now),
        }
        await self._write_calls.submit(None, task_id, (WriteKind.STATE, stmts.set_state, params))

    async def store_result(
        self, task_id: str, result: TaskResult, details: TaskDetails | None = None
    ) -> None:
        stmts = self._require()
        check_task_id(task_id)
        now = _utcnow()
        state = TaskState(result.state)
        value = encode_value(task_id, result.result, self.config.max_result_bytes)
        error = check_text(task_id, "error", result.error)
        traceback = check_text(task_id, "traceback", result.traceback)
        params = {
            "task_id": task_id,
            "state": state.value,
            "result": value,
            "error": error,
            "traceback": traceback,
            "result_json": self._chicory_document(task_id, state, value, error, traceback),
            "created_at": now,
            "updated_at": now,
            "expires_at": self._expiry(now),
            **write_fields(task_id, state, details, now),
        }
        size = sum(len(text) for text in (value, error, traceback) if text)
        write = (WriteKind.RESULT, stmts.store_result, params)
        await self._write_calls.submit(None, task_id, write, size)

    async def get_result(self, task_id: str) -> TaskResult | None:
        self._require()
        return await self._read_calls.submit(None, check_task_id(task_id), task_id)

    async def _write_one(self, _group: Hashable, write: Write) -> None:
        _kind, statement, params = write
        await self._executor_or_raise().write(statement, params)

    async def _write_batch(self, _group: Hashable, writes: list[Write]) -> list[None]:
        """Writes of distinct task ids, both kinds: one statement where the dialect has
        one for both (PostgreSQL), else one multi-row statement per kind, in one
        transaction where the driver can."""
        stmts = self._require()
        executor = self._executor_or_raise()
        by_kind: dict[WriteKind, list[dict[str, Any]]] = {}
        statements: dict[WriteKind, NamedStatement] = {}
        for kind, statement, params in writes:
            by_kind.setdefault(kind, []).append(params)
            statements[kind] = statement
        if stmts.store_batch is not None and stmts.store_batch.driver is not None:
            await executor.write(stmts.store_batch, batch_arrays(by_kind))
        else:
            await executor.write_many([(statements[kind], rows) for kind, rows in by_kind.items()])
        return [None] * len(writes)

    async def _read_one(self, _group: Hashable, task_id: str) -> TaskResult | None:
        stmts = self._require()
        rows = await self._fetch(stmts.get_result, {"task_id": task_id, "now": _utcnow()})
        return _result_of(rows[0]) if rows else None

    async def _read_batch(self, _group: Hashable, task_ids: list[str]) -> list[TaskResult | None]:
        found = await self.get_results(task_ids)
        return [found.get(task_id) for task_id in task_ids]

    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        stmts = self._require()
        wanted = list(dict.fromkeys(check_task_id(task_id) for task_id in task_ids))
        if not wanted:
            return {}
        rows = await self._fetch(stmts.get_results, {"task_ids": wanted, "now": _utcnow()})
        return {row[0]: _result_of(row) for row in rows}

    async def delete_result(self, task_id: str) -> None:
        stmts = self._require()
        await self._execute(stmts.delete_result, {"task_id": check_task_id(task_id)})

    # -- history ---------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord | None:
        stmts = self._require()
        rows = await self._fetch(
            stmts.get_task, {"task_id": check_task_id(task_id), "now": _utcnow()}
        )
        return _record_of(RECORD_COLUMNS, rows[0]) if rows else None

    async def query_tasks(self, query: HistoryQuery) -> TaskPage:
        """One statement through an index (sql/schema.py HISTORY_INDEXES): the filters
        given, rows after the cursor in (created_at, task_id) order, ``limit + 1`` rows to
        know whether another page follows."""
        stmts = self._require()
        filters = (query.state, query.name, query.worker_id)
        shape = (*(value is not None for value in filters), query.after is not None)
        params: dict[str, Any] = {
            "now": _utcnow(),
            **self._window(query.since, query.until),
            "limit": query.limit + 1,
            **{key: value for key, value in zip(PAGE_FILTERS, filters, strict=True) if value},
        }
        if query.after is not None:
            params["after_created_at"] = query.after.created_at
            params["after_task_id"] = query.after.task_id
        rows = await self._fetch(history_page(stmts, shape), params)
        items = [_record_of(PAGE_COLUMNS, row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        last = items[-1] if more else None
        return TaskPage(
            items=items,
            next_cursor=None
            if last is None
            else encode_cursor(Position(last.created_at, last.task_id)),
        )

    # -- issue 23: placeholders until the queue views land (replaced, not kept) ---------

    async def queue_status(self) -> list[QueueStatus]:
        raise NotImplementedError("queue_status: issue 23 in progress")

    async def orphaned_tasks(self, limit: int) -> list[TaskRecord]:
        raise NotImplementedError("orphaned_tasks: issue 23 in progress")

    async def fail_orphan(self, task_id: str, worker_id: str) -> bool:
        raise NotImplementedError("fail_orphan: issue 23 in progress")

    async def store_progress(self, task_id: str, update: ProgressUpdate) -> bool:
        raise NotImplementedError("store_progress: issue 23 in progress")

    async def get_progress(self, task_id: str) -> TaskProgress | None:
        raise NotImplementedError("get_progress: issue 23 in progress")

    async def summarize_tasks(
        self, since: datetime | None, until: datetime | None
    ) -> list[TaskSummary]:
        """Two statements: counts per name and state, and the runtimes at the
        percentiles' nearest ranks (window functions), both over ``[since, until)``."""
        stmts = self._require()
        params = {"now": _utcnow(), **self._window(since, until)}
        counts = await self._fetch(stmts.summary_counts, params)
        ranked = await self._fetch(stmts.summary_runtimes, params)
        states: dict[str | None, dict[TaskState, int]] = {}
        for name, state, count in counts:
            states.setdefault(name, {})[TaskState(state)] = int(count)
        marks: dict[str | None, dict[int, float]] = {}
        sizes: dict[str | None, int] = {}
        for name, rank, count, runtime in ranked:
            marks.setdefault(name, {})[int(rank)] = max(0.0, float(runtime))
            sizes[name] = int(count)
        return [
            summary_of(name, states[name], Spread.at_ranks(marks.get(name, {}), sizes.get(name, 0)))
            for name in sorted(states, key=name_order)
        ]

    @staticmethod
    def _window(since: datetime | None, until: datetime | None) -> dict[str, datetime]:
        # Always bound: one statement shape whether or not a bound was given.
        return {"since": since or WINDOW_START, "until": until or WINDOW_END}

    async def cleanup_old_results(
        self, older_than_seconds: float = 86400, *, progress: Progress | None = None
    ) -> int:
        """Delete expired results and those untouched for ``older_than_seconds``.

        Works on a backend that was never connected (the cron line), deletes in bounded
        batches, each its own short statement through an index, and returns the total;
        ``progress`` is told the running total after each batch (the CLI's live line).
        """
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must not be negative")
        async with self._connected_for_maintenance():
            return await maintenance.cleanup(
                self._execute,
                self._require(),
                _utcnow(),
                older_than_seconds,
                self.config.cleanup_batch_size,
                progress,
            )

    async def count_reclaimable(self, older_than_seconds: float = 86400) -> int:
        """What ``cleanup_old_results(older_than_seconds)`` would delete now."""
        async with self._connected_for_maintenance():
            return await maintenance.count_reclaimable(
                self._fetch, self._require(), _utcnow(), older_than_seconds
            )

    async def result_stats(self) -> maintenance.ResultStats:
        """Results per state, how many expired but not yet reclaimed, oldest and newest."""
        async with self._connected_for_maintenance():
            return await maintenance.result_stats(self._fetch, self._require(), _utcnow())

    # -- heartbeats ------------------------------------------------------------------

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        check_heartbeat_ttl(ttl)
        stmts = self._require()
        now = _utcnow()
        worker_id = check_task_id(worker_id)
        encoded = encode_stats(stats)
        await self._execute(
            stmts.store_heartbeat,
            {
                "worker_id": worker_id,
                "stats": encoded,
                "updated_at": now,
                "expires_at": now + timedelta(seconds=ttl),
                "heartbeat_json": encoded if self.config.write_chicory_format else None,
            },
        )

    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None:
        stmts = self._require()
        rows = await self._fetch(
            stmts.get_heartbeat, {"worker_id": check_task_id(worker_id), "now": _utcnow()}
        )
        return _stats_of(rows[0]) if rows else None

    async def get_active_workers(self) -> list[WorkerStats]:
        stmts = self._require()
        rows = await self._fetch(stmts.get_active_workers, {"now": _utcnow()})
        return [_stats_of(row) for row in rows]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        async with self._connected_for_maintenance():
            stmts = self._require()
            now = _utcnow()
            cutoff = now - timedelta(seconds=stale_seconds)
            deleted = await maintenance.delete_in_batches(
                self._execute, stmts.delete_stale_heartbeats, cutoff, self.config.cleanup_batch_size
            )
            await self._delete_stale_waiters(now)  # not counted: heartbeats are the clients
            return deleted

    async def healthcheck(self) -> BackendStatus:
        if self._engine is None:
            return BackendStatus(connected=False, error="not connected")
        started = time.perf_counter()
        try:
            await self._fetch(text("SELECT 1"), {})
        except Exception as error:
            return BackendStatus(connected=False, error=str(error))
        return BackendStatus(
            connected=True, latency_ms=round((time.perf_counter() - started) * 1000, 3)
        )

    # -- waiting for results ---------------------------------------------------------

    # Made at the first wait on PostgreSQL, closed at disconnect().
    _listener: Listener | None = None
    _waiters: WaiterRegistry | None = None
    # While listening, a waiter still re-reads this often (give or take 10%), in case its
    # notification never comes (its registration row was cleaned up, say).
    recheck_interval: float = RECHECK_INTERVAL

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        """On PostgreSQL, woken by the NOTIFY that the trigger (revisions 0002, 0003) sends
        with a terminal store of a task id registered as waited for (see sql/notify.py); on
        the other dialects, and behind PgBouncer, which cannot carry LISTEN, the contract's
        polling."""
        listener = self._result_listener()
        if listener is None or self._waiters is None:
            return await super().wait_for_result(task_id, timeout)
        return await wait_for(
            listener,
            check_task_id(task_id),
            self._woken_read,
            timeout,
            hold=self._waiters.held,
            renew=self._waiters.renew,
            recheck_interval=self.recheck_interval,
        )

    def _result_listener(self) -> Listener | None:
        """This backend's one LISTEN session holder, or None where NOTIFY is not used."""
        stmts = self._require()
        config = self.config
        if (
            stmts.register_waiters is None  # no waiter registry: not PostgreSQL
            or not self._driver.listens
            or not isinstance(config, PostgresBackendConfig)
        ):
            return None
        if self._listener is None or self._listener.closed:
            self._listener = Listener(
                lambda on_message, on_lost: connect_listener(config, on_message, on_lost),
                backend_name=type(self).__name__,
                ping_timeout=config.connect_timeout,
            )
        if self._waiters is None:
            # Registrations are rows, not session state: they outlive a lost listening
            # connection, and one registry (one token) serves the backend's lifetime. Its
            # statements run on the ordinary pool.
            register, unregister, fence = (
                stmts.register_waiters, stmts.unregister_waiters, stmts.await_writers
            )  # fmt: skip
            assert unregister is not None and fence is not None
            self._waiters = WaiterRegistry(
                lambda ids, token: self._execute(register, {"task_ids": ids, "waiter": token}),
                lambda ids, token: self._execute(unregister, {"task_ids": ids, "waiter": token}),
                lambda ids: self._fetch(fence, {"task_ids": ids}),
            )
        return self._listener

    async def _delete_stale_waiters(self, now: datetime) -> None:
        """Registrations left by a process that died while waiting only cost needless
        NOTIFYs; ``cleanup_stale_clients`` deletes those older than STALE_WAITER_AGE (a
        live wait longer than that loses its push wake-up). PostgreSQL only: the table
        exists nowhere else."""
        statement = self._require().delete_stale_waiters
        if statement is not None:
            await self._execute(statement, {"cutoff": now - STALE_WAITER_AGE})

    # -- plumbing --------------------------------------------------------------------

    def _require(self) -> Statements:
        if self._statements is None or self._engine is None:
            raise NotConnectedError(type(self).__name__)
        return self._statements

    def _chicory_document(
        self, task_id: str, state: TaskState, value: str | None, error: str | None, tb: str | None
    ) -> str | None:
        """What a store writes into Chicory's ``result_json``: nothing, unless
        ``write_chicory_format`` asks for its document (and the column can hold it)."""
        if not self.config.write_chicory_format:
            return None
        document = encode_chicory_result(task_id, state, value, error, tb)
        limit = self._chicory_document_limit
        if limit is not None and len(document.encode()) > limit:
            return None
        return document

    def _uses_fast_path(self) -> bool:
        """Whether the hot statements skip SQLAlchemy's Connection: not behind PgBouncer (a
        transaction around each statement), not with ``echo`` (SQLAlchemy logs the SQL),
        and only on drivers the fast path calls."""
        driver = self._driver
        return driver.fast_path and not driver.transaction_per_statement and not self.config.echo

    def _compiled(self, statements: Statements, dialect: Dialect) -> Statements:
        """``statements`` with the hot ones compiled for the driver where it applies."""
        return statements.for_driver(dialect) if self._uses_fast_path() else statements

    def _executor_or_raise(self) -> Executor:
        if self._executor is None:
            raise NotConnectedError(type(self).__name__)
        return self._executor

    def _timed_out(self) -> BackendUnreachableError:
        timeout = self.config.command_timeout
        return BackendUnreachableError(
            self.config.address(), f"no answer within command_timeout={timeout:g}s"
        )

    def _expiry(self, now: datetime) -> datetime | None:
        return now + self._ttl if self._ttl else None

    async def _execute(self, statement: Runnable, params: Mapping[str, Any]) -> int:
        return await self._executor_or_raise().execute(statement, params)

    async def _fetch(self, statement: Runnable, params: Mapping[str, Any]) -> list[Any]:
        return await self._executor_or_raise().fetch(statement, params)

    def _connected_for_maintenance(self) -> _MaybeConnected:
        return _MaybeConnected(self)


class _MaybeConnected:
    """Connects for one maintenance call when the backend was never connected (cron)."""

    def __init__(self, backend: DatabaseBackend) -> None:
        self._backend = backend
        self._opened = False

    async def __aenter__(self) -> None:
        if self._backend._engine is None:  # noqa: SLF001 - the backend's own helper
            await self._backend.connect()
            self._opened = True

    async def __aexit__(self, *exc_info: object) -> None:
        if self._opened:
            await self._backend.disconnect()


STALE_WAITER_AGE = timedelta(days=1)
# The bounds of an open time window: before and after any task (every dialect's range).
WINDOW_START = datetime(1970, 1, 1, tzinfo=UTC)
WINDOW_END = datetime(9999, 1, 1, tzinfo=UTC)


def _result_of(row: Sequence[Any]) -> TaskResult:
    """A result row: ``task_id, state, result, error, traceback, result_json``. A row that
    Chicory's own backend wrote (result_json set) is read from its document."""
    task_id, state, value, error, traceback, chicory_document = row
    if chicory_document is not None:
        return decode_chicory_result(task_id, chicory_document, state)
    return build_result(task_id, state, value, error, traceback)


def _record_of(columns: Sequence[str], row: Sequence[Any]) -> TaskRecord:
    """A history row whose last column is Chicory's document: where it is set, the
    record's result, error and traceback come from it (adopted rows have no history)."""
    record = record_from_row(columns[:-1], row[:-1])
    if row[-1] is not None:
        stored = decode_chicory_result(record.task_id, row[-1], record.state)
        whole = "result" in columns
        record = record.model_copy(
            update={"error": stored.error}
            | ({"result": stored.result, "traceback": stored.traceback} if whole else {})
        )
    return record


def _stats_of(row: Sequence[Any]) -> WorkerStats:
    """A heartbeat row, ``worker_id, stats, heartbeat_json``: ours, or Chicory's worker's."""
    worker_id, stats, chicory_heartbeat = row
    return decode_stats(worker_id, stats if stats is not None else chicory_heartbeat)


def _utcnow() -> datetime:
    return datetime.now(UTC)

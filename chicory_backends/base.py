"""The async contract every backend fulfils, named as in Chicory's own ``Backend``."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Self

from chicory_backends.codec import check_task_id
from chicory_backends.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    HistoryQuery,
    check_limit,
    check_progress_wait,
    check_window,
    is_news,
)
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
)


def check_heartbeat_ttl(ttl: int) -> None:
    """Refuse a heartbeat TTL under one second, the same on every backend.

    Redis cannot store a key that expires in 0 seconds, and SQL must not accept what Redis
    refuses.

    Raises:
        ValueError: ``ttl`` is less than 1.
    """
    if ttl < 1:
        raise ValueError(f"heartbeat ttl must be at least 1 second, not {ttl}")


class Backend(ABC):
    """Stores task states, results and worker heartbeats.

    Writes are atomic and idempotent: a non-terminal state (PENDING, STARTED, RETRY)
    never replaces a terminal one (SUCCESS, FAILURE, DEAD_LETTERED), and a write of an
    older attempt (``TaskDetails.attempt``) never replaces one of a newer attempt, so a
    late or duplicated delivery cannot undo a finished task or a retry's outcome. Both
    rules sit inside the one statement (or script) of each write. Concurrent writes of
    one task id through one backend object take effect in call order; concurrent calls
    may reach the server together as one batch (coalesce.py), and each call still
    returns or raises on its own.

    Errors (errors.py): no driver exception escapes. Arguments are checked before any
    I/O: ``InvalidTaskIdError`` (a ``ValueError``) for a task id, worker id, name or
    queue that is not a non-empty str of at most 255 characters without NUL or lone
    surrogates, and ``ValueError`` for other bad arguments. Every call that needs the
    server may raise ``NotConnectedError`` (before ``connect()`` or after ``disconnect()``),
    ``BackendUnreachableError`` (the server cannot be reached, or gave no answer within
    ``command_timeout`` on SQL, ``socket_timeout`` on Redis; it names where it tried,
    never the password), ``PoolExhaustedError`` (no connection free within ``pool_timeout``) or
    ``DatabaseError`` (the server refused the statement or command for another reason);
    on SQL also ``SchemaNotReadyError`` when a table is missing. A call on a connection
    the server dropped is retried on a fresh one (once on SQL) before
    ``BackendUnreachableError`` is raised. A write that
    raised may still have landed (the answer was lost on the way back); writes are
    idempotent, so sending it again is safe.
    """

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection pool and check the server; return once the backend is usable.

        Safe to call again and to race: concurrent calls share one pool, and on a
        connected backend it returns at once. A SQL backend checks the schema revision
        (after upgrading it when ``auto_migrate`` is set); Redis loads its store script.
        When it fails, nothing stays open and ``connect()`` may be called again.

        Raises:
            SchemaNotReadyError: SQL: the tables are missing, at another revision than
                this library's, Chicory's own, or not what the version table claims; the
                message names the command that fixes it.
            BackendUnreachableError: the server did not answer (within the connect
                timeout), refused the connection or is in recovery.
            DatabaseError: the server refused the check (a permission, an ACL).
            ConfigurationError: what only shows when connecting: MySQL TLS files that
                cannot be loaded, a Redis client that cannot be made.
        """

    @abstractmethod
    async def disconnect(self) -> None:
        """Finish the calls in flight, then close every connection of the backend.

        Writes and reads already submitted are sent and answered first (each caller
        gets its own outcome), then the listening connection of ``wait_for_result`` and
        the pool are closed. Calling it on a backend that is not connected does nothing;
        ``connect()`` may follow to use the backend again.
        """

    @abstractmethod
    async def set_state(
        self, task_id: str, state: TaskState, details: TaskDetails | None = None
    ) -> None:
        """Record that task ``task_id`` is now in ``state``, keeping its stored result.

        One atomic upsert (SQL statement, Redis script): the state and the history
        fields of ``details`` (name, queue, worker id, attempt, times; see TaskRecord)
        change together, and the stored result, error and traceback stay. Refused (and
        then nothing changes, without an error) when the stored state is terminal and
        ``state`` is not, or when the stored task is at a newer attempt than
        ``details.attempt`` (0 without details). A write that lands restarts the result's
        expiry (``result_ttl``). A terminal state wakes the ``wait_for_result`` callers of
        the task (or their next poll sees it). Returns once the server has committed the
        write (Redis: once the master ran it; see ``wait_replicas``).

        Raises:
            InvalidTaskIdError: ``task_id``, or the name, queue or worker id in
                ``details``, is not a valid id (before any I/O).
            ValueError: ``state`` is not a TaskState (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer; on
                Redis with ``wait_replicas``, also for a terminal state that fewer
                replicas than asked confirmed in time (it is stored on the master).
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the write.
        """

    @abstractmethod
    async def store_result(
        self, task_id: str, result: TaskResult, details: TaskDetails | None = None
    ) -> None:
        """Store the outcome of task ``task_id``: state, result, error and traceback.

        One atomic upsert (SQL statement, Redis script) of the whole outcome and the
        history fields of ``details``. The same guard as ``set_state``: a late
        non-terminal write never replaces a terminal one, and a write of an older attempt
        never replaces a newer one; a refused write changes nothing and raises nothing.
        A terminal result of the same or a newer attempt replaces whatever is stored,
        and wakes the task's ``wait_for_result`` callers (or their next poll sees it).
        ``result.result`` must read back unchanged from every backend (strict JSON:
        codec.py); this is checked, with ``max_result_bytes``, before any I/O, so a
        refused result writes nothing. Returns once the server has committed the write
        (Redis: once the master ran it; see ``wait_replicas``).

        Raises:
            InvalidTaskIdError: ``task_id``, or the name, queue or worker id in
                ``details``, is not a valid id (before any I/O).
            ResultNotSerializableError: the value is not portable JSON (NaN, bytes,
                sets, tuples, non-str keys, subclasses, NUL, lone surrogates, floats of
                1e16 or more, nesting over 31 levels), or the error or traceback text
                holds a NUL or a lone surrogate (before any I/O).
            ResultTooLargeError: the value's JSON is over ``max_result_bytes`` UTF-8
                bytes (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer; on
                Redis with ``wait_replicas``, also for a terminal result that fewer
                replicas than asked confirmed in time (it is stored on the master).
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the write.
        """

    @abstractmethod
    async def get_result(self, task_id: str) -> TaskResult | None:
        """The stored outcome of task ``task_id``, or None when there is none.

        None for a task never written, deleted, or whose result expired
        (``result_ttl``). A task only ``set_state`` wrote comes back with its state and
        no value. Concurrent calls are read together (one statement or MGET).

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            CorruptResultError: the stored data cannot be read back; names the task, so
                that ``delete_result`` can remove it.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    @abstractmethod
    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """Read many results at once; unknown or expired ids are absent.

        One statement on SQL; one MGET on a single Redis node or Sentinel (on Cluster
        one per hash slot, then one for Chicory's state keys of the tasks without a
        terminal document). Every id is checked before any I/O, and an id given twice
        is read once; an empty ``task_ids`` answers ``{}`` without I/O.

        Raises:
            InvalidTaskIdError: one of ``task_ids`` is not a valid id (before any I/O).
            CorruptResultError: one stored result cannot be read back (rather than
                leaving that task out); names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    @abstractmethod
    async def delete_result(self, task_id: str) -> None:
        """Delete what is stored of task ``task_id``: its state, result and history.

        Deleting a task that is not stored is not an error. This is also the way to
        remove a result that raised CorruptResultError.

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the delete.
        """

    # -- history (the record of each task: see TaskRecord) -------------------------------

    @abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The whole record of one task, with result, error, traceback and arguments.

        None when the task is not stored or its result expired.

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            CorruptResultError: the stored record cannot be read back; names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    async def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of the tasks matching every filter given, newest first.

        Ordered by ``created_at`` (then task id; on Redis Cluster by the time the task
        entered the history index, which can differ from it by moments), created in
        ``[since, until)``, at most
        ``limit`` (1 to 1000) per page. Pages are keyset pages: the ``next_cursor`` of
        one page starts the next (None on the last), stable while new tasks arrive. The
        records leave out result, traceback and arguments (``get_task`` has them).
        Expired results are not listed; on Redis the history reaches back over the
        newest ``history_size`` tasks only. Checks the arguments (``HistoryQuery``),
        then asks ``query_tasks``.

        Raises:
            ValueError: a bad argument, named in the message, before any I/O: an unknown
                state, a naive or misordered ``since``/``until``, a ``limit`` out of
                range, a cursor this method did not make; InvalidTaskIdError (a
                ValueError) for an invalid ``name`` or ``worker_id``.
            CorruptResultError: a listed record cannot be read back; names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """
        query = HistoryQuery.of(
            state=state,
            name=name,
            worker_id=worker_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        return await self.query_tasks(query)

    @abstractmethod
    async def query_tasks(self, query: HistoryQuery) -> TaskPage:
        """``list_tasks`` with its arguments checked: what each backend implements.

        Answers what ``list_tasks`` promises for ``query``, with the same errors but
        the ValueError: the arguments were checked.
        """

    async def task_summary(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[TaskSummary]:
        """One summary per task name of the tasks created in ``[since, until)``.

        Counts per state, failure rate and nearest-rank runtime percentiles (see
        TaskSummary), sorted by name with the unnamed tasks last. Expired results are
        not counted; on Redis only the newest ``history_size`` tasks are. Checks the
        window, then asks ``summarize_tasks``.

        Raises:
            ValueError: ``since`` or ``until`` is not a timezone-aware datetime, or
                ``since`` is after ``until`` (before any I/O).
            CorruptResultError: a record in the window cannot be read back.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """
        since, until = check_window(since, until)
        return await self.summarize_tasks(since, until)

    @abstractmethod
    async def summarize_tasks(
        self, since: datetime | None, until: datetime | None
    ) -> list[TaskSummary]:
        """``task_summary`` with its window checked (aware, UTC, in order).

        Answers what ``task_summary`` promises, with the same errors but the ValueError.
        """

    # -- the queue: backlog, lost workers, progress (issue 23) ----------------------------

    @abstractmethod
    async def queue_status(self) -> list[QueueStatus]:
        """Per queue, how many tasks are PENDING (enqueued, not started) and since when.

        One ``QueueStatus`` per queue with at least one PENDING task, sorted by queue
        name with the tasks recorded without a queue last; an empty list when nothing is
        pending. Only dispatches ``track(app)`` recorded are seen. Expired results are
        not counted; on Redis only the newest ``history_size`` tasks are.

        Raises:
            CorruptResultError: a PENDING record cannot be read back; names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    async def find_orphaned_tasks(self, *, limit: int = DEFAULT_PAGE_SIZE) -> list[TaskRecord]:
        """STARTED tasks whose worker was lost: its heartbeat expired or is gone.

        A task stays STARTED forever when its worker dies mid-run (SIGKILL, OOM, a lost
        node). Listed are the STARTED tasks with a recorded ``worker_id`` (``track(app)``
        records it) for which no live heartbeat exists, oldest start first, at most
        ``limit`` (1 to 1000), as ``list_tasks`` records them. A task whose worker
        heartbeats is never listed, however long it runs; a task recorded without a
        worker id cannot be judged and is never listed. On Redis only the newest
        ``history_size`` tasks are looked at.

        Raises:
            ValueError: ``limit`` is out of range (before any I/O).
            CorruptResultError: a record cannot be read back; names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """
        check_limit(limit)
        return await self.orphaned_tasks(limit)

    @abstractmethod
    async def orphaned_tasks(self, limit: int) -> list[TaskRecord]:
        """``find_orphaned_tasks`` with ``limit`` checked: what each backend implements."""

    async def fail_orphaned_tasks(
        self, task_ids: Iterable[str] | None = None, *, limit: int = MAX_PAGE_SIZE
    ) -> list[str]:
        """Mark orphaned tasks FAILURE, for a cleanup job; return the ids it marked.

        ``task_ids`` None takes what ``find_orphaned_tasks(limit=limit)`` lists. Each task
        is checked again inside its own write: it is marked only while it is still
        STARTED by the same worker and that worker has no live heartbeat, so a task
        whose worker came back, that finished meanwhile, or that another worker took
        over is left as it is (and not returned). A marked task gets ``error``
        ``"worker <id> was lost: its heartbeat expired while the task ran"``, its
        ``finished_at``, and wakes its waiters like any terminal write. Ids that are
        unknown or not orphaned are skipped.

        Raises:
            ValueError: ``limit`` out of range; InvalidTaskIdError (a ValueError) for an
                invalid id in ``task_ids`` (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused a write.
        """
        check_limit(limit)
        if task_ids is None:
            candidates = [
                (record.task_id, record.worker_id)
                for record in await self.orphaned_tasks(limit)
                if record.worker_id is not None
            ]
        else:
            ids = [check_task_id(task_id) for task_id in task_ids]
            candidates = []
            for task_id in ids:
                record = await self.get_task(task_id)
                if record is not None and record.state is TaskState.STARTED and record.worker_id:
                    candidates.append((task_id, record.worker_id))
        marked = []
        for task_id, worker_id in candidates:
            if await self.fail_orphan(task_id, worker_id):
                marked.append(task_id)
        return marked

    @abstractmethod
    async def fail_orphan(self, task_id: str, worker_id: str) -> bool:
        """Mark ``task_id`` FAILURE (worker lost) if still orphaned; True when marked.

        Marked only if, at the write, it is STARTED by ``worker_id`` and that worker has
        no live heartbeat. The check and the write are one statement or script (on Redis
        Cluster, where the heartbeat lives in another slot, it is checked just before).
        """

    async def report_progress(
        self,
        task_id: str,
        current: float,
        total: float | None = None,
        message: str | None = None,
    ) -> bool:
        """Record how far running task ``task_id`` is; True if stored.

        Stored only over a task that exists and is not finished: a late progress write
        never replaces a terminal state (False, nothing changed), and none creates a
        record (False for an unknown task). The state, result and history fields stay as
        they are; waiters of ``wait_for_progress`` are woken. Each call is one write:
        tasks report through ``chicory_backends.progress`` (rate-limited and coalesced),
        not through this method in a tight loop.

        Raises:
            ValueError: ``current`` or ``total`` negative or not finite, ``message``
                longer than 1000 characters or not valid text; InvalidTaskIdError for
                ``task_id`` (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the write.
        """
        check_task_id(task_id)
        update = ProgressUpdate(current=current, total=total, message=message)
        return await self.store_progress(task_id, update)

    @abstractmethod
    async def store_progress(self, task_id: str, update: ProgressUpdate) -> bool:
        """``report_progress`` with its arguments checked: what each backend implements."""

    @abstractmethod
    async def get_progress(self, task_id: str) -> TaskProgress | None:
        """Task ``task_id``'s state and latest reported progress; None for an unknown task.

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            CorruptResultError: the stored record cannot be read back; names the task.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    async def wait_for_progress(
        self,
        task_id: str,
        after: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskProgress | None:
        """Wait until the task reports progress newer than ``after``, or finishes.

        Returns the task's ``TaskProgress`` as soon as its ``updated_at`` is later than
        ``after`` (with ``after`` None: as soon as it reported any), or its state is
        terminal; None once ``timeout`` passes first (``timeout=None`` waits as long as
        it takes). An unknown task is waited for. This default polls ``get_progress``
        like ``wait_for_result``; backends that are told of writes (LISTEN/NOTIFY,
        pub/sub) override it and wake through their one listener.

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            ValueError: ``after`` is naive, or ``timeout`` is negative (before any I/O).
            CorruptResultError: the stored record cannot be read back; names the task.
            NotConnectedError: the backend is not connected, or was disconnected while
                waiting.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused a read.
        """
        check_task_id(task_id)
        check_progress_wait(after, timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = self.poll_interval_start
        while True:
            progress = await self.get_progress(task_id)
            if progress is not None and is_news(progress, after):
                return progress
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_interval_cap)

    @abstractmethod
    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        """Store ``stats`` as the latest heartbeat of worker ``worker_id`` for ``ttl`` seconds.

        Replaces the worker's previous heartbeat; it is listed by ``get_heartbeat`` and
        ``get_active_workers`` until ``ttl`` seconds pass without another.

        Raises:
            ValueError: ``ttl`` is under 1 second (before any I/O).
            InvalidTaskIdError: ``worker_id`` is not a valid id (before any I/O).
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the write.
        """

    @abstractmethod
    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None:
        """The latest heartbeat of worker ``worker_id``; None once it expired, or if none.

        Raises:
            InvalidTaskIdError: ``worker_id`` is not a valid id (before any I/O).
            CorruptResultError: the stored heartbeat cannot be read back; names the
                worker.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    @abstractmethod
    async def get_active_workers(self) -> list[WorkerStats]:
        """The latest heartbeat of every worker whose heartbeat has not expired.

        Raises:
            CorruptResultError: a stored heartbeat cannot be read back; names the worker.
            NotConnectedError: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the read.
        """

    @abstractmethod
    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Remove heartbeats that expired more than ``stale_seconds`` ago; return the count.

        Expired heartbeats are never listed, whether removed or not: this only reclaims
        their space. Redis also drops (and counts) the members of Chicory's own worker
        set whose heartbeat is gone; PostgreSQL also deletes the ``wait_for_result``
        registrations older than a day that a crashed process left (not counted). A SQL
        backend that was never connected connects for the call (a cron job); its errors
        are then those of ``connect()`` too.

        Raises:
            NotConnectedError: Redis: the backend is not connected.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused the delete.
        """

    @abstractmethod
    async def healthcheck(self) -> BackendStatus:
        """One round trip to the server (``SELECT 1``, ``PING``) and how long it took.

        Never raises for a failure: a backend that is not connected, or whose server
        does not answer, is reported as ``connected=False`` with the reason in
        ``error`` (without credentials); ``latency_ms`` is set when it answered.
        """

    # The default wait_for_result polls: first after this many seconds, then twice as long
    # each time up to the cap. Set them on an instance (or a subclass) to tune a backend.
    poll_interval_start: float = 0.005
    poll_interval_cap: float = 0.5

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        """Wait until the task is finished; its terminal result, or None once ``timeout`` passes.

        This default polls ``get_result``, from a few milliseconds backing off to
        ``poll_interval_cap``, so a quick task is seen quickly and a slow one costs few
        reads. Backends that can be told when a result lands (LISTEN/NOTIFY, pub/sub)
        override it; callers such as AsyncResult only ever wait through this method.
        With ``timeout=None`` it waits until the task finishes and never returns None.
        A non-terminal result is never returned. Cancelling the call stops the wait.

        Raises:
            InvalidTaskIdError: ``task_id`` is not a valid id (before any I/O).
            CorruptResultError: the stored result cannot be read back; names the task.
            NotConnectedError: the backend is not connected, or was disconnected while
                waiting.
            BackendUnreachableError: the server cannot be reached or did not answer.
            PoolExhaustedError: no connection was free within ``pool_timeout``.
            DatabaseError: the server refused a read.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = self.poll_interval_start
        while True:
            result = await self.get_result(task_id)
            if result is not None and result.state.is_terminal:
                return result
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_interval_cap)

    async def __aenter__(self) -> Self:
        """``connect()``, then the backend itself."""
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``disconnect()``; an exception raised in the block goes on unchanged."""
        await self.disconnect()

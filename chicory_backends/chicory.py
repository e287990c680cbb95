"""Our backends inside the real Chicory package (``pip install chicory-backends[chicory]``).

``Chicory(broker=..., backend=...)`` takes either a ``BackendType`` or a ready
``chicory.backend.Backend`` instance, so an adapter instance is all it needs::

    from chicory import BrokerType, Chicory
    from chicory_backends.chicory import chicory_backend

    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend("postgres"))

Chicory's own Worker and AsyncResult then store and read through our backend unchanged;
``async_result(app, task_id)`` gives our AsyncResult, which waits by LISTEN/NOTIFY on
PostgreSQL instead of Chicory's fixed 100 ms polling.

``track(app)`` adds the task history (``get_task``, ``list_tasks``, ``task_summary``):
call it once where the app is made, so that both the client and ``chicory worker``
run it::

    app = track(Chicory(broker=BrokerType.REDIS, backend=chicory_backend("postgres")))

How it works, without changing Chicory: it wraps the broker's ``publish`` and
``consume`` of this one app (instance attributes over the originals).

- A dispatch (``delay``/``send``: a message with ``retries == 0``) first writes PENDING
  with the task's name and queue (and, with ``record_args=True``, its arguments), then
  publishes; if publishing fails, the PENDING record is deleted again (best effort) and
  the error re-raised. That is one extra write per dispatch, and a dispatch now needs
  the backend as well as the broker. A retry's republish is passed through untouched.
- Each consumed envelope is made the current *delivery* (a ContextVar) before the
  worker sees it. Chicory's worker runs every envelope in a task of its own
  (``asyncio.create_task`` copies the context), so the state writes made while it runs
  (STARTED, RETRY, SUCCESS, FAILURE) carry its name, queue, attempt
  (``retries + 1``) and worker id, at no extra statement.
- The worker id is the one of the worker's heartbeat: Chicory's worker sends its first
  heartbeat before its first task starts. So one worker per process, as
  ``chicory worker`` runs it; a process running two Workers on one adapter records
  the id of whichever sent a heartbeat last.

Without ``track()`` nothing of this happens and every write is as before.

What a Chicory user calls on ``app.backend`` keeps working after the switch: besides
Chicory's ``Backend`` contract, the adapter has ``cleanup_old_results(older_than_seconds)``
(Chicory's ``DatabaseBackend`` has it; a cron job calls it), ``config`` and ``result_ttl``;
over a SQL backend it is also a ``chicory.backend.database.DatabaseBackend`` to
``isinstance`` (a virtual subclass: nothing of Chicory's class is inherited), with that
class's ``dsn`` (password masked), ``echo`` and pool settings.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from chicory import types as chicory_types
from chicory.backend.base import Backend as ChicoryBackend
from chicory.broker.base import DEFAULT_QUEUE

from chicory_backends.base import Backend
from chicory_backends.codec import check_label, encode_arguments
from chicory_backends.config import AnyBackendConfig, RedisBackendConfig, SQLBackendConfig
from chicory_backends.errors import (
    BackendNotConfiguredError,
    ConfigurationError,
    InvalidTaskIdError,
    NotConnectedError,
)
from chicory_backends.factory import create_backend
from chicory_backends.history import MAX_PAGE_SIZE
from chicory_backends.result import AsyncResult
from chicory_backends.types import BackendType, TaskDetails, TaskResult, TaskState, WorkerStats

if TYPE_CHECKING:
    from chicory.app import Chicory
    from chicory.broker.base import Broker, TaskEnvelope

__all__ = [
    "ChicoryBackendAdapter",
    "ChicoryDatabaseAdapter",
    "async_result",
    "chicory_backend",
    "track",
]

DEFAULT_MAX_ARGS_BYTES = 16384


@dataclass(frozen=True)
class Tracking:
    """What ``track(app)`` was asked for; one per adapter, the first call's."""

    record_args: bool
    max_args_bytes: int


@dataclass(frozen=True)
class Delivery:
    """The envelope a worker is processing in this context (set by the consume wrapper)."""

    task_id: str
    name: str
    retries: int
    queue: str


_delivery: ContextVar[Delivery | None] = ContextVar("chicory_backends_delivery", default=None)

# Chicory's DatabaseBackend.cleanup_old_results default: a day.
DEFAULT_CLEANUP_AGE = 86400


@runtime_checkable
class _CleansOldResults(Protocol):
    """A backend with a cleanup of its own (the SQL backends)."""

    async def cleanup_old_results(self, older_than_seconds: float = ...) -> int: ...


class ChicoryBackendAdapter(ChicoryBackend):
    """A ``chicory.backend.Backend`` that stores through one of our backends.

    Only the types are converted (Chicory's pydantic models to ours and back, field for
    field); every guarantee of the wrapped backend, such as atomic upserts and the
    terminal-state guard, holds unchanged.
    """

    def __new__(cls, backend: Backend) -> Self:
        """``ChicoryBackendAdapter(backend)`` of one of our SQL backends is a
        ChicoryDatabaseAdapter, as ``chicory_backend()`` gives it."""
        chosen: type[ChicoryBackendAdapter] = cls
        if cls is ChicoryBackendAdapter and _is_sql_backend(backend):
            chosen = ChicoryDatabaseAdapter
        return super().__new__(chosen)  # type: ignore[return-value]

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Set by track(app); None means: write no details, exactly as before.
        self.tracking: Tracking | None = None
        # The id of the worker of this process, from its heartbeats (see the module doc).
        self.worker_id: str | None = None

    def __repr__(self) -> str:
        return f"ChicoryBackendAdapter({self.backend!r})"

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    async def set_state(self, task_id: str, state: chicory_types.TaskState) -> None:
        details = self.delivery_details(task_id)
        if details is None:
            await self.backend.set_state(task_id, TaskState(state.value))
        else:
            await self.backend.set_state(task_id, TaskState(state.value), details)

    async def store_result(self, task_id: str, result: chicory_types.TaskResult[Any]) -> None:
        details = self.delivery_details(task_id)
        if details is None:
            await self.backend.store_result(task_id, to_result(result))
        else:
            await self.backend.store_result(task_id, to_result(result), details)

    def delivery_details(self, task_id: str) -> TaskDetails | None:
        """What a worker's write of ``task_id`` records: the current delivery's name,
        queue and attempt, and this worker's id; None unless tracked and delivered."""
        if self.tracking is None:
            return None
        delivery = _delivery.get()
        if delivery is None or delivery.task_id != task_id:
            return None
        return TaskDetails(
            # A message from elsewhere may name no valid label: its outcome must still
            # be stored (the history then lacks the name), never refused.
            name=_label_or_none("name", delivery.name),
            queue=_label_or_none("queue", delivery.queue),
            worker_id=self.worker_id,
            attempt=max(0, delivery.retries) + 1,
        )

    def dispatch_details(self, message: chicory_types.TaskMessage, queue: str) -> TaskDetails:
        """What the PENDING write of a dispatch records; raises
        ArgumentsNotRecordableError for arguments that cannot be recorded."""
        tracking = self.tracking
        args_json = None
        if tracking is not None and tracking.record_args:
            arguments = {"args": message.args, "kwargs": message.kwargs}
            args_json = encode_arguments(message.id, arguments, tracking.max_args_bytes)
        return TaskDetails(name=message.name, queue=queue, attempt=0, args_json=args_json)

    async def get_result(self, task_id: str) -> chicory_types.TaskResult[Any] | None:
        result = await self.backend.get_result(task_id)
        return None if result is None else from_result(result)

    async def delete_result(self, task_id: str) -> None:
        await self.backend.delete_result(task_id)

    async def store_heartbeat(
        self, worker_id: str, heartbeat: chicory_types.WorkerStats, ttl: int = 30
    ) -> None:
        # Learnt before the first await: Chicory's worker calls this from its heartbeat
        # task, which starts before any task of an envelope can (Worker.start).
        self.worker_id = _label_or_none("worker_id", worker_id)
        await self.backend.store_heartbeat(worker_id, to_stats(heartbeat), ttl)

    async def get_heartbeat(self, worker_id: str) -> chicory_types.WorkerStats | None:
        stats = await self.backend.get_heartbeat(worker_id)
        return None if stats is None else from_stats(stats)

    async def get_active_workers(self) -> list[chicory_types.WorkerStats]:
        return [from_stats(stats) for stats in await self.backend.get_active_workers()]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Remove heartbeats that expired more than ``stale_seconds`` ago; the count.
        Callable unconnected too (Chicory's returns 0 then; ours connects for the call)."""
        return await self._connected_for_call(
            lambda: self.backend.cleanup_stale_clients(stale_seconds)
        )

    async def healthcheck(self) -> chicory_types.BackendStatus:
        status = await self.backend.healthcheck()
        return chicory_types.BackendStatus(connected=status.connected, error=status.error)

    # Beyond Chicory's Backend: what its DatabaseBackend and RedisBackend also have.

    @property
    def config(self) -> AnyBackendConfig:
        """The settings of the wrapped backend (ours: passwords are SecretStr).

        Raises AttributeError for a backend object without settings of ours.
        """
        config = getattr(self.backend, "config", None)
        if not isinstance(config, SQLBackendConfig | RedisBackendConfig):
            raise AttributeError(f"{type(self.backend).__name__} has no backend settings")
        return config

    @property
    def result_ttl(self) -> int | None:
        """Seconds a result stays readable after its last write; None or 0: until cleanup
        (SQL) or forever (Redis). Raises AttributeError as ``config`` does."""
        return self.config.result_ttl

    async def cleanup_old_results(self, older_than_seconds: float = DEFAULT_CLEANUP_AGE) -> int:
        """Delete the results last written more than ``older_than_seconds`` ago (a day
        by default) and return how many, as Chicory's ``DatabaseBackend`` does; callable
        with Chicory's keyword or positionally, connected or not (it then connects for
        the call and disconnects again).

        A backend with a cleanup of its own runs it: the SQL backends delete in bounded
        batches, each one short statement, and also reclaim results whose ``result_ttl``
        has passed (no read returns those any more). The others (Redis) get a sweep of
        their task history here: each task created and last written before the cutoff is
        read again and deleted. It reaches the tasks the history holds (on Redis the
        newest ``history_size``; older ones still expire by ``result_ttl``), and a write
        landing between that last read and the delete is deleted with the task.

        Raises TypeError unless ``older_than_seconds`` is a number, ValueError if it is
        negative or not finite, and the backend's errors (BackendUnreachableError, ...).
        """
        _check_age(older_than_seconds)
        backend = self.backend
        if isinstance(backend, _CleansOldResults):
            return await backend.cleanup_old_results(older_than_seconds)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        return await self._connected_for_call(lambda: self._sweep_history(cutoff))

    async def _sweep_history(self, cutoff: datetime) -> int:
        """Delete every task of the history created and last written before ``cutoff``."""
        deleted = 0
        cursor: str | None = None
        while True:
            page = await self.backend.list_tasks(until=cutoff, limit=MAX_PAGE_SIZE, cursor=cursor)
            for item in page.items:
                if item.updated_at < cutoff and await self._delete_if_untouched(
                    item.task_id, cutoff
                ):
                    deleted += 1
            if page.next_cursor is None:
                return deleted
            cursor = page.next_cursor

    async def _delete_if_untouched(self, task_id: str, cutoff: datetime) -> bool:
        """Delete the task unless it was written since ``cutoff``; whether it did."""
        record = await self.backend.get_task(task_id)
        if record is None or record.updated_at >= cutoff:
            return False
        await self.backend.delete_result(task_id)
        return True

    async def _connected_for_call(self, call: Callable[[], Awaitable[int]]) -> int:
        """``call()``; on a backend not connected, connected for the call alone."""
        try:
            return await call()
        except NotConnectedError:
            pass
        await self.backend.connect()
        try:
            return await call()
        finally:
            await self.backend.disconnect()

    # Beyond Chicory's contract: what our backends add.

    async def get_results(
        self, task_ids: Iterable[str]
    ) -> dict[str, chicory_types.TaskResult[Any]]:
        found = await self.backend.get_results(task_ids)
        return {task_id: from_result(result) for task_id, result in found.items()}

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> chicory_types.TaskResult[Any] | None:
        result = await self.backend.wait_for_result(task_id, timeout)
        return None if result is None else from_result(result)


class ChicoryDatabaseAdapter(ChicoryBackendAdapter):
    """The adapter over one of our SQL backends: also a ``chicory.backend.database.
    DatabaseBackend`` to ``isinstance`` (registered as a virtual subclass, so code that
    checks for Chicory's database backend before ``cleanup_old_results`` still runs it),
    with the public attributes of that class that mean something here.

    Not there: ``consumer_name`` (ours names no session) and the private ``_engine`` /
    ``_sessionmaker`` (ours has its own pool; never Chicory's tables).
    """

    @property
    def config(self) -> SQLBackendConfig:
        """Our settings of the wrapped SQL backend."""
        config = super().config
        if not isinstance(config, SQLBackendConfig):
            raise AttributeError(f"{type(self.backend).__name__} is not a SQL backend")
        return config

    @property
    def dsn(self) -> str:
        """The database URL with the password masked (Chicory's shows it in clear text;
        ``config`` has it as a SecretStr)."""
        return self.config.sqlalchemy_url().render_as_string(hide_password=True)

    @property
    def echo(self) -> bool:
        return self.config.echo

    @property
    def pool_size(self) -> int:
        return self.config.pool_size

    @property
    def max_overflow(self) -> int:
        return self.config.max_overflow

    @property
    def pool_recycle(self) -> int:
        return self.config.pool_recycle

    @property
    def pool_timeout(self) -> float:
        return self.config.pool_timeout


def _register_with_chicory() -> None:
    """Make ChicoryDatabaseAdapter a virtual subclass of Chicory's DatabaseBackend (an ABC),
    where Chicory has one (it needs SQLAlchemy, which this package requires anyway)."""
    try:
        from chicory.backend.database import DatabaseBackend as ChicoryDatabaseBackend
    except ImportError:
        return
    ChicoryDatabaseBackend.register(ChicoryDatabaseAdapter)


_register_with_chicory()


def _is_sql_backend(backend: Backend) -> bool:
    from chicory_backends.sql.backend import DatabaseBackend

    return isinstance(backend, DatabaseBackend)


def _check_age(older_than_seconds: object) -> None:
    """Raise TypeError unless a number, ValueError unless finite and not negative."""
    if isinstance(older_than_seconds, bool) or not isinstance(older_than_seconds, int | float):
        raise TypeError(
            f"older_than_seconds must be a number, not {type(older_than_seconds).__name__}"
        )
    if not math.isfinite(older_than_seconds) or older_than_seconds < 0:
        raise ValueError(
            f"older_than_seconds must be a finite number of seconds, at least 0, "
            f"not {older_than_seconds}"
        )


def chicory_backend(
    kind: BackendType | str | None = None, config: AnyBackendConfig | None = None
) -> ChicoryBackendAdapter:
    """One of our backends, built like ``create_backend`` (from CHICORY_BACKEND_* variables
    unless ``config`` is given), ready to pass as ``Chicory(backend=...)``; over a SQL
    backend a ChicoryDatabaseAdapter.

    ``kind`` may be ours or Chicory's ``BackendType`` (the values are the same). Raises
    ConfigurationError for settings ours refuses, including a variable Chicory 0.1.0 would
    refuse when the app is built (see config.SQLBackendConfig), and DriverNotInstalledError.
    """
    return ChicoryBackendAdapter(create_backend(kind, config))


def async_result(app: Chicory, task_id: str) -> AsyncResult:
    """Our AsyncResult for a task of ``app``: pushed wake-ups where the backend has them.

    Raises BackendNotConfiguredError when the app has no backend, as Chicory does.
    """
    backend = app.backend
    if backend is None:
        raise BackendNotConfiguredError()
    if not isinstance(backend, ChicoryBackendAdapter):
        raise ConfigurationError(
            f"{type(backend).__name__} is Chicory's own backend; "
            "build the app with backend=chicory_backend(...) to use ours"
        )
    return AsyncResult(task_id, backend.backend)


def track(
    app: Chicory, *, record_args: bool = False, max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES
) -> Chicory:
    """Record the history of ``app``'s tasks (see the module doc); returns ``app``.

    Call it once on the app in the client and in the worker, where the app is made.
    A second call on the same app changes nothing (the first call's options stay).
    ``record_args=True`` also stores each dispatch's arguments, as
    ``{"args": [...], "kwargs": {...}}``, when they are portable JSON of at most
    ``max_args_bytes``; other arguments raise ArgumentsNotRecordableError from
    ``delay()`` and the task is not published. Off by default: arguments may hold
    personal data.

    Raises ConfigurationError unless the app's backend is ours (``chicory_backend()``).
    """
    adapter = app.backend
    if not isinstance(adapter, ChicoryBackendAdapter):
        what = "no backend" if adapter is None else f"{type(adapter).__name__} as its backend"
        raise ConfigurationError(
            f"track(app) needs our backend, and the app has {what}: "
            "build it with backend=chicory_backend(...)"
        )
    if not isinstance(record_args, bool):
        raise ConfigurationError(f"record_args must be a bool, not {type(record_args).__name__}")
    if isinstance(max_args_bytes, bool) or not isinstance(max_args_bytes, int):
        raise ConfigurationError(
            f"max_args_bytes must be an int, not {type(max_args_bytes).__name__}"
        )
    if max_args_bytes < 1:
        raise ConfigurationError(f"max_args_bytes must be at least 1, not {max_args_bytes}")
    broker = app.broker
    if vars(broker).get(_TRACKED) is not None:
        return app
    if adapter.tracking is None:
        adapter.tracking = Tracking(record_args=record_args, max_args_bytes=max_args_bytes)
    _wrap_broker(broker, adapter)
    return app


_TRACKED = "_chicory_backends_tracked"
_UNSET: Any = object()


def _wrap_broker(broker: Broker, adapter: ChicoryBackendAdapter) -> None:
    publish, consume = broker.publish, broker.consume  # bound: a subclass's own
    publish_queue = _default_queue(publish)
    consume_queue = _default_queue(consume)

    async def tracked_publish(message: chicory_types.TaskMessage, queue: str = _UNSET) -> None:
        if message.retries != 0:  # a retry's republish: the worker's writes record it
            await (publish(message) if queue is _UNSET else publish(message, queue))
            return
        target = publish_queue if queue is _UNSET else queue
        details = adapter.dispatch_details(message, target)  # raises before any I/O
        await adapter.backend.set_state(message.id, TaskState.PENDING, details)
        try:
            await (publish(message) if queue is _UNSET else publish(message, queue))
        except Exception:
            # Not published: no record may claim it is queued. Not on cancellation,
            # where the message may have reached the broker all the same.
            with suppress(Exception):
                await adapter.backend.delete_result(message.id)
            raise

    async def tracked_consume(queue: str = _UNSET) -> AsyncIterator[TaskEnvelope]:
        source = consume_queue if queue is _UNSET else queue
        stream = consume() if queue is _UNSET else consume(queue)
        async with aclosing(stream):
            async for envelope in stream:
                message = envelope.message
                _delivery.set(Delivery(message.id, message.name, message.retries, source))
                yield envelope
                # The worker made the envelope's task (a copy of this context) meanwhile.
                _delivery.set(None)

    tracked_publish.__wrapped__ = publish  # type: ignore[attr-defined]
    tracked_consume.__wrapped__ = consume  # type: ignore[attr-defined]
    vars(broker)["publish"] = tracked_publish
    vars(broker)["consume"] = tracked_consume
    vars(broker)[_TRACKED] = adapter


def _default_queue(method: Callable[..., Any]) -> str:
    """The queue a broker method uses when given none (Chicory's worker gives none)."""
    try:
        parameter = inspect.signature(method).parameters.get("queue")
    except (TypeError, ValueError):
        return DEFAULT_QUEUE
    if parameter is None or not isinstance(parameter.default, str):
        return DEFAULT_QUEUE
    return parameter.default


def _label_or_none(field: str, value: str) -> str | None:
    try:
        return check_label(field, value)
    except InvalidTaskIdError:
        return None


# -- conversions: the models have the same fields and values on both sides -----------


def to_result(result: chicory_types.TaskResult[Any]) -> TaskResult:
    return TaskResult(
        task_id=result.task_id,
        state=TaskState(result.state.value),
        result=result.result,
        error=result.error,
        traceback=result.traceback,
    )


def from_result(result: TaskResult) -> chicory_types.TaskResult[Any]:
    return chicory_types.TaskResult[Any](
        task_id=result.task_id,
        state=chicory_types.TaskState(result.state.value),
        result=result.result,
        error=result.error,
        traceback=result.traceback,
    )


def to_stats(stats: chicory_types.WorkerStats) -> WorkerStats:
    # uptime_seconds is computed by Chicory's model from started_at; we do not store it.
    return WorkerStats.model_validate(stats.model_dump(exclude={"uptime_seconds"}))


def from_stats(stats: WorkerStats) -> chicory_types.WorkerStats:
    data = stats.model_dump()
    for name in ("broker", "backend"):  # Chicory's BackendStatus has no latency_ms
        if data.get(name) is not None:
            data[name] = {"connected": data[name]["connected"], "error": data[name]["error"]}
    return chicory_types.WorkerStats.model_validate(data)

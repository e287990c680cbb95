"""Push wake-ups for waiting clients on PostgreSQL: LISTEN/NOTIFY on one connection.

Revision 0002 installed a trigger that runs ``pg_notify('chicory_results', task_id)`` in
the same transaction that stores a terminal result; since 0003 it notifies only when the
task id is registered in ``chicory_result_waiters``, because notifying transactions commit
one at a time (no shared WAL flush) and waiting clients are rare next to stores. Each
backend listens on ONE direct asyncpg connection (opened at the first wait, closed at
disconnect, re-opened if lost) and dispatches payloads to per-task futures: ten thousand
waiters cost one listening connection, a few batched registration statements and batched
``get_results`` reads on the ordinary pool.

A wait is "listen, register, fence, read, sleep":

1. the listening connection is up and the task's future is in place;
2. the task id is registered (committed) under this backend's token, once however many
   local waiters share it; the row is deleted when its last local waiter leaves;
3. the fence, ``chicory_await_result_writers``, takes and drops the task's advisory lock
   exclusively: it waits for every writer that holds it shared;
4. the result is read once;
5. the waiter sleeps until notified.

Why no wake-up is lost: the trigger takes the lock (shared) BEFORE it checks the waiters
table and keeps it until its transaction has committed and its row is visible. A writer
whose check ran after our registration committed sees it and notifies at commit, and we
were listening since step 1: either the notification reaches us or, if the commit came
before our read, the read sees the row. A writer whose check ran before the registration
committed already held the lock then, so the fence (after the registration) waits for its
commit and the read (after the fence) sees its row. (This needs the writer's check to take
a fresh snapshot, as a volatile plpgsql function in READ COMMITTED does: our stores are
single autocommit statements.) When the listening connection is lost every waiter is
woken to listen again and re-read, so a notification sent while nobody listened is never
needed; the registrations stay, being rows rather than session state.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chicory_backends.config import PostgresBackendConfig
from chicory_backends.errors import NotConnectedError
from chicory_backends.sql.engine import translate_error
from chicory_backends.types import TaskResult
from chicory_backends.waiting import ReadBatcher

__all__ = [
    "AWAIT_WRITERS",
    "CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "REGISTER_WAITERS",
    "UNREGISTER_WAITERS",
    "ResultListener",
    "WaiterRegistry",
    "connect_listener",
    "wait_notified",
]

CHANNEL = "chicory_results"
LISTENER_APPLICATION_NAME = "chicory-backends-listener"

# The statements of the registry, for the backend's ordinary (autocommit) engine; each
# takes a batch of ids as :task_ids and this backend's token as :waiter.
REGISTER_WAITERS = (
    "INSERT INTO chicory_result_waiters (task_id, waiter, registered_at) "
    "SELECT unnest(CAST(:task_ids AS text[])), CAST(:waiter AS uuid), now() "
    "ON CONFLICT DO NOTHING"
)
UNREGISTER_WAITERS = (
    "DELETE FROM chicory_result_waiters "
    "WHERE waiter = CAST(:waiter AS uuid) AND task_id = ANY(CAST(:task_ids AS text[]))"
)
AWAIT_WRITERS = "SELECT chicory_await_result_writers(CAST(:task_ids AS text[]))"

_log = logging.getLogger(__name__)

# URL options SQLAlchemy's asyncpg dialect understands but asyncpg.connect() does not.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")

Notified = Callable[[Any, int, str, str], None]  # asyncpg: (connection, pid, channel, payload)
Connect = Callable[[Notified], Awaitable[Any]]


async def connect_listener(
    config: PostgresBackendConfig, on_notification: Notified, channel: str = CHANNEL
) -> Any:
    """A direct asyncpg connection to the backend's database, outside the pool, that
    LISTENs on ``channel``.

    Made from the same URL as the engine (so the same host, credentials, database and
    options), named in pg_stat_activity so it can be told from the pooled ones. Direct,
    because LISTEN needs a session of its own (PgBouncer's transaction pooling cannot
    carry it); errors come out as ours, without the password.
    """
    import asyncpg

    url = config.sqlalchemy_url()
    options: dict[str, Any] = url.translate_connect_args(username="user")
    options.update(url.query)
    for name in _SQLALCHEMY_ONLY:
        options.pop(name, None)
    options.setdefault("timeout", config.connect_timeout)
    if config.ssl:
        options.setdefault("ssl", config.ssl)
    options["server_settings"] = {"application_name": LISTENER_APPLICATION_NAME}
    connection = None
    try:
        connection = await asyncpg.connect(**options)
        await connection.add_listener(channel, on_notification)
    except Exception as error:
        if connection is not None:
            connection.terminate()
        raise translate_error(error, config) from None
    return connection


class ResultListener:
    """One LISTEN connection and the futures of the tasks being waited for.

    ``subscribe`` returns once the connection is listening, with a future that is
    resolved by the task's notification (or by a lost connection, as a cue to re-read).
    """

    def __init__(self, connect: Connect, ping_interval: float = 30.0) -> None:
        self._connect = connect
        self._ping_interval = ping_interval
        self._connection: Any = None
        self._opening: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def waiting(self) -> int:
        """How many distinct tasks are waited for right now."""
        return len(self._waiters)

    async def subscribe(self, task_id: str) -> asyncio.Future[None]:
        await self._ensure_listening()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        return future

    def unsubscribe(self, task_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiters.get(task_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[task_id]

    def close(self) -> None:
        """Drop the connection for good; waiters wake up and find the backend closed.

        Synchronous (asyncpg's terminate) so that it can run from the engine's dispose.
        """
        self.closed = True
        self._drop()

    async def _ensure_listening(self) -> None:
        if self._connection is not None:
            return
        if self.closed:
            raise NotConnectedError("DatabaseBackend")
        # One attempt at a time, shared by everyone who needs it: when the server is down,
        # ten thousand waiters get the one failure instead of queueing ten thousand tries.
        if self._opening is None:
            opening = asyncio.get_running_loop().create_task(self._open())
            opening.add_done_callback(self._opened)
            self._opening = opening
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        connection = await self._connect(self._on_notification)
        if self.closed:  # the backend was disconnected while we connected
            connection.terminate()
            raise NotConnectedError("DatabaseBackend")
        connection.add_termination_listener(self._on_termination)
        self._connection = connection
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(connection))

    def _opened(self, opening: asyncio.Task[None]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved here too, in case every waiter gave up

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        for future in self._waiters.pop(payload, ()):
            if not future.done():
                future.set_result(None)

    def _on_termination(self, connection: Any) -> None:
        if connection is self._connection:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not _current_task():
            watchdog.cancel()
        if connection is not None and not connection.is_closed():
            connection.terminate()
        # Every waiter re-subscribes (reconnecting) and re-reads: whatever was stored while
        # nobody listened is found by that read.
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def _watch(self, connection: Any) -> None:
        """Find a connection that died silently (no RST, e.g. behind NAT) while waited on."""
        while True:
            await asyncio.sleep(self._ping_interval)
            if not self._waiters:
                continue
            try:
                async with asyncio.timeout(max(self._ping_interval / 3, 1.0)):
                    await connection.execute("SELECT 1")
            except Exception:
                if connection is self._connection:
                    self._drop()
                return


Statement = Callable[[str, dict[str, Any]], Awaitable[object]]


class WaiterRegistry:
    """This backend's rows in ``chicory_result_waiters``: one per task id waited for.

    ``acquire`` returns once the id is registered (committed) and fenced (step 2 and 3 of
    the module docstring); every ``acquire`` must be matched by one ``release``, whether it
    returned or raised. Local waiters of one id share its row, counted here; the row is
    deleted, in the background, when the last one releases it.

    Registrations and deletions go out in batches (``max_batch`` ids per statement) from
    one background task, in order, so a deletion never overtakes the re-registration of
    the same id; the fences of the batches run concurrently.
    """

    def __init__(self, run: Statement, max_batch: int = 1000) -> None:
        self.token = str(uuid.uuid4())
        self._run = run
        self._max_batch = max_batch
        self._counts: dict[str, int] = {}
        # Registered (or being registered) ids; the future resolves once fenced.
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._to_register: dict[str, asyncio.Future[None]] = {}
        self._to_delete: set[str] = set()
        self._pump: asyncio.Task[None] | None = None
        self._fences: set[asyncio.Task[None]] = set()

    @property
    def waited_for(self) -> int:
        """How many distinct task ids have local waiters."""
        return len(self._counts)

    @property
    def idle(self) -> bool:
        """Nothing left to register, fence or delete."""
        return (
            not self._to_register
            and not self._to_delete
            and (self._pump is None or self._pump.done())
            and not self._fences
        )

    async def acquire(self, task_id: str) -> None:
        self._counts[task_id] = self._counts.get(task_id, 0) + 1
        self._to_delete.discard(task_id)  # its row, if any, stays
        ready = self._ready.get(task_id)
        if ready is None:
            ready = asyncio.get_running_loop().create_future()
            ready.add_done_callback(_retrieve)
            self._ready[task_id] = ready
            self._to_register[task_id] = ready
            self._kick()
        await asyncio.shield(ready)

    def release(self, task_id: str) -> None:
        left = self._counts.get(task_id, 0) - 1
        if left > 0:
            self._counts[task_id] = left
            return
        self._counts.pop(task_id, None)
        self._to_delete.add(task_id)
        self._kick()

    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        await asyncio.sleep(0)  # let the acquisitions of this loop turn join the batch
        while self._to_register or self._to_delete:
            # Ids nobody waits for any more lose their row; those re-acquired since keep it.
            deletes = [task_id for task_id in self._to_delete if task_id not in self._counts]
            self._to_delete.clear()
            registers: dict[str, asyncio.Future[None]] = {}
            for task_id, ready in self._to_register.items():
                if task_id in self._counts:
                    registers[task_id] = ready
                elif not ready.done():
                    ready.cancel()
            self._to_register.clear()
            for task_id in deletes:
                self._ready.pop(task_id, None)
            for chunk in self._chunks(deletes):
                try:
                    await self._run(UNREGISTER_WAITERS, {"task_ids": chunk, "waiter": self.token})
                except Exception as error:  # a stale row costs needless notifies only
                    _log.warning("could not unregister %d waiters: %s", len(chunk), error)
            for chunk in self._chunks(list(registers)):
                batch = {task_id: registers[task_id] for task_id in chunk}
                try:
                    await self._run(REGISTER_WAITERS, {"task_ids": chunk, "waiter": self.token})
                except BaseException as error:
                    self._fail(batch, error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                fence = asyncio.get_running_loop().create_task(self._fence(batch))
                self._fences.add(fence)
                fence.add_done_callback(self._fences.discard)

    async def _fence(self, batch: dict[str, asyncio.Future[None]]) -> None:
        try:
            await self._run(AWAIT_WRITERS, {"task_ids": list(batch)})
        except BaseException as error:
            self._fail(batch, error)
            if not isinstance(error, Exception):
                raise
            return
        for ready in batch.values():
            if not ready.done():
                ready.set_result(None)

    def _fail(self, batch: dict[str, asyncio.Future[None]], error: BaseException) -> None:
        for task_id, ready in batch.items():
            if self._ready.get(task_id) is ready:
                del self._ready[task_id]  # the next acquire registers again
            if ready.done():
                continue
            if isinstance(error, Exception):
                ready.set_exception(error)
            else:
                ready.cancel()

    def _chunks(self, ids: list[str]) -> list[list[str]]:
        return [
            ids[start : start + self._max_batch] for start in range(0, len(ids), self._max_batch)
        ]


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def wait_notified(
    listener: ResultListener,
    registry: WaiterRegistry,
    reads: ReadBatcher,
    task_id: str,
    timeout: float | None,  # noqa: ASYNC109
) -> TaskResult | None:
    """Listen, register and fence, read once, then sleep until notified (see the module
    docstring); None when ``timeout`` passes first."""
    if timeout is not None and timeout <= 0:  # a look, not a wait: nothing to listen for
        result = await reads.get(task_id)
        return result if result is not None and result.state.is_terminal else None
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            registered = False
            try:
                while True:
                    waiter = await listener.subscribe(task_id)  # 1: listening
                    try:
                        if not registered:
                            registered = True  # released below even if acquire raises
                            await registry.acquire(task_id)  # 2 and 3: registered, fenced
                        result = await reads.get(task_id)  # 4
                        if result is not None and result.state.is_terminal:
                            return result
                        await waiter  # 5; or woken by a lost connection: listen again
                    finally:
                        listener.unsubscribe(task_id, waiter)
                        if not waiter.done():
                            waiter.cancel()
            finally:
                if registered:
                    registry.release(task_id)
    except TimeoutError:
        if scope.expired():
            return None
        raise

"""Push wake-ups for waiting clients on PostgreSQL: LISTEN/NOTIFY on one connection.

Revision 0002 installed a trigger that runs ``pg_notify('chicory_results', task_id)`` in
the same transaction that stores a terminal result; since 0003 it notifies only when the
task id is registered in ``chicory_result_waiters``, because notifying transactions commit
one at a time (no shared WAL flush) and waiting clients are rare next to stores. Each
backend listens on ONE direct asyncpg connection (opened at the first wait, closed at
disconnect, re-opened if lost), held by the shared Listener (waiting.py): ten thousand
waiters cost one listening connection, a few batched registration statements and
coalesced reads on the ordinary pool. This module holds PostgreSQL's part: the session
(connect, listen, ping) and the waiter registry.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from chicory_backends.config import PostgresBackendConfig
from chicory_backends.sql.drivers import asyncpg_connect
from chicory_backends.sql.engine import translate_error
from chicory_backends.waiting import OnLost, OnMessage

__all__ = ["CHANNEL", "LISTENER_APPLICATION_NAME", "WaiterRegistry", "connect_listener"]

CHANNEL = "chicory_results"
LISTENER_APPLICATION_NAME = "chicory-backends-listener"

_log = logging.getLogger(__name__)

# URL options SQLAlchemy's asyncpg dialect understands but asyncpg.connect() does not.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


class ListenSession:
    """The LISTEN connection, as the shared Listener sees it."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def ping(self) -> None:
        await self._connection.execute("SELECT 1")

    async def close(self) -> None:
        if not self._connection.is_closed():
            self._connection.terminate()


async def connect_listener(
    config: PostgresBackendConfig, on_message: OnMessage, on_lost: OnLost
) -> ListenSession:
    """A direct asyncpg connection to the backend's database, outside the pool, that
    LISTENs on the results channel.

    Made from the same URL as the engine (so the same host, credentials, database and
    options), named in pg_stat_activity so it can be told from the pooled ones. Direct,
    because LISTEN needs a session of its own (PgBouncer's transaction pooling cannot
    carry it); errors come out as ours, without the password.
    """
    # Read as the engine's dialect reads it, so several hosts (``?host=h1:p1&host=h2:p2``)
    # and target_session_attrs reach the listening connection as they reach the pool's:
    # after a fail-over it finds the new primary the same way.
    url = config.sqlalchemy_url()
    _args, connect_args = url.get_dialect()().create_connect_args(url)
    options: dict[str, Any] = dict(connect_args)
    for name in _SQLALCHEMY_ONLY:
        options.pop(name, None)
    options.setdefault("timeout", config.connect_timeout)
    if config.ssl:
        options.setdefault("ssl", config.ssl)
    options["server_settings"] = {"application_name": LISTENER_APPLICATION_NAME}
    connection = None
    try:
        connection = await asyncpg_connect(**options)
        await connection.add_listener(
            CHANNEL, lambda _connection, _pid, _channel, payload: on_message(payload)
        )
        connection.add_termination_listener(lambda _connection: on_lost())
    except Exception as error:
        if connection is not None:
            connection.terminate()
        raise translate_error(error, config) from None
    return ListenSession(connection)


Batch = Callable[[list[str]], Awaitable[object]]


class WaiterRegistry:
    """This backend's rows in ``chicory_result_waiters``: one per task id waited for.

    ``held(task_id)`` is entered once the id is registered (committed) and fenced (steps
    2 and 3 of the module docstring) and left when the wait ends, however it ends. Local
    waiters of one id share its row, counted here; the row is deleted, in the
    background, when the last one leaves.

    Registrations and deletions go out in batches (``max_batch`` ids per statement) from
    one background task, in order, so a deletion never overtakes the re-registration of
    the same id; the fences of the batches run concurrently. The three statements are
    the backend's (``register(ids)``, ``unregister(ids)``, ``fence(ids)``), bound to
    ``token``.
    """

    def __init__(
        self,
        register: Callable[[list[str], str], Awaitable[object]],
        unregister: Callable[[list[str], str], Awaitable[object]],
        fence: Batch,
        max_batch: int = 1000,
    ) -> None:
        self.token = str(uuid.uuid4())
        self._register = register
        self._unregister = unregister
        self._fence_writers = fence
        self._max_batch = max_batch
        self._counts: dict[str, int] = {}
        # The listening session (Listener.epoch) each id was last registered again for.
        self._renewed_for: dict[str, int] = {}
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

    @asynccontextmanager
    async def held(self, task_id: str) -> AsyncIterator[None]:
        try:
            await self.acquire(task_id)
            yield
        finally:  # released even when acquire raised: it counted the waiter first
            self.release(task_id)

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

    async def renew(self, task_id: str, epoch: int) -> None:
        """Register a held id again, and fence, for listening session ``epoch``: after a
        fail-over the rows are gone (the table is UNLOGGED, and it was another server's).
        The waiters of one id share one renewal per session."""
        if task_id not in self._counts:
            return
        ready = self._ready.get(task_id)
        if ready is None or self._renewed_for.get(task_id, -1) < epoch:
            self._renewed_for[task_id] = epoch
            if ready is None or ready.done():
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
        self._renewed_for.pop(task_id, None)
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
                    await self._unregister(chunk, self.token)
                except Exception as error:  # a stale row costs needless notifies only
                    _log.warning("could not unregister %d waiters: %s", len(chunk), error)
            for chunk in self._chunks(list(registers)):
                batch = {task_id: registers[task_id] for task_id in chunk}
                try:
                    await self._register(chunk, self.token)
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
            await self._fence_writers(list(batch))
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

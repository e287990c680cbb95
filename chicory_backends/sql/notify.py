"""Push wake-ups for waiting clients on PostgreSQL: LISTEN/NOTIFY on one connection.

Revision 0002 installs a trigger that runs ``pg_notify('chicory_results', task_id)`` in
the same transaction that stores a terminal result, so a notification exists exactly when
a finished result is readable. Each backend listens on ONE direct asyncpg connection
(opened at the first wait, closed at disconnect, re-opened if lost) and dispatches
payloads to per-task futures: ten thousand waiters cost one listening connection, and
their reads are batched into ``get_results`` round trips on the ordinary pool.

Waiting is "register, then read, then sleep": a result stored before the waiter was
registered is seen by the read, one stored after it wakes the waiter. When the listening
connection is lost every waiter is woken to listen again and re-read, so a notification
sent while nobody listened is never needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chicory_backends.config import PostgresBackendConfig
from chicory_backends.errors import NotConnectedError
from chicory_backends.sql.engine import translate_error
from chicory_backends.types import TaskResult
from chicory_backends.waiting import ReadBatcher

__all__ = [
    "CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "ResultListener",
    "connect_listener",
    "wait_notified",
]

CHANNEL = "chicory_results"
LISTENER_APPLICATION_NAME = "chicory-backends-listener"

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


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def wait_notified(
    listener: ResultListener,
    reads: ReadBatcher,
    task_id: str,
    timeout: float | None,  # noqa: ASYNC109
) -> TaskResult | None:
    """Subscribe, read once, then sleep until notified; None when ``timeout`` passes first."""
    if timeout is not None and timeout <= 0:  # a look, not a wait: nothing to listen for
        result = await reads.get(task_id)
        return result if result is not None and result.state.is_terminal else None
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                waiter = await listener.subscribe(task_id)
                try:
                    result = await reads.get(task_id)
                    if result is not None and result.state.is_terminal:
                        return result
                    await waiter
                finally:
                    listener.unsubscribe(task_id, waiter)
                    if not waiter.done():
                        waiter.cancel()
    except TimeoutError:
        if scope.expired():
            return None
        raise

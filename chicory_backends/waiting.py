"""Waiting for results, the same way on every backend that is told when a result lands.

One :class:`Listener` per backend object holds ONE listening session (PostgreSQL's
LISTEN connection, Redis's subscribed connection) and the futures of the task ids being
waited for. A backend supplies only ``connect`` (open a session that calls back on each
notification and when it is lost) and the session's ``ping`` and ``close``; everything
else lives here once:

- one connection attempt at a time, shared by every waiter (ten thousand waiters of a
  server that is down get one failure, not ten thousand attempts), retried briefly so a
  blip (a dropped connection, a fail-over) is ridden out;
- a lost session wakes every waiter, which listens again and re-reads: whatever was
  stored while nobody listened is found by that read;
- a watchdog pings the session while someone waits, so one that died silently (no RST,
  e.g. behind NAT) is found and replaced;
- :func:`wait_for` re-reads every ``recheck_interval`` even while listening, so a result
  whose notification never came (an old writer, an ACL, a registration row cleaned up)
  is still seen.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol

from chicory_backends.coalesce import Coalescer
from chicory_backends.errors import BackendUnreachableError, CorruptResultError, NotConnectedError
from chicory_backends.types import TaskResult

_log = logging.getLogger(__name__)

PING_INTERVAL = 15.0
RECHECK_INTERVAL = 30.0
# While Chicory 0.1.0's own workers may still store results (``write_chicory_format``: a
# switch from its backend), nothing wakes our waiters for those: they re-read this often,
# as Chicory's own client polls (every 100 ms), at a fifth of its rate.
SWITCH_RECHECK_INTERVAL = 0.5
CONNECT_PAUSES = (0.05, 0.2)  # between the tries of one connection attempt


class Session(Protocol):
    """A backend's live listening session."""

    async def ping(self) -> None:
        """Return once the server answered; raise when the session is dead."""

    async def close(self) -> None: ...


OnMessage = Callable[[str], None]
OnLost = Callable[[], None]
Connect = Callable[[OnMessage, OnLost], Awaitable[Session]]
Read = Callable[[str], Awaitable[TaskResult | None]]
FetchMany = Callable[[list[str]], Awaitable[dict[str, TaskResult]]]

WAIT_READ_BATCH = 500  # ids per read of woken waiters
WAIT_READ_SENDS = 4


def woken_reads(fetch: FetchMany) -> Callable[[str], Awaitable[TaskResult | None]]:
    """The read of a woken waiter: the ids woken in one event-loop turn go out together
    through ``fetch`` (``get_results``), so ten thousand waiters woken at once cost a few
    dozen reads; a corrupt row fails only its own waiters (the batch is read again one id
    at a time to find it)."""

    async def one(_group: object, task_id: str) -> TaskResult | None:
        return (await fetch([task_id])).get(task_id)

    async def many(_group: object, task_ids: list[str]) -> list[TaskResult | None]:
        found = await fetch(task_ids)
        return [found.get(task_id) for task_id in task_ids]

    reads: Coalescer[str, TaskResult | None] = Coalescer(
        one,
        many,
        exclusive=False,
        linger=True,
        max_in_flight=WAIT_READ_SENDS,
        max_calls=WAIT_READ_BATCH,
        isolate=lambda error: isinstance(error, CorruptResultError),
    )
    return lambda task_id: reads.submit(None, task_id, task_id)


Hold = Callable[[str], AbstractAsyncContextManager[None]]
# Registers a held id again for a new listening session (``Listener.epoch``).
Renew = Callable[[str, int], Awaitable[None]]


class Listener:
    """One listening session for a backend object, and the futures of the ids waited for.

    ``subscribe`` returns once the session is listening, with a future that the task's
    notification resolves, or the loss of the session (a cue to subscribe again and
    re-read). Several waiters of one id each get their own future and all wake.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        backend_name: str,
        ping_timeout: float,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._connect = connect
        self._backend_name = backend_name
        self._ping_timeout = ping_timeout
        self.ping_interval = ping_interval
        self._session: Session | None = None
        self._opening: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._generation = 0  # which session a loss report is about
        self._dropping: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def active(self) -> bool:
        """Listening right now."""
        return self._session is not None

    @property
    def epoch(self) -> int:
        """Which listening session this is: it changes with every new session, after a
        lost one (a restart, a fail-over to another server)."""
        return self._generation

    @property
    def waiting(self) -> int:
        """How many distinct task ids are waited for right now."""
        return len(self._waiters)

    def waiters_of(self, task_id: str) -> int:
        return len(self._waiters.get(task_id, ()))

    async def subscribe(self, task_id: str) -> asyncio.Future[None]:
        # Re-check after every await: the session may be lost again before we resume,
        # and a future added to a dead session would never be resolved.
        while self._session is None:
            if self.closed:
                raise NotConnectedError(self._backend_name)
            try:
                await self._open_shared()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.closed and task is not None and not task.cancelling():
                    raise NotConnectedError(self._backend_name) from None  # close() stopped it
                raise
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        return future

    def unsubscribe(self, task_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiters.get(task_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[task_id]
        if not future.done():
            future.cancel()

    def wake(self, task_id: str) -> None:
        """A notification: the waiters of ``task_id`` re-read."""
        for future in self._waiters.pop(task_id, ()):
            if not future.done():
                future.set_result(None)

    async def close(self) -> None:
        """For good (the backend disconnects); the waiters wake and find it closed."""
        self.closed = True
        opening = self._opening
        if opening is not None and not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        await self._drop(self._session)

    def _open_shared(self) -> asyncio.Future[None]:
        """The one connection attempt in flight, shielded: a waiter whose own timeout
        expires must not cancel it for the others."""
        if self._opening is None or self._opening.done():
            self._opening = asyncio.get_running_loop().create_task(self._open())
            self._opening.add_done_callback(_retrieve)
        return asyncio.shield(self._opening)

    async def _open(self) -> None:
        self._generation += 1
        generation = self._generation
        for pause in (*CONNECT_PAUSES, None):
            try:
                session = await self._connect(self.wake, lambda: self._lost(generation))
                break
            except BackendUnreachableError:
                if pause is None or self.closed:
                    raise
            await asyncio.sleep(pause)
        if self.closed:  # the backend was disconnected while we connected
            await session.close()
            raise NotConnectedError(self._backend_name)
        self._session = session
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(session))

    def _lost(self, generation: int) -> None:
        """Called by the session itself (a termination callback, its reader)."""
        if generation == self._generation and self._session is not None:
            task = asyncio.get_running_loop().create_task(self._drop(self._session))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)

    async def _drop(self, session: Session | None) -> None:
        if session is not None and session is self._session:
            self._session = None
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None and watchdog is not asyncio.current_task():
                watchdog.cancel()
        # Every waiter re-subscribes (reconnecting) and re-reads.
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        if session is not None:
            try:
                await session.close()
            except Exception as error:  # closing a dead session has nothing to report
                _log.debug("closing a lost listening session: %s", error)

    async def _watch(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if not self._waiters:
                continue
            try:
                async with asyncio.timeout(self._ping_timeout):
                    await session.ping()
            except Exception as error:
                _log.info("%s listening session lost: %s", self._backend_name, error)
                await self._drop(session)
                return


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a failed attempt as seen even when every waiter timed out before it ended."""
    if not task.cancelled():
        task.exception()


async def wait_for(
    listener: Listener,
    task_id: str,
    read: Read,
    timeout: float | None,  # noqa: ASYNC109
    *,
    hold: Hold | None = None,
    renew: Renew | None = None,
    recheck_interval: float = RECHECK_INTERVAL,
) -> TaskResult | None:
    """Listen, then read, then sleep until notified; the terminal result, or None once
    ``timeout`` passes.

    Listening comes before the read, so a result stored before the read is seen by it and
    one stored after it is announced to us. ``hold`` (PostgreSQL's waiter registration)
    is entered once the session first listens and left when the wait ends; when a new
    session replaces a lost one, ``renew`` registers the id again before the re-read (the
    server now listened to may be another one, a promoted standby that never had the
    registration).
    """
    if timeout is not None and timeout <= 0:  # a look, not a wait: nothing to listen for
        result = await read(task_id)
        return result if result is not None and result.state.is_terminal else None
    scope = asyncio.timeout(timeout)
    try:
        async with scope, AsyncExitStack() as held:
            held_in: int | None = None  # the listening session the hold was made for
            while True:
                waiter = await listener.subscribe(task_id)
                try:
                    epoch = listener.epoch
                    if hold is not None and held_in is None:
                        held_in = epoch
                        await held.enter_async_context(hold(task_id))
                    elif renew is not None and held_in is not None and held_in != epoch:
                        held_in = epoch
                        await renew(task_id, epoch)
                    result = await read(task_id)
                    if result is not None and result.state.is_terminal:
                        return result
                    recheck = recheck_interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter
                    await asyncio.wait((waiter,), timeout=recheck)
                finally:
                    listener.unsubscribe(task_id, waiter)
    except TimeoutError:
        if scope.expired():
            return None
        raise

"""Listener and wait_for (waiting.py) over a fake listening session: no server.

The fake ``connect`` is what a backend gives the Listener (PostgreSQL's LISTEN
connection, Redis's subscription): it opens a session that can be told to deliver a
notification, to report itself lost, or to stop answering pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from chicory_backends import waiting
from chicory_backends.errors import BackendUnreachableError, NotConnectedError
from chicory_backends.types import TaskResult, TaskState
from chicory_backends.waiting import Listener, OnLost, OnMessage, wait_for
from tests.unit.support import Gate, settle


class FakeSession:
    def __init__(self, on_message: OnMessage, on_lost: OnLost) -> None:
        self.notify = on_message
        self.lost = on_lost
        self.pings = 0
        self.dead = False  # pings fail
        self.closed = False

    async def ping(self) -> None:
        self.pings += 1
        if self.dead:
            raise ConnectionResetError("no answer")

    async def close(self) -> None:
        self.closed = True


class FakeServer:
    """The backend's ``connect``: counts attempts, fails the first ``down`` of them."""

    def __init__(self) -> None:
        self.attempts = 0
        self.down = 0
        self.sessions: list[FakeSession] = []
        self.gate = Gate()

    async def connect(self, on_message: OnMessage, on_lost: OnLost) -> FakeSession:
        self.attempts += 1
        await self.gate.passed()
        if self.attempts <= self.down:
            raise BackendUnreachableError("fake:1", "ConnectionRefusedError")
        session = FakeSession(on_message, on_lost)
        self.sessions.append(session)
        return session

    @property
    def session(self) -> FakeSession:
        return self.sessions[-1]


@pytest.fixture(autouse=True)
def no_connect_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retries of one attempt without their real pauses."""
    monkeypatch.setattr(waiting, "CONNECT_PAUSES", (0.0, 0.0))


def listener(server: FakeServer, ping_interval: float = 60.0) -> Listener:
    return Listener(
        server.connect, backend_name="FakeBackend", ping_timeout=1.0, ping_interval=ping_interval
    )


def result(task_id: str, state: TaskState = TaskState.SUCCESS) -> TaskResult:
    return TaskResult(task_id=task_id, state=state, result="done")


# -- Listener ---------------------------------------------------------------------------------


async def test_many_subscribers_share_one_connection_attempt() -> None:
    server = FakeServer()
    server.gate.close()
    listening = listener(server)
    subscribing = [asyncio.ensure_future(listening.subscribe(f"t{n}")) for n in range(100)]
    await settle()
    server.gate.open()
    await asyncio.gather(*subscribing)
    assert server.attempts == 1 and listening.active and listening.waiting == 100
    await listening.close()


async def test_a_server_that_is_down_costs_one_attempt_and_one_error_for_everyone() -> None:
    server = FakeServer()
    server.down = 1000
    listening = listener(server)
    outcomes = await asyncio.gather(
        *(listening.subscribe(f"t{n}") for n in range(100)), return_exceptions=True
    )
    assert all(isinstance(outcome, BackendUnreachableError) for outcome in outcomes)
    assert server.attempts == len(waiting.CONNECT_PAUSES) + 1  # one attempt, its retries
    assert not listening.active


async def test_a_blip_is_ridden_out_by_the_retries_of_one_attempt() -> None:
    server = FakeServer()
    server.down = len(waiting.CONNECT_PAUSES)
    listening = listener(server)
    await listening.subscribe("t")
    assert listening.active and server.attempts == server.down + 1
    await listening.close()


async def test_a_notification_wakes_every_waiter_of_its_task_and_no_other() -> None:
    server = FakeServer()
    listening = listener(server)
    first, second = await listening.subscribe("t"), await listening.subscribe("t")
    other = await listening.subscribe("u")
    assert listening.waiters_of("t") == 2
    server.session.notify("t")
    assert first.done() and second.done() and not other.done()
    assert listening.waiting == 1
    await listening.close()


async def test_a_lost_session_wakes_every_waiter_and_the_next_subscribe_reconnects() -> None:
    server = FakeServer()
    listening = listener(server)
    futures = [await listening.subscribe(task_id) for task_id in ("t", "u")]
    lost = server.session
    lost.lost()
    await settle()
    assert all(future.done() for future in futures)  # woken to listen again and re-read
    assert not listening.active and lost.closed
    await listening.subscribe("t")
    assert server.attempts == 2 and listening.active and server.session is not lost
    lost.lost()  # a late report about the old session changes nothing
    await settle()
    assert listening.active
    await listening.close()


async def test_the_watchdog_replaces_a_session_that_died_silently() -> None:
    server = FakeServer()
    listening = listener(server, ping_interval=0.001)
    await asyncio.sleep(0.01)  # nobody listens yet: nothing to ping
    future = await listening.subscribe("t")
    session = server.session
    await asyncio.sleep(0.01)
    assert session.pings > 0 and listening.active  # answered: kept
    session.dead = True
    await asyncio.wait_for(future, 1)  # woken by the drop
    assert session.closed and not listening.active
    await listening.close()


async def test_the_watchdog_pings_only_while_someone_waits() -> None:
    server = FakeServer()
    listening = listener(server, ping_interval=0.001)
    future = await listening.subscribe("t")
    listening.unsubscribe("t", future)
    assert future.cancelled()
    await asyncio.sleep(0.02)
    assert server.session.pings == 0
    await listening.close()


async def test_close_wakes_the_waiters_and_refuses_new_ones() -> None:
    server = FakeServer()
    listening = listener(server)
    future = await listening.subscribe("t")
    await listening.close()
    assert future.done() and server.session.closed and listening.closed
    with pytest.raises(NotConnectedError):
        await listening.subscribe("t")
    assert server.attempts == 1


async def test_close_during_the_connection_attempt_stops_it() -> None:
    server = FakeServer()
    server.gate.close()
    listening = listener(server)
    subscribing = asyncio.ensure_future(listening.subscribe("t"))
    await settle()
    await listening.close()
    with pytest.raises(NotConnectedError):
        await subscribing
    assert not listening.active


# -- wait_for ---------------------------------------------------------------------------------


class FakeStore:
    """``read`` of the backend: records whether the waiter was listening when it read."""

    def __init__(self, listening: Listener) -> None:
        self.listening = listening
        self.rows: dict[str, TaskResult] = {}
        self.reads: list[tuple[str, bool]] = []  # (task id, subscribed at the read)
        self._counted: list[tuple[int, asyncio.Future[None]]] = []

    async def read(self, task_id: str) -> TaskResult | None:
        self.reads.append((task_id, self.listening.waiters_of(task_id) > 0))
        for count, future in self._counted:
            if len(self.reads) >= count and not future.done():
                future.set_result(None)
        return self.rows.get(task_id)

    async def until_reads(self, count: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counted.append((count, future))
        if len(self.reads) < count:
            await future


async def test_wait_for_listens_before_it_reads_then_sleeps_until_notified() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    store.rows["t"] = result("t", TaskState.STARTED)
    waiter = asyncio.ensure_future(wait_for(listening, "t", store.read, 30))
    await settle()
    assert store.reads == [("t", True)] and not waiter.done()
    store.rows["t"] = result("t")
    server.session.notify("t")
    assert await waiter == store.rows["t"]
    assert store.reads == [("t", True), ("t", True)]
    assert listening.waiting == 0
    await listening.close()


async def test_wait_for_returns_none_once_the_timeout_passes() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    assert await wait_for(listening, "t", store.read, 0.01) is None
    assert listening.waiting == 0
    await listening.close()


async def test_wait_for_with_no_time_left_reads_once_and_never_listens() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    assert await wait_for(listening, "t", store.read, 0) is None
    store.rows["t"] = result("t")
    assert await wait_for(listening, "t", store.read, 0) == store.rows["t"]
    assert server.attempts == 0 and store.reads == [("t", False), ("t", False)]


async def test_wait_for_rereads_every_recheck_interval_without_a_notification() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    waiter = asyncio.ensure_future(wait_for(listening, "t", store.read, 30, recheck_interval=0.005))
    await asyncio.wait_for(store.until_reads(3), 5)  # the first read, two re-reads of its own
    store.rows["t"] = result("t")  # its notification never comes
    assert await asyncio.wait_for(waiter, 5) == store.rows["t"]
    assert server.attempts == 1 and all(subscribed for _id, subscribed in store.reads)
    await listening.close()


async def test_wait_for_holds_once_from_the_first_listen_to_the_end_across_a_reconnect() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    held: list[str] = []

    @asynccontextmanager
    async def hold(task_id: str) -> AsyncIterator[None]:
        held.append(f"enter {task_id} listening={listening.waiters_of(task_id) > 0}")
        try:
            yield
        finally:
            held.append(f"exit {task_id}")

    waiter = asyncio.ensure_future(wait_for(listening, "t", store.read, 30, hold=hold))
    await settle()
    server.session.lost()  # the waiter listens again on a new session and re-reads
    await settle()
    assert server.attempts == 2 and len(store.reads) == 2
    store.rows["t"] = result("t")
    server.session.notify("t")
    assert await waiter == store.rows["t"]
    assert held == ["enter t listening=True", "exit t"]
    await listening.close()


async def test_a_closed_listener_ends_the_wait_with_not_connected() -> None:
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    waiter = asyncio.ensure_future(wait_for(listening, "t", store.read, 30))
    await settle()
    await listening.close()
    with pytest.raises(NotConnectedError):
        await waiter


async def test_wait_for_renews_its_hold_before_it_rereads_on_a_new_session() -> None:
    """A waiter whose session was replaced registers again (``renew``) before its re-read,
    so a result stored on a server that never had its registration still wakes it."""
    server = FakeServer()
    listening = listener(server)
    store = FakeStore(listening)
    store.rows["t"] = result("t", TaskState.STARTED)
    events: list[str] = []

    @asynccontextmanager
    async def hold(task_id: str) -> AsyncIterator[None]:
        events.append(f"hold {task_id}")
        yield
        events.append(f"release {task_id}")

    async def renew(task_id: str, epoch: int) -> None:
        events.append(f"renew {task_id} in session {epoch}")

    waiter = asyncio.ensure_future(wait_for(listening, "t", store.read, 30, hold=hold, renew=renew))
    await settle()
    first = listening.epoch
    server.session.lost()  # a fail-over: the session comes back on another server
    await settle()
    assert listening.epoch != first
    assert events == ["hold t", f"renew t in session {listening.epoch}"]
    assert len(store.reads) == 2  # the re-read came after the renewal
    store.rows["t"] = result("t")
    server.session.notify("t")
    assert await waiter == store.rows["t"]
    assert events[-1] == "release t"
    await listening.close()

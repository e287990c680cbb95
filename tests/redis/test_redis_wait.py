"""RedisBackend.wait_for_result: woken by the store script's PUBLISH, on all three modes.

Every waiting backend here has its polling (poll_interval_start/cap) and its re-check
(recheck_interval) set to 60 s, so a test that returns within a second, or that counts
exactly the reads it expects, proves that a notification woke the waiter.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from chicory_backends.codec import encode_document
from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    CorruptResultError,
    InvalidTaskIdError,
    NotConnectedError,
)
from chicory_backends.redis import LISTENER_CLIENT_NAME, RedisBackend
from chicory_backends.redis import listener as redis_listener
from chicory_backends.types import TaskResult, TaskState
from tests.support.redis_servers import (  # noqa: F401  (fixtures are used by name)
    REDIS_MODES,
    RedisServer,
    SentinelTopology,
    redis_backends,
    redis_cluster,
    redis_sentinel,
    redis_throwaway,
    throwaway_config,
)

pytestmark = pytest.mark.redis

Make = Callable[..., Awaitable[RedisBackend]]

S = TaskState
SLOW = 60.0  # polling and re-checking this slowly never happen within a test
WOKEN_WITHIN = 1.0  # seconds from the store to the waiter's return


def result(task_id: str, state: TaskState = S.SUCCESS, value: Any = None) -> TaskResult:
    return TaskResult(task_id=task_id, state=state, result=value)


def new_id() -> str:
    return f"task-{uuid.uuid4().hex}"


def no_polling(backend: RedisBackend) -> RedisBackend:
    backend.poll_interval_start = backend.poll_interval_cap = SLOW
    backend.recheck_interval = SLOW
    return backend


@pytest.fixture
async def waiter(make: Make) -> RedisBackend:
    return no_polling(await make())


@pytest.fixture
async def writer(make: Make) -> RedisBackend:
    return await make()


def count_reads(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every id the backend reads, one at a time or batched as the waiters do."""
    reads: list[str] = []
    real_one, real_many = backend.get_result, backend.get_results

    async def get_result(task_id: str) -> TaskResult | None:
        reads.append(task_id)
        return await real_one(task_id)

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        task_ids = list(task_ids)
        reads.extend(task_ids)
        return await real_many(task_ids)

    monkeypatch.setattr(backend, "get_result", get_result)
    monkeypatch.setattr(backend, "get_results", get_results)
    return reads


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def registered(backend: RedisBackend, task_id: str) -> int:
    """How many waiters for ``task_id`` are registered on the backend's subscription."""
    listener = backend._listener
    return 0 if listener is None else listener.waiters_of(task_id)


def subscribed(backend: RedisBackend, task_id: str) -> Callable[[], bool]:
    return lambda: registered(backend, task_id) > 0


# -- the contract's wait on every mode ----------------------------------------------------


@pytest.mark.parametrize("how", ["store_result", "set_state"])
async def test_woken_by_a_later_store_from_another_backend(
    waiter: RedisBackend,
    writer: RedisBackend,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    reads = count_reads(waiter, monkeypatch)
    finals = {new_id(): state for state in (S.SUCCESS, S.FAILURE, S.DEAD_LETTERED)}
    for task_id in finals:
        await writer.set_state(task_id, S.STARTED)
    waits = {t: asyncio.create_task(waiter.wait_for_result(t, timeout=30)) for t in finals}
    for task_id in finals:
        await until(subscribed(waiter, task_id))
    await asyncio.sleep(0.1)
    assert sorted(reads) == sorted(finals)  # one read each, then asleep: no polling
    assert not any(wait.done() for wait in waits.values())

    for task_id, state in finals.items():
        stored = time.monotonic()
        if how == "store_result":
            await writer.store_result(task_id, result(task_id, state, {"n": 1}))
        else:
            await writer.set_state(task_id, state)
        found = await asyncio.wait_for(waits[task_id], WOKEN_WITHIN)
        assert time.monotonic() - stored < WOKEN_WITHIN
        expected = {"n": 1} if how == "store_result" else None
        assert found == result(task_id, state, expected)
        assert reads.count(task_id) == 2  # the first read, and one after the notification
    assert waiter._listener is not None and waiter._listener.waiting == 0


async def test_already_terminal_returns_at_once(
    waiter: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = new_id()
    await waiter.store_result(task_id, result(task_id, S.FAILURE, [1]))
    reads = count_reads(waiter, monkeypatch)
    started = time.monotonic()
    assert await waiter.wait_for_result(task_id, timeout=30) == result(task_id, S.FAILURE, [1])
    assert await waiter.wait_for_result(task_id) == result(task_id, S.FAILURE, [1])
    assert await waiter.wait_for_result(task_id, timeout=0) == result(task_id, S.FAILURE, [1])
    assert time.monotonic() - started < WOKEN_WITHIN
    assert reads == [task_id] * 3


async def test_timeout_returns_none(waiter: RedisBackend, writer: RedisBackend) -> None:
    running, unknown = new_id(), new_id()
    await writer.set_state(running, S.STARTED)
    for task_id in (running, unknown):
        started = time.monotonic()
        assert await waiter.wait_for_result(task_id, timeout=0.3) is None
        assert 0.3 <= time.monotonic() - started < 0.3 + WOKEN_WITHIN
        assert await waiter.wait_for_result(task_id, timeout=0) is None
        assert await waiter.wait_for_result(task_id, timeout=-1) is None
    assert waiter._listener is not None and waiter._listener.waiting == 0


async def test_only_terminal_writes_notify(
    waiter: RedisBackend, writer: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = new_id()
    reads = count_reads(waiter, monkeypatch)
    wait = asyncio.create_task(waiter.wait_for_result(task_id, timeout=30))
    await until(subscribed(waiter, task_id))

    # A subscriber of our own on the channel, to see exactly what is published.
    assert writer._client is not None
    spy = writer._topology.listener_client(writer._client, 0)
    pubsub = spy.pubsub()
    try:
        await pubsub.subscribe(writer._channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        for state in (S.PENDING, S.STARTED, S.RETRY, S.STARTED):
            await writer.set_state(task_id, state)
            await writer.store_result(task_id, result(task_id, state, "partial"))
        await asyncio.sleep(0.2)
        assert reads == [task_id] and not wait.done()  # no wake-up
        assert await pubsub.get_message(timeout=0.1) is None  # nothing was published

        await writer.store_result(task_id, result(task_id, S.SUCCESS, "done"))
        assert await asyncio.wait_for(wait, WOKEN_WITHIN) == result(task_id, S.SUCCESS, "done")
        await writer.set_state(task_id, S.STARTED)  # refused over a terminal state: silent
        await writer.set_state(task_id, S.DEAD_LETTERED)  # terminal over terminal: sent
        await writer.set_state(task_id, S.RETRY)  # refused: silent
        published = [(await pubsub.get_message(timeout=5))["data"] for _ in range(2)]
        assert published == [task_id.encode()] * 2
        assert await pubsub.get_message(timeout=0.1) is None
        assert reads == [task_id] * 2
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await spy.aclose()


@pytest.mark.parametrize("when", ["before the first read", "after the first read"])
async def test_store_racing_the_first_read_is_seen(
    waiter: RedisBackend,
    writer: RedisBackend,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The store lands after the subscription is confirmed, just before (the read sees it)
    or just after the waiter's one read (only the notification can tell it)."""
    task_id = new_id()
    await writer.set_state(task_id, S.STARTED)
    reads: list[TaskResult | None] = []
    real = waiter.get_results

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        assert waiter._listener is not None and waiter._listener.active  # subscribed first
        racing = not reads
        if racing and when == "before the first read":
            await writer.store_result(task_id, result(task_id, S.SUCCESS, "raced"))
        found = await real(task_ids)
        reads.append(found.get(task_id))
        if racing and when == "after the first read":
            await writer.store_result(task_id, result(task_id, S.SUCCESS, "raced"))
        return found

    monkeypatch.setattr(waiter, "get_results", get_results)
    started = time.monotonic()
    found = await waiter.wait_for_result(task_id, timeout=30)
    assert found == result(task_id, S.SUCCESS, "raced")
    assert time.monotonic() - started < WOKEN_WITHIN
    if when == "before the first read":
        assert len(reads) == 1
    else:
        assert len(reads) == 2 and reads[0] == result(task_id, S.STARTED)


async def test_several_waiters_on_one_id_all_wake(
    waiter: RedisBackend, make: Make, writer: RedisBackend
) -> None:
    other = no_polling(await make())  # a second waiting process, with a subscription of its own
    task_id = new_id()
    waits = [
        asyncio.create_task(backend.wait_for_result(task_id, timeout=30))
        for backend in (waiter, waiter, waiter, other, other)
    ]
    await until(lambda: registered(waiter, task_id) == 3 and registered(other, task_id) == 2)
    await writer.store_result(task_id, result(task_id, S.SUCCESS, 7))
    found = await asyncio.wait_for(asyncio.gather(*waits), WOKEN_WITHIN)
    assert found == [result(task_id, S.SUCCESS, 7)] * 5


async def test_recheck_finds_a_result_that_was_never_announced(
    waiter: RedisBackend,
) -> None:
    """A result written without the notification (an older writer, or an ACL denying
    PUBLISH) is still found, by the slow re-check rather than never."""
    waiter.recheck_interval = 0.3
    task_id = new_id()
    wait = asyncio.create_task(waiter.wait_for_result(task_id, timeout=30))
    await until(subscribed(waiter, task_id))
    assert waiter._client is not None
    document = encode_document(task_id, result(task_id, S.SUCCESS, "old writer"), None)
    await waiter._client.set(waiter._result_key(task_id), document)  # SET, no PUBLISH
    found = await asyncio.wait_for(wait, 0.3 * 1.1 + WOKEN_WITHIN)
    assert found == result(task_id, S.SUCCESS, "old writer")


async def test_a_corrupt_document_fails_only_its_own_waiters(
    waiter: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = new_id(), new_id()
    waits = [asyncio.create_task(waiter.wait_for_result(t, timeout=30)) for t in (bad, good)]
    for task_id in (bad, good):
        await until(subscribed(waiter, task_id))
    batches: list[list[str]] = []
    real = waiter.get_results

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        batches.append(list(task_ids))
        return await real(batches[-1])

    monkeypatch.setattr(waiter, "get_results", get_results)
    assert waiter._client is not None and waiter._listener is not None
    await waiter._client.set(waiter._result_key(bad), b"not json")
    await waiter._client.set(
        waiter._result_key(good), encode_document(good, result(good, S.SUCCESS, "fine"), None)
    )
    waiter._listener.wake(bad)  # as if both notifications came in one turn
    waiter._listener.wake(good)
    assert await asyncio.wait_for(waits[1], WOKEN_WITHIN) == result(good, S.SUCCESS, "fine")
    with pytest.raises(CorruptResultError, match=bad):
        await asyncio.wait_for(waits[0], WOKEN_WITHIN)
    # one read for both, then each alone to find which one is corrupt
    assert batches[0] == [bad, good] and sorted(batches[1:]) == sorted([[bad], [good]])


async def test_invalid_id_and_unconnected_backend(waiter: RedisBackend) -> None:
    with pytest.raises(InvalidTaskIdError):
        await waiter.wait_for_result("", timeout=1)
    unconnected = RedisBackend(RedisBackendConfig(port=1))
    with pytest.raises(NotConnectedError):
        await unconnected.wait_for_result("t", timeout=1)


async def test_disconnect_ends_the_wait_and_the_subscription(
    waiter: RedisBackend,
) -> None:
    task_id = new_id()
    wait = asyncio.create_task(waiter.wait_for_result(task_id))
    await until(subscribed(waiter, task_id))
    listener = waiter._listener
    await waiter.disconnect()
    with pytest.raises(NotConnectedError):
        await asyncio.wait_for(wait, WOKEN_WITHIN)
    assert listener is not None and listener.closed and not listener.active
    await waiter.connect()  # and a new wait subscribes again
    await waiter.store_result(task_id, result(task_id, S.SUCCESS, 1))
    assert await waiter.wait_for_result(task_id, timeout=5) == result(task_id, S.SUCCESS, 1)


async def test_disconnect_while_subscribing(
    waiter: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription still being made (a slow server) is abandoned at once."""
    stuck = asyncio.Event()

    async def slow_subscribe(*args: Any) -> None:
        stuck.set()
        await asyncio.sleep(SLOW)

    monkeypatch.setattr(redis_listener, "subscribe", slow_subscribe)
    waits = [asyncio.create_task(waiter.wait_for_result(new_id())) for _ in range(3)]
    await asyncio.wait_for(stuck.wait(), 5)
    started = time.monotonic()
    await waiter.disconnect()
    for wait in waits:
        with pytest.raises(NotConnectedError):
            await asyncio.wait_for(wait, WOKEN_WITHIN)
    assert time.monotonic() - started < WOKEN_WITHIN


# -- ten thousand waiters, one subscription ----------------------------------------------


def process_ports() -> set[int]:
    """Local ports of this process's TCP sockets (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/self/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def can_count_connections() -> bool:
    return Path("/proc/self/net/tcp").exists()


async def test_10000_concurrent_waits_share_one_subscription(
    mode: str, make: Make, writer: RedisBackend
) -> None:
    """10,000 waiters on the single node, where the server's CLIENT LIST is counted too;
    2,000 behind Sentinel and on the Cluster (over every node), to keep the file short."""
    count_connections = mode == "redis" and can_count_connections()
    before = process_ports() if count_connections else set()
    pool = 20
    waiter = no_polling(await make(max_connections=pool, pool_timeout=30))
    ids = [f"many-{i}" for i in range(10_000 if mode == "redis" else 2_000)]
    waits = [asyncio.create_task(waiter.wait_for_result(task_id, timeout=60)) for task_id in ids]
    await until(lambda: waiter._listener is not None and waiter._listener.waiting == len(ids), 30)
    assert not any(wait.done() for wait in waits)

    if count_connections:
        # The server's view of the connections this backend opened: its pool and the one
        # subscription, not one per waiter.
        assert waiter._client is not None
        ours = process_ports() - before
        clients = [
            c
            for c in await waiter._client.client_list()
            if int(c["addr"].rsplit(":", 1)[1]) in ours
        ]
        assert 1 < len(clients) <= pool + 1
        listeners = [c for c in clients if c["name"] == LISTENER_CLIENT_NAME]
        assert len(listeners) == 1 and listeners[0]["sub"] == "1"

    stored = asyncio.Semaphore(50)

    async def store(task_id: str) -> None:
        async with stored:
            await writer.store_result(task_id, result(task_id, S.SUCCESS, task_id))

    await asyncio.gather(*(store(task_id) for task_id in ids))
    found = await asyncio.wait_for(asyncio.gather(*waits), 30)
    assert found == [result(task_id, S.SUCCESS, task_id) for task_id in ids]
    assert waiter._listener is not None and waiter._listener.waiting == 0


# -- a lost subscription, a stopped server, a refused SUBSCRIBE (servers of our own) ------


@pytest.fixture
def server(request: pytest.FixtureRequest) -> RedisServer:
    """A password-protected redis-server of this test's own (see redis_servers)."""
    throwaway: RedisServer = request.getfixturevalue("redis_throwaway")
    return throwaway


@pytest.fixture
async def owned(server: RedisServer) -> AsyncIterator[RedisBackend]:
    """A waiting backend on a server of this test's own, which it may kill and stop."""
    backend = no_polling(RedisBackend(throwaway_config(server)))
    await backend.connect()
    yield backend
    await backend.disconnect()


def listener_clients(server: RedisServer) -> list[dict[str, Any]]:
    with server.client() as admin:
        return [c for c in admin.client_list() if c["name"] == LISTENER_CLIENT_NAME]


async def test_a_lost_subscription_is_renewed_and_every_waiter_rereads(
    owned: RedisBackend, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [new_id() for _ in range(3)]
    reads = count_reads(owned, monkeypatch)
    waits = [asyncio.create_task(owned.wait_for_result(t, timeout=30)) for t in ids]
    for task_id in ids:
        await until(subscribed(owned, task_id))
    [first] = listener_clients(server)

    # Stored while the subscription is down, so never announced to it: a plain SET.
    assert owned._client is not None
    for task_id in ids[:2]:
        document = encode_document(task_id, result(task_id, S.SUCCESS, "unannounced"), None)
        await owned._client.set(owned._result_key(task_id), document)
    with server.client() as admin:
        admin.client_kill_filter(_id=first["id"])

    done = await asyncio.wait_for(asyncio.gather(*waits[:2]), WOKEN_WITHIN)
    assert done == [result(t, S.SUCCESS, "unannounced") for t in ids[:2]]
    await until(lambda: reads.count(ids[2]) == 2)  # re-read after the re-subscribe
    await asyncio.sleep(0.1)
    assert reads.count(ids[2]) == 2 and subscribed(owned, ids[2])()  # then asleep
    [second] = listener_clients(server)  # one subscription again, a new one
    assert second["id"] != first["id"]
    await owned.store_result(ids[2], result(ids[2], S.SUCCESS, "announced"))
    assert await asyncio.wait_for(waits[2], WOKEN_WITHIN) == result(ids[2], S.SUCCESS, "announced")


async def test_stopped_server_raises_unreachable_then_recovers(
    owned: RedisBackend, server: RedisServer
) -> None:
    task_id = new_id()
    wait = asyncio.create_task(owned.wait_for_result(task_id))  # no timeout: must not hang
    await until(subscribed(owned, task_id))
    server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnreachableError) as info:
            await asyncio.wait_for(wait, 5)
        with pytest.raises(BackendUnreachableError):
            await asyncio.wait_for(owned.wait_for_result(task_id, timeout=30), 5)
        assert time.monotonic() - started < 5
        assert str(server.password) not in str(info.value)
        assert info.value.address == f"127.0.0.1:{server.port}"
    finally:
        server.start()
    wait = asyncio.create_task(owned.wait_for_result(task_id, timeout=30))
    await until(subscribed(owned, task_id))
    await owned.store_result(task_id, result(task_id, S.SUCCESS, "after"))
    assert await asyncio.wait_for(wait, WOKEN_WITHIN) == result(task_id, S.SUCCESS, "after")


async def test_subscription_over_url_and_unix_socket(server: RedisServer) -> None:
    """The subscribed connection is made from the same URL as the pool (credentials, db,
    unix socket)."""
    urls = [
        f"redis://:{server.password}@127.0.0.1:{server.port}/0",
        f"unix://:{server.password}@{server.unix_socket}?db=0",
    ]
    for url in urls:
        config = throwaway_config(server, password=None, url=url)
        async with RedisBackend(config) as backend:
            no_polling(backend)
            task_id = new_id()
            wait = asyncio.create_task(backend.wait_for_result(task_id, timeout=30))
            await until(subscribed(backend, task_id))
            await backend.store_result(task_id, result(task_id, S.SUCCESS, url))
            assert await asyncio.wait_for(wait, WOKEN_WITHIN) == result(task_id, S.SUCCESS, url)


async def test_refused_subscribe_falls_back_to_polling(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A user whose ACL grants no channel still stores (the PUBLISH in the script is a
    pcall; the refusal is logged once) and still waits, by polling."""
    with server.client() as admin:
        admin.acl_setuser(
            "nochannels", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"]
        )
        assert admin.acl_getuser("nochannels")["channels"] == []
    config = throwaway_config(server, username="nochannels", password="pw")
    async with RedisBackend(config) as backend, RedisBackend(config) as writer:
        backend.poll_interval_start = backend.poll_interval_cap = 0.05
        task_id = new_id()
        wait = asyncio.create_task(backend.wait_for_result(task_id, timeout=30))
        await until(lambda: backend._pubsub_refused is not None)
        assert "channel" in backend._pubsub_refused  # type: ignore[operator]
        await writer.store_result(task_id, result(task_id, S.SUCCESS, "polled"))
        assert await asyncio.wait_for(wait, WOKEN_WITHIN) == result(task_id, S.SUCCESS, "polled")
        await writer.set_state(task_id, S.FAILURE)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # once per backend: the SUBSCRIBE, and the PUBLISH refused
    assert "refused SUBSCRIBE" in warnings[0] and "refused PUBLISH" in warnings[1]


async def test_sentinel_master_restart_while_waiting(request: pytest.FixtureRequest) -> None:
    """The subscription follows the Sentinel-discovered master back after a restart."""
    topology: SentinelTopology = request.getfixturevalue("redis_sentinel")
    async with redis_backends("redis-sentinel") as make:
        waiter, task_id = no_polling(await make()), new_id()
        wait = asyncio.create_task(waiter.wait_for_result(task_id))
        await until(subscribed(waiter, task_id))
        topology.master.stop()
        try:
            with pytest.raises(BackendUnreachableError, match="sentinel"):
                await asyncio.wait_for(wait, 5)
        finally:
            topology.master.start()
        wait = asyncio.create_task(waiter.wait_for_result(task_id, timeout=30))
        await until(subscribed(waiter, task_id))
        writer = await make()
        await writer.store_result(task_id, result(task_id, S.SUCCESS, 2))
        assert await asyncio.wait_for(wait, WOKEN_WITHIN) == result(task_id, S.SUCCESS, 2)

"""RedisBackend on a single node, behind Sentinel and on a Cluster, against real servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    ConfigurationError,
    CorruptResultError,
    DatabaseError,
    InvalidTaskIdError,
    NotConnectedError,
    PoolExhaustedError,
    ResultNotSerializableError,
    ResultTooLargeError,
)
from chicory_backends.redis import RedisBackend
from chicory_backends.types import TaskResult, TaskState, WorkerStats
from tests.support.redis_servers import (  # noqa: F401  (fixtures are used by name)
    REDIS_MODES,
    RedisServer,
    SentinelTopology,
    redis_backend_for,
    redis_backends,
    redis_cluster,
    redis_sentinel,
    redis_throwaway,
    single_node_config,
    throwaway_config,
)
from tests.support.services import free_port

pytestmark = pytest.mark.redis

Make = Callable[..., Awaitable[RedisBackend]]

S = TaskState
NON_TERMINAL = [S.PENDING, S.STARTED, S.RETRY]
TERMINAL = [S.SUCCESS, S.FAILURE, S.DEAD_LETTERED]


def stats(worker_id: str) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id,
        hostname="host-1",
        pid=4242,
        queue="default",
        concurrency=4,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def result(task_id: str, state: TaskState = S.SUCCESS, value: Any = None, **kw: Any) -> TaskResult:
    return TaskResult(task_id=task_id, state=state, result=value, **kw)


@pytest.fixture
async def rb(make: Make) -> RedisBackend:
    return await make()


async def ttl_of(backend: RedisBackend, task_id: str) -> int:
    assert backend._client is not None
    return int(await backend._client.ttl(backend._result_key(task_id)))


# -- the contract on every mode -----------------------------------------------------------


async def test_store_and_get_round_trip(rb: RedisBackend) -> None:
    value = {"n": 2**62, "f": 0.1, "text": 'é/"\\ \u2603', "list": [], "obj": {}, "none": None}
    await rb.store_result("t1", result("t1", S.FAILURE, value, error="boom", traceback="tb\nx"))
    stored = await rb.get_result("t1")
    assert stored == result("t1", S.FAILURE, value, error="boom", traceback="tb\nx")
    assert await rb.get_result("unknown") is None


async def test_set_state_creates_then_keeps_the_result(rb: RedisBackend) -> None:
    await rb.set_state("new", S.PENDING)
    assert await rb.get_result("new") == result("new", S.PENDING)

    await rb.store_result("r", result("r", S.RETRY, [1, 2], error="try again"))
    await rb.set_state("r", S.STARTED)
    assert await rb.get_result("r") == result("r", S.STARTED, [1, 2], error="try again")

    await rb.store_result("s", result("s", S.SUCCESS, {"ok": True}))
    await rb.set_state("s", S.DEAD_LETTERED)  # a terminal write always writes, keeping the result
    assert await rb.get_result("s") == result("s", S.DEAD_LETTERED, {"ok": True})


@pytest.mark.parametrize("terminal", TERMINAL)
async def test_non_terminal_never_replaces_terminal(rb: RedisBackend, terminal: TaskState) -> None:
    final = result("t", terminal, {"v": 1}, error="e")
    await rb.store_result("t", final)
    for state in NON_TERMINAL:
        await rb.set_state("t", state)
        await rb.store_result("t", result("t", state, "late"))
    assert await rb.get_result("t") == final

    replacement = result("t", S.FAILURE, None, error="second", traceback="tb")
    await rb.store_result("t", replacement)  # terminal over terminal: the later one wins
    assert await rb.get_result("t") == replacement


async def test_non_terminal_store_replaces_non_terminal(rb: RedisBackend) -> None:
    await rb.store_result("t", result("t", S.RETRY, "first", error="e1"))
    await rb.store_result("t", result("t", S.STARTED))
    assert await rb.get_result("t") == result("t", S.STARTED)


async def test_get_results_in_one_call(rb: RedisBackend) -> None:
    ids = [f"task-{i}" for i in range(60)]  # spread over all three cluster nodes
    for i, task_id in enumerate(ids[:40]):
        await rb.store_result(task_id, result(task_id, S.SUCCESS, i))
    found = await rb.get_results([*ids, "missing", ids[0]])
    assert found == {task_id: result(task_id, S.SUCCESS, i) for i, task_id in enumerate(ids[:40])}
    assert await rb.get_results([]) == {}
    assert await rb.get_results(iter(["missing"])) == {}


async def test_delete_result(rb: RedisBackend) -> None:
    await rb.store_result("t", result("t", S.SUCCESS, 1))
    await rb.delete_result("t")
    assert await rb.get_result("t") is None
    await rb.delete_result("t")  # deleting what is gone is fine


async def test_heartbeats(rb: RedisBackend) -> None:
    assert await rb.get_heartbeat("w1") is None
    assert await rb.get_active_workers() == []
    await rb.store_heartbeat("w1", stats("w1"))
    newer = stats("w1").model_copy(update={"tasks_processed": 7})
    await rb.store_heartbeat("w1", newer, ttl=60)
    await rb.store_heartbeat("w2", stats("w2"))
    assert await rb.get_heartbeat("w1") == newer
    assert {w.worker_id for w in await rb.get_active_workers()} == {"w1", "w2"}
    assert await rb.cleanup_stale_clients(0) == 0
    with pytest.raises(ValueError):
        await rb.store_heartbeat("w3", stats("w3"), ttl=0)


async def test_heartbeat_registry_with_500_workers(rb: RedisBackend) -> None:
    live = [f"live-{i}" for i in range(400)]
    long_dead = [f"long-dead-{i}" for i in range(100)]
    just_dead = [f"just-dead-{i}" for i in range(50)]
    await asyncio.gather(*(rb.store_heartbeat(w, stats(w), ttl=60) for w in live))
    await asyncio.gather(*(rb.store_heartbeat(w, stats(w), ttl=1) for w in long_dead + just_dead))
    # Age the dead ones without sleeping: their heartbeats are gone, their index entries
    # say they expired 10 s and 10 min ago.
    client, now = rb._client, time.time()
    assert client is not None
    for group, age in ((long_dead, 600), (just_dead, 10)):
        for worker_id in group:
            await client.delete(rb._heartbeat_key(worker_id))
        await client.zadd(rb._index_key, {w: now - age for w in group})

    active = await rb.get_active_workers()
    assert sorted(w.worker_id for w in active) == sorted(live)
    assert all(w == stats(w.worker_id) for w in active)
    assert await rb.cleanup_stale_clients(stale_seconds=3600) == 0
    assert await rb.cleanup_stale_clients(stale_seconds=60) == 100
    assert await rb.cleanup_stale_clients(stale_seconds=60) == 0
    assert await rb.cleanup_stale_clients(stale_seconds=0) == 50
    assert int(await client.zcard(rb._index_key)) == 400


async def test_expiry_of_results_and_heartbeats(make: Make) -> None:
    rb = await make(result_ttl=1)
    await rb.store_result("done", result("done", S.SUCCESS, 1))
    await rb.set_state("running", S.STARTED)
    await rb.store_heartbeat("w", stats("w"), ttl=1)
    assert 0 < await ttl_of(rb, "done") <= 1
    assert 0 < await ttl_of(rb, "running") <= 1
    assert len(await rb.get_results(["done", "running"])) == 2
    assert len(await rb.get_active_workers()) == 1

    await asyncio.sleep(1.5)
    assert await rb.get_result("done") is None
    assert await rb.get_results(["done", "running"]) == {}
    assert await rb.get_heartbeat("w") is None
    assert await rb.get_active_workers() == []
    assert await rb.cleanup_stale_clients(stale_seconds=0) == 1


async def test_result_ttl_zero_never_expires(make: Make) -> None:
    rb = await make(result_ttl=0)
    await rb.set_state("t", S.PENDING)
    assert await ttl_of(rb, "t") == -1
    await rb.store_result("t", result("t", S.SUCCESS, "v"))
    assert await ttl_of(rb, "t") == -1
    await rb.set_state("t", S.FAILURE)
    assert await ttl_of(rb, "t") == -1


async def test_default_ttl_is_refreshed_by_every_write(make: Make) -> None:
    rb = await make(result_ttl=3600)
    await rb.set_state("t", S.STARTED)
    assert 3590 < await ttl_of(rb, "t") <= 3600
    writer = await make(result_ttl=7200)  # same prefix: a second process with another TTL
    await writer.store_result("t", result("t", S.SUCCESS, 1))
    assert 7190 < await ttl_of(rb, "t") <= 7200


async def test_terminal_state_race(rb: RedisBackend) -> None:
    """200 late non-terminal writes around one SUCCESS: SUCCESS and its result always win."""
    payload = {"answer": 42, "blob": "x" * 2000}
    for round_, position in enumerate((0, 100, 200)):
        task_id = f"race-{round_}"
        writes: list[Awaitable[None]] = [
            rb.set_state(task_id, NON_TERMINAL[i % 3]) for i in range(200)
        ]
        writes.insert(position, rb.store_result(task_id, result(task_id, S.SUCCESS, payload)))
        await asyncio.gather(*writes)
        assert await rb.get_result(task_id) == result(task_id, S.SUCCESS, payload)


async def test_bursts_wait_for_a_free_connection(make: Make) -> None:
    rb = await make(max_connections=2, pool_timeout=30)
    await rb.store_result("t", result("t", S.SUCCESS, 1))
    found = await asyncio.gather(*(rb.get_result("t") for _ in range(200)))
    assert all(r is not None and r.result == 1 for r in found)


async def test_healthcheck(rb: RedisBackend) -> None:
    status = await rb.healthcheck()
    assert status.connected and status.error is None
    assert status.latency_ms is not None and status.latency_ms >= 0
    await rb.disconnect()
    status = await rb.healthcheck()
    assert not status.connected and "not connected" in (status.error or "")
    await asyncio.gather(rb.connect(), rb.connect())  # connects again, once
    assert (await rb.healthcheck()).connected


async def test_corrupt_document_is_reported_and_replaceable(rb: RedisBackend) -> None:
    assert rb._client is not None
    await rb._client.set(rb._result_key("bad"), b"not json")
    with pytest.raises(CorruptResultError, match="bad"):
        await rb.get_result("bad")
    await rb.store_result("bad", result("bad", S.SUCCESS, 1))
    assert await rb.get_result("bad") == result("bad", S.SUCCESS, 1)


async def test_invalid_input_is_refused_before_io(rb: RedisBackend) -> None:
    for bad in ("", "x" * 256, "a\x00b", 7):
        with pytest.raises(InvalidTaskIdError):
            await rb.set_state(bad, S.STARTED)  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskIdError):
            await rb.store_result(bad, result("x", S.SUCCESS))  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskIdError):
            await rb.get_result(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskIdError):
            await rb.get_results(["ok", bad])  # type: ignore[list-item]
        with pytest.raises(InvalidTaskIdError):
            await rb.delete_result(bad)  # type: ignore[arg-type]
    for value in (object(), {1, 2}, float("nan"), {"k": b"bytes"}):
        with pytest.raises(ResultNotSerializableError):
            await rb.store_result("t", result("t", S.SUCCESS, value))
    with pytest.raises(ResultNotSerializableError):
        await rb.store_result("t", result("t", S.FAILURE, error="lone surrogate \ud800"))
    assert await rb.get_result("t") is None


# -- single node: errors, credentials, restarts --------------------------------------------


def unconnected() -> RedisBackend:
    return RedisBackend(RedisBackendConfig(host="127.0.0.1", port=free_port(), max_result_bytes=64))


CALLS: dict[str, Callable[[RedisBackend], Awaitable[Any]]] = {
    "set_state": lambda b: b.set_state("t", S.STARTED),
    "store_result": lambda b: b.store_result("t", result("t", S.SUCCESS, 1)),
    "get_result": lambda b: b.get_result("t"),
    "get_results": lambda b: b.get_results(["t", "u"]),
    "delete_result": lambda b: b.delete_result("t"),
    "store_heartbeat": lambda b: b.store_heartbeat("w", stats("w")),
    "get_heartbeat": lambda b: b.get_heartbeat("w"),
    "get_active_workers": lambda b: b.get_active_workers(),
    "cleanup_stale_clients": lambda b: b.cleanup_stale_clients(),
}


@pytest.mark.parametrize("call", CALLS)
async def test_not_connected(call: str) -> None:
    with pytest.raises(NotConnectedError, match="connect"):
        await CALLS[call](unconnected())


async def test_validation_comes_before_the_connection_check() -> None:
    backend = unconnected()
    with pytest.raises(InvalidTaskIdError):
        await backend.get_result("")
    with pytest.raises(ResultNotSerializableError):
        await backend.store_result("t", result("t", S.SUCCESS, object()))
    with pytest.raises(ResultTooLargeError):
        await backend.store_result("t", result("t", S.SUCCESS, "x" * 100))
    status = await backend.healthcheck()
    assert not status.connected


@pytest.mark.parametrize(
    "fields",
    [
        {"cluster": True, "sentinels": ["127.0.0.1:26379"]},
        {"cluster": True, "db": 3},
        {"sentinels": ["127.0.0.1:26379"], "url": "redis://127.0.0.1:6379/0"},
        {"sentinels": ["no-port-here"]},
        {"url": "redis://127.0.0.1:6379/0?db=x"},
        {"url": "redis://:secret@127.0.0.1:not-a-port/0"},
        {"url": "http://127.0.0.1:6379/0"},
    ],
)
async def test_configuration_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        await RedisBackend(RedisBackendConfig(**fields)).connect()
    assert "secret" not in str(info.value)


def test_cluster_accepts_the_default_db() -> None:
    assert RedisBackend(RedisBackendConfig(cluster=True)).mode == "redis-cluster"


async def test_connect_to_a_closed_port_fails_fast_and_stays_unconnected() -> None:
    backend = unconnected()
    started = time.monotonic()
    with pytest.raises(BackendUnreachableError) as info:
        await backend.connect()
    assert time.monotonic() - started < 5
    assert info.value.address == backend.config.address()
    with pytest.raises(NotConnectedError):
        await backend.get_result("t")


@pytest.fixture
def server(request: pytest.FixtureRequest) -> RedisServer:
    """A password-protected redis-server of this test's own (see redis_servers)."""
    throwaway: RedisServer = request.getfixturevalue("redis_throwaway")
    return throwaway


async def test_restart_the_server_under_a_connected_backend(server: RedisServer) -> None:
    secret = server.password
    assert secret
    backend = RedisBackend(throwaway_config(server))
    await backend.connect()
    await backend.store_result("t", result("t", S.SUCCESS, "before"))

    server.stop()
    for name, call in CALLS.items():
        started = time.monotonic()
        with pytest.raises(BackendUnreachableError) as info:
            await call(backend)
        assert time.monotonic() - started < 5, name
        assert info.value.address == f"127.0.0.1:{server.port}"
        assert secret not in str(info.value) and secret not in repr(info.value)
    status = await backend.healthcheck()
    assert not status.connected and secret not in (status.error or "")
    assert secret not in repr(backend)

    server.start()  # same port, empty data set (nothing saved)
    assert await backend.get_result("t") is None
    await backend.store_result("t", result("t", S.SUCCESS, "after"))
    assert await backend.get_result("t") == result("t", S.SUCCESS, "after")
    assert (await backend.healthcheck()).connected
    await backend.disconnect()


async def test_credentials_never_appear_in_errors(server: RedisServer) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}-password"
    configs = [
        throwaway_config(server, password=wrong),
        throwaway_config(server, password=None, url=f"redis://:{wrong}@127.0.0.1:{server.port}/0"),
        throwaway_config(server, password=None),  # no password at all: NOAUTH
    ]
    for config in configs:
        backend = RedisBackend(config)
        with pytest.raises(BackendUnreachableError) as info:
            await backend.connect()
        for text in (str(info.value), repr(info.value), repr(backend), repr(config)):
            assert wrong not in text and str(server.password) not in text


async def test_url_and_unix_socket(server: RedisServer) -> None:
    urls = [
        f"redis://:{server.password}@127.0.0.1:{server.port}/0",
        f"unix://:{server.password}@{server.unix_socket}?db=0",
    ]
    for url in urls:
        backend = RedisBackend(throwaway_config(server, password=None, url=url))
        await backend.connect()
        await backend.store_result("t", result("t", S.SUCCESS, url))
        assert (await backend.get_result("t")) == result("t", S.SUCCESS, url)
        assert str(server.password) not in repr(backend)
        await backend.disconnect()


async def test_a_full_pool_waits_then_reports_exhaustion() -> None:
    backend = RedisBackend(
        single_node_config(
            key_prefix=f"t-{uuid.uuid4().hex[:8]}", max_connections=1, pool_timeout=0.3
        )
    )
    await backend.connect()
    try:
        client = backend._client
        assert client is not None

        async def hold_the_only_connection() -> None:
            await client.blpop([f"{backend.config.key_prefix}:q"], 1)

        holder = asyncio.create_task(hold_the_only_connection())
        await asyncio.sleep(0.2)  # let the BLPOP take the only connection
        with pytest.raises(PoolExhaustedError):
            await backend.get_result("t")
        await holder
        assert await backend.get_result("t") is None  # and works again once it is free
    finally:
        await backend.disconnect()


async def test_sentinel_master_restart(request: pytest.FixtureRequest) -> None:
    """The Sentinel-discovered pool drops dead connections and finds the master again."""
    topology: SentinelTopology = request.getfixturevalue("redis_sentinel")
    async with redis_backends("redis-sentinel") as make:
        backend = await make()
        await backend.store_result("t", result("t", S.SUCCESS, 1))
        topology.master.stop()
        try:
            with pytest.raises(BackendUnreachableError, match="sentinel"):
                await backend.get_result("t")
            assert not (await backend.healthcheck()).connected
        finally:
            topology.master.start()
        await backend.store_result("t", result("t", S.SUCCESS, 2))
        assert await backend.get_result("t") == result("t", S.SUCCESS, 2)


async def test_bursts_never_open_more_connections_than_the_pool_holds() -> None:
    """Bursts far wider than max_connections, batch after batch: the pool keeps what it
    opened (redis-py's pools never close a returned connection), so it opens at most its
    maximum over the whole run."""
    async with redis_backend_for("redis", max_connections=3, pool_timeout=30) as rb:
        assert rb._client is not None
        pool = rb._client.connection_pool
        opened = [0]
        make_connection = pool.make_connection

        def counted() -> Any:
            opened[0] += 1
            return make_connection()

        pool.make_connection = counted  # type: ignore[method-assign]
        for round_ in range(20):
            ids = [f"burst-{round_}-{n}" for n in range(64)]
            await asyncio.gather(
                *(rb.store_result(i, result(i, S.SUCCESS, n)) for n, i in enumerate(ids))
            )
            found = await asyncio.gather(*(rb.get_result(i) for i in ids))
            assert [r.result if r else None for r in found] == list(range(64))
        assert opened[0] <= 3 - 1, opened  # connect() opened the first one


async def test_a_command_the_server_refuses_is_a_database_error(rb: RedisBackend) -> None:
    """The same error class as a statement a SQL server refuses."""
    assert rb._client is not None
    await rb._client.lpush(rb._result_key("wrong-type"), b"x")  # not a string: WRONGTYPE
    with pytest.raises(DatabaseError, match="refused the command"):
        await rb.get_result("wrong-type")


async def test_a_refused_script_in_a_pipeline_fails_only_its_own_call(rb: RedisBackend) -> None:
    """Writes that arrive together go as one pipeline of scripts; one the server refuses
    (its key holds a list: WRONGTYPE) fails its own call, the others are stored."""
    assert rb._client is not None
    await rb._client.lpush(rb._result_key("refused"), b"x")
    ids = [f"ok-{n}" for n in range(10)]
    blocker = rb.set_state("blocker", S.STARTED)  # takes the one send slot
    calls = [rb.store_result(i, result(i, S.SUCCESS, i)) for i in ids]
    calls.insert(5, rb.store_result("refused", result("refused", S.SUCCESS)))
    outcomes = await asyncio.gather(blocker, *calls, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], DatabaseError), outcomes
    assert outcomes[6] is failed[0]
    assert sorted(await rb.get_results(ids)) == sorted(ids)


@pytest.mark.parametrize("mode", ["redis-cluster"], indirect=True)
async def test_a_burst_larger_than_the_pool_is_written_whole_on_cluster(make: Make) -> None:
    """A Cluster batch sends its scripts at once; each takes a slot of the backend's
    max_connections, so a burst of many times the pool waits instead of exhausting a
    node's pool (PoolExhaustedError, before)."""
    rb = await make(max_connections=8)
    ids = [f"burst-{uuid.uuid4().hex[:8]}-{n}" for n in range(400)]
    await asyncio.gather(
        *(
            rb.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=n))
            for n, task_id in enumerate(ids)
        )
    )
    found = await rb.get_results(ids)
    assert {task_id: found[task_id].result for task_id in ids} == {
        task_id: n for n, task_id in enumerate(ids)
    }

"""Chicory 0.1.0's own Redis documents and heartbeats read by ours exactly, and ours
written for Chicory's own client (``write_chicory_format``), against real servers.

Every Chicory-side write and read goes through Chicory's own classes
(``chicory.backend.redis.RedisBackend``, ``chicory.types.TaskResult`` and ``WorkerStats``),
never through hand-written JSON. Chicory always writes under the prefix "chicory"; here
``ChicoryAt`` moves its keys under each test's own prefix (its writes unchanged) so that
tests do not share keys, and ``test_default_prefix_is_chicorys_own`` checks the real
layout with Chicory's class as it ships.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from chicory.backend.redis import RedisBackend as ChicoryRedisBackend
from chicory.config import RedisBackendConfig as ChicoryRedisConfig
from chicory.types import TaskResult as ChicoryResult
from chicory.types import TaskState as ChicoryState
from chicory.types import WorkerStats as ChicoryStats
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from chicory_backends.chicory_format import chicory_shaped_document, is_chicory_shaped
from chicory_backends.codec import UNKNOWN_TIME, encode_document, encode_state_document
from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import TaskFailedError
from chicory_backends.history import write_fields
from chicory_backends.redis import RedisBackend
from chicory_backends.result import AsyncResult
from chicory_backends.types import TaskDetails, TaskResult, TaskState, WorkerStats
from tests.support.redis_servers import (  # noqa: F401  (fixtures are used by name)
    SINGLE_NODE_DB,
    redis_cluster,
    redis_sentinel,
    sentinel_topology,
    single_node_config,
)
from tests.support.result_helpers import same

pytestmark = pytest.mark.redis

Make = Callable[..., Awaitable[RedisBackend]]
S = TaskState

# Strings that look like JSON stay strings; every JSON type, nesting and unicode.
VALUES: list[Any] = [
    "42", "true", "[1, 2]", "null", "", None, True, False, 0, -1.5, 0.1, 10**20, 2**62,
    {"a": [1, {"b": None}]}, "ünïcode ✓", '{"x": 1}', [], {}, [[]], {"e": {}}, 'é/"\\ \u2603',
]  # fmt: skip
FAILED = {S.FAILURE, S.DEAD_LETTERED}


def chicory_result(task_id: str, state: TaskState, value: Any) -> ChicoryResult[Any]:
    """Chicory's own TaskResult; failed states carry an error and a traceback."""
    failed = state in FAILED
    return ChicoryResult(
        task_id=task_id,
        state=ChicoryState(state.value),
        result=value,
        error=f"boom ✓ {state.value}" if failed else None,
        traceback="Traceback (most recent call last):\n  ...\nValueError: ✓\n" if failed else None,
    )


def chicory_stats(worker_id: str) -> ChicoryStats:
    return ChicoryStats(
        worker_id=worker_id,
        hostname="old-host",
        pid=1234,
        queue="default",
        concurrency=8,
        tasks_processed=5,
        tasks_failed=1,
        active_tasks=2,
        started_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        last_heartbeat=datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC),
    )


def our_stats(worker_id: str) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id,
        hostname="new-host",
        pid=4321,
        queue="default",
        concurrency=4,
        started_at=datetime(2026, 2, 1, tzinfo=UTC),
    )


def stats_fields(stats: ChicoryStats | WorkerStats) -> dict[str, Any]:
    """The fields both WorkerStats models share, as JSON."""
    fields = stats.model_dump(mode="json", exclude={"uptime_seconds", "broker", "backend"})
    return {name: value for name, value in fields.items() if name != "uptime_seconds"}


def assert_reads_as(got: TaskResult | None, expected: ChicoryResult[Any]) -> None:
    """Our TaskResult says what Chicory stored: state, value (and its type), error."""
    assert got is not None
    assert got.state.value == expected.state.value
    assert same(got.result, expected.result), (got.result, expected.result)
    assert (got.error, got.traceback) == (expected.error, expected.traceback)


class ChicoryAt(ChicoryRedisBackend):
    """Chicory 0.1.0's own RedisBackend, every write and read its own, with its keys under
    ``prefix`` instead of the "chicory" it always uses, and on Cluster a cluster client."""

    def __init__(self, prefix: str, url: str, cluster: RedisBackendConfig | None = None) -> None:
        super().__init__(ChicoryRedisConfig(url=url))
        self.prefix = prefix
        self._cluster = cluster

    async def connect(self) -> None:
        if self._cluster is None:
            await super().connect()
            return
        client = RedisCluster(host=self._cluster.host, port=self._cluster.port)
        await client.ping()
        self._client = client  # type: ignore[assignment]

    def _state_key(self, task_id: str) -> str:  # type: ignore[override]
        return f"{self.prefix}:state:{task_id}"

    def _result_key(self, task_id: str) -> str:  # type: ignore[override]
        return f"{self.prefix}:result:{task_id}"

    def _heartbeat_key(self, worker_id: str) -> str:  # type: ignore[override]
        return f"{self.prefix}:heartbeat:{worker_id}"

    def _workers_set_key(self) -> str:  # type: ignore[override]
        return f"{self.prefix}:workers"


def chicory_beside(mode: str, ours: RedisBackend) -> ChicoryAt:
    """Chicory's backend on the server(s) and key prefix of ``ours``."""
    config = ours.config
    if mode == "redis":
        return ChicoryAt(config.key_prefix, f"redis://{config.host}:{config.port}/{config.db}")
    if mode == "redis-sentinel":
        master = sentinel_topology().master.port
        return ChicoryAt(config.key_prefix, f"redis://127.0.0.1:{master}/{config.db}")
    return ChicoryAt(config.key_prefix, "redis://unused", cluster=config)


@pytest.fixture
async def ours(make: Make) -> RedisBackend:
    return await make()


@pytest.fixture
async def chicory(mode: str, ours: RedisBackend) -> AsyncIterator[ChicoryAt]:
    """Connected to the same keys as ``ours`` (which the ``make`` fixture deletes)."""
    backend = chicory_beside(mode, ours)
    await backend.connect()
    yield backend
    await backend.disconnect()


async def raw_document(ours: RedisBackend, task_id: str) -> dict[str, Any]:
    assert ours._client is not None
    raw = await ours._client.get(ours._result_key(task_id))
    assert raw is not None
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


# -- the rule that tells the two documents apart (no server) -------------------------------


@pytest.mark.parametrize("state", list(S))
def test_our_documents_never_have_a_task_id_key(state: TaskState) -> None:
    """Ours never carries "task_id", whatever its values say; Chicory's always does."""
    now = datetime.now(UTC)
    details = TaskDetails(name="task_id", queue="task_id", worker_id="task_id", attempt=1)
    history = {**write_fields("task_id", state, details, now), "created_at": now}
    for value in [*VALUES, {"task_id": "x"}, "task_id", '"task_id":']:
        stored = TaskResult(task_id="task_id", state=state, result=value, error="task_id")
        for doc in (
            encode_document("task_id", stored, None, history),
            encode_state_document("task_id", state, history),
        ):
            assert not is_chicory_shaped(json.loads(doc))
        chicorys = chicory_result("task_id", state, value).model_dump_json()
        assert is_chicory_shaped(json.loads(chicorys))


def test_ours_for_chicory_is_chicory_shaped_and_ends_with_the_result_fields() -> None:
    """write_chicory_format's document: Chicory's TaskResult parses it, every value exact,
    and "result", "error", "traceback" come last (where the store script cuts)."""
    now = datetime.now(UTC)
    history = {**write_fields("t", S.SUCCESS, TaskDetails(name="n"), now), "created_at": now}
    for value in VALUES:
        stored = TaskResult(task_id="t", state=S.FAILURE, result=value, error="e", traceback="tb")
        doc = chicory_shaped_document("t", encode_document("t", stored, None, history))
        loaded = json.loads(doc)
        assert is_chicory_shaped(loaded)
        assert list(loaded)[-3:] == ["result", "error", "traceback"]
        assert loaded["name"] == "n"
        parsed = ChicoryResult.model_validate_json(doc)
        assert same(parsed.result, value)
        assert (parsed.state.value, parsed.error, parsed.traceback) == ("FAILURE", "e", "tb")


def test_chicorys_worker_set_shares_the_slot_of_our_worker_index() -> None:
    """So store_heartbeat adds to it inside its transaction on Cluster too."""
    for prefix in ("chicory", "app", "x-1"):
        assert key_slot(f"{prefix}:workers".encode()) == key_slot(
            f"{{{prefix}:workers}}:index".encode()
        )


def test_write_chicory_format_is_off_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHICORY_BACKEND_REDIS_WRITE_CHICORY_FORMAT", raising=False)
    assert RedisBackendConfig().write_chicory_format is False
    monkeypatch.setenv("CHICORY_BACKEND_REDIS_WRITE_CHICORY_FORMAT", "true")
    assert RedisBackendConfig().write_chicory_format is True


# -- Chicory wrote, ours reads: every mode --------------------------------------------------


async def test_every_state_and_value_chicory_stored_reads_exactly(
    ours: RedisBackend, chicory: ChicoryAt
) -> None:
    seeded: dict[str, ChicoryResult[Any]] = {}
    for state in S:
        for number, value in enumerate(VALUES):
            task_id = f"c-{state.value}-{number}"
            seeded[task_id] = chicory_result(task_id, state, value)
            await chicory.store_result(task_id, seeded[task_id])

    # Chicory's own client reads the same, so the comparison is with what it says.
    for task_id, expected in seeded.items():
        assert_reads_as(await ours.get_result(task_id), expected)
        chicorys = await chicory.get_result(task_id)
        assert chicorys is not None and same(chicorys.result, expected.result)

    batch = await ours.get_results([*seeded, "never-written"])
    assert batch.keys() == seeded.keys()
    for task_id, expected in seeded.items():
        assert_reads_as(batch[task_id], expected)

    for task_id, expected in seeded.items():
        record = await ours.get_task(task_id)
        assert record is not None and record.state.value == expected.state.value
        assert same(record.result, expected.result)
        assert (record.error, record.traceback) == (expected.error, expected.traceback)
        assert (record.created_at, record.updated_at) == (UNKNOWN_TIME, UNKNOWN_TIME)
        assert record.name is None and record.attempts == 0

    for task_id, expected in seeded.items():
        handle = AsyncResult(task_id, ours)
        assert (await handle.state()).value == expected.state.value
        if expected.state.value == "SUCCESS":
            assert same(await handle.get(timeout=5), expected.result)
        elif expected.state.value in {"FAILURE", "DEAD_LETTERED"}:
            with pytest.raises(TaskFailedError) as failed:
                await handle.get(timeout=5)
            assert (failed.value.error, failed.value.traceback) == (
                expected.error,
                expected.traceback,
            )
        else:
            assert not await handle.ready()


@pytest.mark.parametrize("state", list(S))
async def test_a_task_chicory_only_set_state_reads_as_that_state(
    ours: RedisBackend, chicory: ChicoryAt, state: TaskState
) -> None:
    """Chicory's set_state writes only ``P:state:<id>`` (its ignore_result SUCCESS too):
    ours returns that state with no value, in get_result, get_results and get_task."""
    await chicory.set_state("only-state", ChicoryState(state.value))
    assert await chicory.get_result("only-state") is None  # Chicory's own client: nothing
    got = await ours.get_result("only-state")
    assert got == TaskResult(task_id="only-state", state=state)
    assert await ours.get_results(["only-state"]) == {"only-state": got}
    record = await ours.get_task("only-state")
    assert record is not None and record.state is state and record.result is None
    assert record.created_at == UNKNOWN_TIME
    assert await AsyncResult("only-state", ours).state() is state
    assert (await ours.wait_for_result("only-state", timeout=0.2) is not None) is state.is_terminal
    await ours.delete_result("only-state")
    assert await ours.get_result("only-state") is None


async def test_a_terminal_state_from_chicory_beats_our_pending_document(
    ours: RedisBackend, chicory: ChicoryAt
) -> None:
    """Our client wrote PENDING, an old worker finished with ignore_result (set_state
    SUCCESS): the task reads SUCCESS, keeping our history; a non-terminal state of
    Chicory's does not override our document."""
    await ours.set_state("mixed", S.PENDING, TaskDetails(name="job"))
    await chicory.set_state("mixed", ChicoryState.STARTED)
    assert (await ours.get_result("mixed")) == TaskResult(task_id="mixed", state=S.PENDING)
    await chicory.set_state("mixed", ChicoryState.SUCCESS)
    assert await ours.get_result("mixed") == TaskResult(task_id="mixed", state=S.SUCCESS)
    assert await ours.get_results(["mixed"]) == {
        "mixed": TaskResult(task_id="mixed", state=S.SUCCESS)
    }
    record = await ours.get_task("mixed")
    assert record is not None and record.state is S.SUCCESS and record.name == "job"
    assert record.enqueued_at is not None
    assert await AsyncResult("mixed", ours).get(timeout=5) is None


async def test_a_waiter_sees_what_chicory_stores_at_its_recheck(
    ours: RedisBackend, chicory: ChicoryAt
) -> None:
    """Chicory publishes nothing: waiters see its results at their re-check."""
    ours.recheck_interval = 0.3
    waiter = asyncio.create_task(AsyncResult("later", ours).get(timeout=10))
    await asyncio.sleep(0.1)
    await chicory.store_result("later", chicory_result("later", S.SUCCESS, "42"))
    assert await waiter == "42"


async def test_the_guard_treats_chicorys_terminal_document_as_terminal(
    ours: RedisBackend, chicory: ChicoryAt
) -> None:
    """A late non-terminal write of ours is refused over Chicory's SUCCESS; a terminal
    set_state of ours keeps its value exactly; a store of ours replaces it with ours."""
    for number, value in enumerate(VALUES):
        task_id = f"guarded-{number}"
        stored = chicory_result(task_id, S.SUCCESS, value)
        await chicory.store_result(task_id, stored)
        await ours.set_state(task_id, S.STARTED, TaskDetails(attempt=5))
        await ours.store_result(task_id, TaskResult(task_id=task_id, state=S.RETRY))
        assert_reads_as(await ours.get_result(task_id), stored)
        chicorys = await chicory.get_result(task_id)  # untouched: Chicory still reads it
        assert chicorys is not None and same(chicorys.result, value)

        await ours.set_state(task_id, S.SUCCESS, TaskDetails(name="job", attempt=1))
        assert_reads_as(await ours.get_result(task_id), stored)
        doc = await raw_document(ours, task_id)
        assert "task_id" not in doc and doc["name"] == "job"  # ours now

    await chicory.store_result("replaced", chicory_result("replaced", S.SUCCESS, "42"))
    await ours.store_result(
        "replaced", TaskResult(task_id="replaced", state=S.FAILURE, error="e", traceback="tb")
    )
    got = await ours.get_result("replaced")
    assert got == TaskResult(task_id="replaced", state=S.FAILURE, error="e", traceback="tb")
    assert "task_id" not in await raw_document(ours, "replaced")
    record = await ours.get_task("replaced")
    assert record is not None and record.created_at != UNKNOWN_TIME
    page = await ours.list_tasks()
    assert "replaced" in {item.task_id for item in page.items}  # indexed from our write on


async def test_chicorys_heartbeats_are_seen_while_their_key_lives(
    ours: RedisBackend, chicory: ChicoryAt
) -> None:
    await chicory.store_heartbeat("c-alive", chicory_stats("c-alive"), ttl=60)
    await chicory.store_heartbeat("c-gone", chicory_stats("c-gone"), ttl=1)
    await ours.store_heartbeat("o-1", our_stats("o-1"), ttl=60)
    await asyncio.sleep(1.2)

    active = {stats.worker_id: stats for stats in await ours.get_active_workers()}
    assert active.keys() == {"c-alive", "o-1"}
    assert stats_fields(active["c-alive"]) == stats_fields(chicory_stats("c-alive"))
    assert active["o-1"] == our_stats("o-1")
    alive = await ours.get_heartbeat("c-alive")
    assert alive is not None and stats_fields(alive) == stats_fields(chicory_stats("c-alive"))
    assert await ours.get_heartbeat("c-gone") is None

    assert await ours.cleanup_stale_clients(stale_seconds=3600) == 1  # c-gone, from the set
    assert chicory._client is not None
    members = await chicory._client.smembers(chicory._workers_set_key())
    assert {m.decode() for m in members} == {"c-alive"}


# -- ours wrote with write_chicory_format, Chicory reads: every mode -----------------------


async def test_chicory_reads_every_state_and_value_we_store_for_it(
    make: Make, chicory: ChicoryAt
) -> None:
    writer = await make(write_chicory_format=True)
    plain = await make()  # the setting off: still reads what the setting wrote
    expected: dict[str, ChicoryResult[Any]] = {}
    for state in S:
        for number, value in enumerate(VALUES):
            task_id = f"o-{state.value}-{number}"
            expected[task_id] = chicory_result(task_id, state, value)
            ours = TaskResult.model_validate(expected[task_id].model_dump())
            await writer.store_result(task_id, ours, TaskDetails(name="job", attempt=1))

    for task_id, wanted in expected.items():
        got = await chicory.get_result(task_id)
        assert got is not None and got.task_id == task_id
        assert got.state.value == wanted.state.value
        assert same(got.result, wanted.result), (got.result, wanted.result)
        assert (got.error, got.traceback) == (wanted.error, wanted.traceback)
        assert_reads_as(await plain.get_result(task_id), wanted)
        record = await plain.get_task(task_id)
        assert record is not None and record.name == "job" and record.attempts == 1
        assert record.created_at != UNKNOWN_TIME and same(record.result, wanted.result)
    batch = await plain.get_results(expected)
    for task_id, wanted in expected.items():
        assert_reads_as(batch[task_id], wanted)
    listed = await plain.list_tasks(limit=1000)
    assert {item.task_id for item in listed.items} == set(expected)


async def test_merged_writes_stay_readable_by_chicory(make: Make, chicory: ChicoryAt) -> None:
    """PENDING, STARTED, the result, a late STARTED, a terminal set_state, and a write with
    the setting off then on again: Chicory reads the value exactly after each."""
    writer = await make(write_chicory_format=True)
    plain = await make()
    for number, value in enumerate(VALUES):
        task_id = f"merged-{number}"
        await writer.set_state(task_id, S.PENDING, TaskDetails(name="job"))
        pending = await chicory.get_result(task_id)
        assert pending is not None and pending.state == ChicoryState.PENDING
        assert pending.result is None
        await writer.set_state(task_id, S.STARTED, TaskDetails(attempt=1, worker_id="w"))
        await writer.store_result(
            task_id,
            TaskResult(task_id=task_id, state=S.SUCCESS, result=value),
            TaskDetails(attempt=1),
        )
        await writer.set_state(task_id, S.STARTED, TaskDetails(attempt=1))  # refused
        await writer.set_state(task_id, S.SUCCESS, TaskDetails(attempt=1))
        for reader in (plain, writer):
            got = await reader.get_result(task_id)
            assert got is not None and got.state is S.SUCCESS and same(got.result, value)
        chicorys = await chicory.get_result(task_id)
        assert chicorys is not None and chicorys.state == ChicoryState.SUCCESS
        assert same(chicorys.result, value)

        await plain.set_state(task_id, S.SUCCESS, TaskDetails(attempt=1))  # setting off: ours
        assert "task_id" not in await raw_document(plain, task_id)
        await writer.set_state(task_id, S.SUCCESS, TaskDetails(attempt=1))  # on: Chicory's
        chicorys = await chicory.get_result(task_id)
        assert chicorys is not None and same(chicorys.result, value)
        record = await plain.get_task(task_id)
        assert record is not None and (record.name, record.worker_id) == ("job", "w")


async def test_chicory_sees_the_heartbeats_we_write_for_it(make: Make, chicory: ChicoryAt) -> None:
    writer = await make(write_chicory_format=True)
    await writer.store_heartbeat("o-w", our_stats("o-w"), ttl=60)
    workers = {stats.worker_id: stats for stats in await chicory.get_active_workers()}
    assert workers.keys() == {"o-w"}
    assert stats_fields(workers["o-w"]) == stats_fields(our_stats("o-w"))
    single = await chicory.get_heartbeat("o-w")
    assert single is not None and stats_fields(single) == stats_fields(our_stats("o-w"))
    # Listed once by ours, though it is in both registries.
    assert [stats.worker_id for stats in await writer.get_active_workers()] == ["o-w"]


# -- the real layout: Chicory's class as it ships, our default prefix -----------------------


@pytest.fixture
async def shared_keys() -> AsyncIterator[tuple[str, list[str], list[str]]]:
    """A run tag, and the task ids and worker ids a test writes under the shared prefix
    "chicory" (single node, db 1); exactly those keys are deleted afterwards."""
    config = single_node_config()
    tag = uuid.uuid4().hex[:12]
    task_ids: list[str] = []
    worker_ids: list[str] = []
    yield tag, task_ids, worker_ids
    client = Redis(host=config.host, port=config.port, db=SINGLE_NODE_DB)
    try:
        keys = [f"chicory:{kind}:{t}" for t in task_ids for kind in ("result", "state")]
        keys += [f"chicory:heartbeat:{w}" for w in worker_ids]
        keys += [f"{{chicory:workers}}:hb:{w}" for w in worker_ids]
        if keys:
            await client.delete(*keys)
        if task_ids:
            await client.zrem("chicory:history", *task_ids)
        if worker_ids:
            await client.srem("chicory:workers", *worker_ids)
            await client.zrem("{chicory:workers}:index", *worker_ids)
    finally:
        await client.aclose()


async def test_default_prefix_is_chicorys_own(
    shared_keys: tuple[str, list[str], list[str]],
) -> None:
    tag, task_ids, worker_ids = shared_keys
    defaults = {name: field.default for name, field in RedisBackendConfig.model_fields.items()}
    assert (defaults["key_prefix"], defaults["db"]) == ("chicory", 1)
    assert ChicoryRedisConfig.model_fields["db"].default == 1
    base = single_node_config()
    assert (base.key_prefix, base.db) == ("chicory", SINGLE_NODE_DB)
    chicory = ChicoryRedisBackend(
        ChicoryRedisConfig(url=f"redis://{base.host}:{base.port}/{SINGLE_NODE_DB}")
    )
    plain = RedisBackend(base)
    writer = RedisBackend(base.model_copy(update={"write_chicory_format": True}))
    for backend in (chicory, plain, writer):
        await backend.connect()
    try:
        for number, value in enumerate(VALUES):
            theirs, mine = f"theirs-{tag}-{number}", f"mine-{tag}-{number}"
            task_ids += [theirs, mine]
            expected = chicory_result(theirs, S.SUCCESS, value)
            await chicory.store_result(theirs, expected)
            assert_reads_as(await plain.get_result(theirs), expected)
            await writer.store_result(mine, TaskResult(task_id=mine, state=S.SUCCESS, result=value))
            got = await chicory.get_result(mine)
            assert got is not None and same(got.result, value)
        worker_ids += [f"c-{tag}", f"o-{tag}"]
        await chicory.store_heartbeat(f"c-{tag}", chicory_stats(f"c-{tag}"), ttl=60)
        await writer.store_heartbeat(f"o-{tag}", our_stats(f"o-{tag}"), ttl=60)
        assert {f"c-{tag}", f"o-{tag}"} <= {s.worker_id for s in await plain.get_active_workers()}
        assert {f"c-{tag}", f"o-{tag}"} <= {s.worker_id for s in await chicory.get_active_workers()}
    finally:
        for backend in (chicory, plain, writer):
            await backend.disconnect()

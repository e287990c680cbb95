"""The task history on Redis (single node, Sentinel, Cluster), against real servers: the
store script's merges (the SQL rules), the recent-history index, keyset pages, filters,
summaries and documents written before the history."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chicory_backends.config import SQLBackendConfig
from chicory_backends.history import rank_of
from chicory_backends.redis import RedisBackend
from chicory_backends.redis import backend as redis_backend_module
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import TaskDetails, TaskRecord, TaskResult, TaskState
from tests.support.redis_servers import (  # noqa: F401  (fixtures are used by name)
    redis_cluster,
    redis_sentinel,
)

pytestmark = pytest.mark.redis

Make = Callable[..., Awaitable[RedisBackend]]
S = TaskState
T0 = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


def result(task_id: str, state: TaskState, value: Any = None, **kw: Any) -> TaskResult:
    return TaskResult(task_id=task_id, state=state, result=value, **kw)


def details(attempt: int = 0, **kw: Any) -> TaskDetails:
    return TaskDetails(attempt=attempt, **kw)


class Clock:
    """The backend's clock, set by the test: ``datetime.now`` in redis/backend.py."""

    def __init__(self) -> None:
        self.now = T0

    def set(self, when: datetime) -> None:
        self.now = when

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    current = Clock()

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FrozenDatetime:
            return current.now  # type: ignore[return-value]

    monkeypatch.setattr(redis_backend_module, "datetime", FrozenDatetime)
    yield current


@pytest.fixture
async def rb(make: Make) -> RedisBackend:
    return await make()


def raw_client(backend: RedisBackend) -> Any:
    assert backend._client is not None
    return backend._client


async def ttl_of(backend: RedisBackend, task_id: str) -> int:
    return int(await raw_client(backend).ttl(backend._result_key(task_id)))


# -- merges: the SQL rules in the store script ---------------------------------------------


async def test_a_late_pending_changes_nothing(rb: RedisBackend, clock: Clock) -> None:
    await rb.set_state("t", S.STARTED, details(1, worker_id="w1"))
    started = clock.now
    before = await rb.get_task("t")
    clock.advance(seconds=1)
    late = details(0, name="send", queue="mail", worker_id="w0", args_json='{"args":[1]}')
    await rb.set_state("t", S.PENDING, late)
    assert await rb.get_task("t") == before  # refused: not even the fills land
    assert before is not None and before.started_at == started


async def test_fills_keep_the_first_value(rb: RedisBackend, clock: Clock) -> None:
    await rb.set_state("t", S.PENDING, details(name="first", queue="q1", args_json="[1]"))
    enqueued = clock.now
    clock.advance(seconds=1)
    await rb.set_state("t", S.PENDING, details(name="second", queue="q2", args_json="[2]"))
    task = await rb.get_task("t")
    assert task is not None
    assert (task.name, task.queue, task.args, task.enqueued_at) == ("first", "q1", [1], enqueued)
    assert task.updated_at == clock.now  # written: replaced


async def test_an_older_attempt_is_refused(rb: RedisBackend, clock: Clock) -> None:
    await rb.set_state("t", S.STARTED, details(2, worker_id="w2"))
    clock.advance(seconds=1)
    old = result("t", S.FAILURE, error="attempt 1 failed")
    await rb.store_result("t", old, details(1, worker_id="w1"))  # terminal, but older
    task = await rb.get_task("t")
    assert task is not None
    assert (task.state, task.attempts, task.worker_id, task.error) == (S.STARTED, 2, "w2", None)
    assert task.finished_at is None
    await rb.store_result("t", result("t", S.SUCCESS, "ok"), details(2))
    task = await rb.get_task("t")
    assert task is not None
    assert (task.state, task.result, task.attempts, task.worker_id) == (S.SUCCESS, "ok", 2, "w2")
    assert task.finished_at == clock.now


async def test_the_terminal_guard(rb: RedisBackend, clock: Clock) -> None:
    await rb.store_result("t", result("t", S.SUCCESS, 1), details(1, worker_id="w1"))
    finished = clock.now
    clock.advance(seconds=1)
    await rb.set_state("t", S.STARTED, details(5, worker_id="w5"))  # newer, not terminal
    await rb.store_result("t", result("t", S.RETRY, error="again"), details(5))
    task = await rb.get_task("t")
    assert task is not None
    assert (task.state, task.result, task.attempts, task.worker_id) == (S.SUCCESS, 1, 1, "w1")
    assert task.finished_at == finished and task.started_at is None
    # terminal over terminal: the later write wins; set_state keeps the result
    await rb.set_state("t", S.DEAD_LETTERED, details(1))
    task = await rb.get_task("t")
    assert task is not None
    assert (task.state, task.result, task.finished_at) == (S.DEAD_LETTERED, 1, clock.now)


async def test_set_state_keeps_the_result_and_clears_finished_at(
    rb: RedisBackend, clock: Clock
) -> None:
    await rb.store_result("t", result("t", S.RETRY, [1], error="e", traceback="tb"), details(1))
    clock.advance(seconds=1)
    await rb.set_state("t", S.STARTED, details(2, worker_id="w"))
    task = await rb.get_task("t")
    assert task is not None
    assert (task.state, task.result, task.error, task.traceback) == (S.STARTED, [1], "e", "tb")
    assert task.started_at == clock.now and task.finished_at is None
    clock.advance(seconds=2)
    await rb.store_result("t", result("t", S.SUCCESS, None), details(2))  # replaces all three
    task = await rb.get_task("t")
    assert task is not None
    assert (task.result, task.error, task.traceback, task.worker_id) == (None, None, None, "w")
    assert task.runtime == 2.0
    assert await rb.get_result("t") == result("t", S.SUCCESS, None)


async def test_a_refused_write_keeps_the_ttl(make: Make) -> None:
    rb = await make(result_ttl=1000)
    await rb.set_state("t", S.STARTED, details(1))
    await raw_client(rb).expire(rb._result_key("t"), 50)
    await rb.set_state("t", S.PENDING, details(0, name="late"))  # refused: untouched
    assert 0 < await ttl_of(rb, "t") <= 50
    task = await rb.get_task("t")
    assert task is not None and task.name is None and task.state is S.STARTED
    await rb.set_state("t", S.RETRY, details(1))  # written: the TTL starts again
    assert await ttl_of(rb, "t") > 900


async def test_stored_times_keep_their_microseconds(rb: RedisBackend, clock: Clock) -> None:
    clock.set(datetime(2026, 6, 1, 12, 0, 0, 999999, tzinfo=UTC))
    await rb.set_state("t", S.PENDING)
    clock.advance(microseconds=1)
    await rb.set_state("t", S.STARTED, details(1))  # re-encoded by cjson in the script
    task = await rb.get_task("t")
    assert task is not None
    assert task.enqueued_at == datetime(2026, 6, 1, 12, 0, 0, 999999, tzinfo=UTC)
    assert task.started_at == datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)


def _write_plans(seed: int) -> Iterator[list[tuple[str, TaskState, int, dict[str, Any]]]]:
    rng = random.Random(seed)
    for _ in range(40):
        plan = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(["s", "r"])
            state = rng.choice(list(TaskState))
            extra: dict[str, Any] = {}
            for field in ("name", "queue", "worker_id"):
                if rng.random() < 0.5:
                    extra[field] = f"{field}-{rng.randint(0, 3)}"
            if rng.random() < 0.3:
                extra["args_json"] = json.dumps([rng.randint(0, 9)])
            plan.append((kind, state, rng.randint(0, 3), extra))
        yield plan


@pytest.mark.parametrize("mode", ["redis"], indirect=True)  # one script for every mode
async def test_merges_equal_the_sql_backend(
    make: Make, mode: str, sql_databases: Callable[[str], SQLBackendConfig]
) -> None:
    """Random sequences of writes end in the same record on Redis and on SQLite (but for
    the times, of which only which ones are set is compared)."""
    rb = await make()
    sql = DatabaseBackend(sql_databases("sqlite"))
    await sql.connect()
    run = uuid.uuid4().hex[:8]
    try:
        for n, plan in enumerate(_write_plans(seed=13)):
            task_id = f"merge-{run}-{n}"
            for step, (kind, state, attempt, extra) in enumerate(plan):
                about = details(attempt, **extra)
                for backend in (rb, sql):
                    if kind == "s":
                        await backend.set_state(task_id, state, about)
                    else:
                        value = result(task_id, state, [n, step], error=f"e{step}")
                        await backend.store_result(task_id, value, about)
            on_redis, on_sql = await rb.get_task(task_id), await sql.get_task(task_id)
            assert on_redis is not None and on_sql is not None
            assert _comparable(on_redis) == _comparable(on_sql), plan
    finally:
        await sql.disconnect()


def _comparable(record: TaskRecord) -> dict[str, Any]:
    times = ("enqueued_at", "started_at", "finished_at", "created_at", "updated_at")
    fields = record.model_dump(exclude={"runtime", *times})
    fields.update({name: getattr(record, name) is not None for name in times})
    return fields


# -- the index -----------------------------------------------------------------------------


async def test_the_index_keeps_the_newest_history_size(make: Make, clock: Clock) -> None:
    rb = await make(history_size=5)
    ids = [f"t{n:02d}" for n in range(12)]
    for task_id in ids:
        clock.advance(milliseconds=1)
        await rb.set_state(task_id, S.PENDING, details(name="n"))
        await rb.set_state(task_id, S.STARTED, details(1))  # not a new entry
    assert await raw_client(rb).zcard(rb._history_key) == 5
    page = await rb.list_tasks(limit=100)
    assert [task.task_id for task in page.items] == ids[::-1][:5]
    assert page.next_cursor is None
    assert await rb.get_task(ids[0]) is not None  # out of the index, the result still reads


async def test_history_size_zero_keeps_no_index(make: Make) -> None:
    rb = await make(history_size=0)
    await rb.set_state("t", S.PENDING, details(name="n"))
    await rb.store_result("t", result("t", S.SUCCESS, 1), details(1))
    assert not await raw_client(rb).exists(rb._history_key)
    assert (await rb.list_tasks()).items == []
    assert await rb.task_summary() == []
    task = await rb.get_task("t")
    assert task is not None and task.name == "n"


async def test_expired_and_deleted_results_leave_the_listing(make: Make) -> None:
    rb = await make()
    for task_id in ("a", "b", "c"):
        await rb.set_state(task_id, S.PENDING)
    await rb.delete_result("b")
    await raw_client(rb).pexpire(rb._result_key("c"), 1)
    await asyncio.sleep(0.05)
    assert [task.task_id for task in (await rb.list_tasks()).items] == ["a"]
    await rb.set_state("b", S.PENDING)  # written again: a new entry, a new time
    assert [task.task_id for task in (await rb.list_tasks()).items] == ["b", "a"]


async def test_single_node_writes_send_no_index_command(make: Make, mode: str) -> None:
    """The index entry is part of the store script except on Cluster, where one extra
    command per batch of writes lists every written task (NX: a no-op when listed)."""
    rb = await make()
    sent: list[Any] = []
    assert rb._link is not None
    scripts = rb._link.scripts
    index = scripts.index

    async def counting_index(**kw: Any) -> Any:
        sent.extend(kw["args"][1::2])  # history_size, then (task id, score) pairs
        return await index(**kw)

    scripts.index = counting_index  # type: ignore[assignment]
    await asyncio.gather(*(rb.set_state(f"p{n}", S.PENDING) for n in range(20)))
    await rb.set_state("s", S.STARTED, details(1))
    await rb.set_state("r", S.RETRY, details(1))
    await rb.store_result("f", result("f", S.SUCCESS, 1), details(1))
    listed = {task.task_id for task in (await rb.list_tasks(limit=100)).items}
    assert listed == {f"p{n}" for n in range(20)} | {"s", "r", "f"}
    if mode == "redis-cluster":
        assert sorted(sent) == sorted([f"p{n}" for n in range(20)] + ["s", "r", "f"])
    else:
        assert sent == []


# -- pages ---------------------------------------------------------------------------------


async def _walk(rb: RedisBackend, between: Callable[[], Awaitable[None]] | None = None,
                **filters: Any) -> list[TaskRecord]:  # fmt: skip
    seen: list[TaskRecord] = []
    cursor = None
    while True:
        page = await rb.list_tasks(cursor=cursor, **filters)
        seen.extend(page.items)
        assert len(page.items) <= filters.get("limit", 50)
        if page.next_cursor is None:
            return seen
        assert len(page.items) == filters.get("limit", 50)
        cursor = page.next_cursor
        if between is not None:
            await between()


async def test_pages_are_stable_while_new_tasks_arrive(rb: RedisBackend, clock: Clock) -> None:
    ids = [f"old-{n:03d}" for n in range(45)]
    for task_id in ids:
        clock.advance(milliseconds=3)
        await rb.set_state(task_id, S.PENDING, details(name="job"))
    arrived = 0

    async def new_tasks() -> None:
        nonlocal arrived
        for _ in range(4):
            clock.advance(milliseconds=1)
            await rb.set_state(f"new-{arrived:03d}", S.PENDING, details(name="job"))
            arrived += 1

    seen = await _walk(rb, new_tasks, limit=7)
    assert [task.task_id for task in seen] == ids[::-1]  # no duplicates, no gaps
    assert arrived > 0
    assert [task.created_at for task in seen] == sorted(
        (task.created_at for task in seen), reverse=True
    )


async def test_ties_on_created_at(rb: RedisBackend, clock: Clock) -> None:
    """Many tasks at one microsecond (more than one read of the index holds): pages in
    task id order (descending), none lost or repeated, with and without a sparse filter."""
    clock.set(T0)
    await rb.set_state("before", S.PENDING, details(name="even"))
    tied_at = clock.advance(seconds=1)
    tied = [f"tie-{n:03d}" for n in range(260)]
    random.Random(1).shuffle(tied)
    for start in range(0, len(tied), 65):  # a Cluster batch must fit the nodes' pools
        group = tied[start : start + 65]
        await asyncio.gather(*(rb.set_state(t, S.PENDING, details(name=_parity(t))) for t in group))
    clock.advance(seconds=1)
    await rb.set_state("after", S.PENDING, details(name="even"))
    expected = ["after", *sorted(tied, reverse=True), "before"]
    for limit in (1, 7, 50, 130):
        seen = await _walk(rb, limit=limit)
        assert [task.task_id for task in seen] == expected, limit
    seen = await _walk(rb, limit=9, name="even")
    evens = [t for t in expected if t in ("after", "before") or _parity(t) == "even"]
    assert [task.task_id for task in seen] == evens
    assert {task.created_at for task in seen} >= {tied_at}
    # a window that starts and ends inside the ties' microsecond
    seen = await _walk(rb, limit=60, since=tied_at, until=tied_at + timedelta(microseconds=1))
    assert [task.task_id for task in seen] == sorted(tied, reverse=True)


def _parity(task_id: str) -> str:
    return "even" if int(task_id.rsplit("-", 1)[1]) % 2 == 0 else "odd"


async def test_filters(rb: RedisBackend, clock: Clock) -> None:
    rng = random.Random(7)
    made: list[TaskRecord] = []
    for n in range(120):
        clock.advance(milliseconds=rng.choice([0, 1, 5]))
        task_id = f"f-{n:03d}"
        name, worker = rng.choice(["a", "b", "c"]), rng.choice(["w1", "w2", None])
        await rb.set_state(task_id, S.PENDING, details(name=name))
        state = rng.choice(list(TaskState))
        if state is not S.PENDING:
            await rb.store_result(task_id, result(task_id, state), details(1, worker_id=worker))
        record = await rb.get_task(task_id)
        assert record is not None
        made.append(record)
    times = sorted({task.created_at for task in made})
    since, until = times[20], times[70]
    cases: list[dict[str, Any]] = [
        {},
        {"state": S.SUCCESS},
        {"state": "FAILURE", "name": "a"},
        {"name": "b", "worker_id": "w1"},
        {"worker_id": "w2"},
        {"since": since},
        {"until": until},
        {"since": since, "until": until, "name": "c"},
        {"since": since, "until": since},
        {"name": "nobody"},
    ]
    newest_first = sorted(made, key=lambda t: (t.created_at, t.task_id), reverse=True)
    for filters in cases:
        expected = [
            task.task_id
            for task in newest_first
            if ("state" in filters and task.state != filters["state"]) is False
            and filters.get("name", task.name) == task.name
            and filters.get("worker_id", task.worker_id) == task.worker_id
            and filters.get("since", task.created_at) <= task.created_at
            and ("until" not in filters or task.created_at < filters["until"])
        ]
        seen = await _walk(rb, limit=11, **filters)
        assert [task.task_id for task in seen] == expected, filters
        assert all(t.result is None and t.traceback is None and t.args is None for t in seen)
    with pytest.raises(ValueError, match="cursor"):
        await rb.list_tasks(cursor="nonsense")
    with pytest.raises(ValueError, match="timezone-aware"):
        await rb.list_tasks(since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        await rb.list_tasks(limit=0)


async def test_page_items_match_get_task(rb: RedisBackend) -> None:
    await rb.set_state("t", S.PENDING, details(name="n", queue="q", args_json='{"a":1}'))
    await rb.set_state("t", S.STARTED, details(1, worker_id="w"))
    failure = result("t", S.FAILURE, {"v": 1}, error="e", traceback="tb")
    await rb.store_result("t", failure, details(1))
    whole = await rb.get_task("t")
    (item,) = (await rb.list_tasks()).items
    assert whole is not None
    assert item == whole.model_copy(update={"result": None, "traceback": None, "args": None})
    assert (whole.result, whole.traceback, whole.args) == ({"v": 1}, "tb", {"a": 1})


# -- summaries -----------------------------------------------------------------------------


async def test_summary_percentiles(rb: RedisBackend, clock: Clock) -> None:
    rng = random.Random(3)
    runtimes: dict[str, list[float]] = {"fast": [], "slow": []}
    states: dict[str, dict[TaskState, int]] = {"fast": {}, "slow": {}}
    start = clock.now
    for n in range(150):
        name = "fast" if n % 3 else "slow"
        task_id = f"s-{n:03d}"
        clock.set(start + timedelta(seconds=n))
        await rb.set_state(task_id, S.PENDING, details(name=name))
        final = rng.choice([S.SUCCESS, S.SUCCESS, S.FAILURE, S.DEAD_LETTERED, S.STARTED])
        if final is not S.PENDING:
            clock.advance(milliseconds=rng.randint(1, 50))
            await rb.set_state(task_id, S.STARTED, details(1))
        if final.is_terminal:
            millis = rng.randint(1, 2000) * (10 if name == "slow" else 1)
            clock.advance(milliseconds=millis)
            await rb.store_result(task_id, result(task_id, final), details(1))
            runtimes[name].append(millis / 1000)
        states[name][final] = states[name].get(final, 0) + 1
    # one outside the window
    clock.set(start + timedelta(days=1))
    await rb.set_state("late", S.PENDING, details(name="fast"))
    summaries = await rb.task_summary(since=start, until=start + timedelta(hours=1))
    assert [s.name for s in summaries] == ["fast", "slow"]
    for summary in summaries:
        assert summary.name is not None
        values = sorted(runtimes[summary.name])
        counts = states[summary.name]
        assert summary.states == counts and summary.total == sum(counts.values())
        finished = sum(v for k, v in counts.items() if k.is_terminal)
        failed = counts.get(S.FAILURE, 0) + counts.get(S.DEAD_LETTERED, 0)
        assert summary.failure_rate == pytest.approx(failed / finished)
        # nearest rank: the smallest value with at least p% of the values at or below it
        p50 = next(v for i, v in enumerate(values, 1) if i * 100 >= 50 * len(values))
        p95 = next(v for i, v in enumerate(values, 1) if i * 100 >= 95 * len(values))
        assert values[rank_of(95, len(values)) - 1] == p95
        assert summary.runtime_p50 == pytest.approx(p50, abs=1e-6)
        assert summary.runtime_p95 == pytest.approx(p95, abs=1e-6)
        assert summary.runtime_max == pytest.approx(values[-1], abs=1e-6)
    everything = await rb.task_summary()
    assert sum(s.total for s in everything) == 151


# -- documents written before the history ----------------------------------------------------


async def test_old_documents_still_read(rb: RedisBackend, clock: Clock) -> None:
    old = {"state": "SUCCESS", "result": '{"x":[1,2]}', "error": None, "traceback": None}
    failed = {"state": "FAILURE", "result": None, "error": "boom", "traceback": "tb"}
    await raw_client(rb).set(rb._result_key("old"), json.dumps(old), ex=100)
    await raw_client(rb).set(rb._result_key("old-failed"), json.dumps(failed), ex=100)
    assert await rb.get_result("old") == result("old", S.SUCCESS, {"x": [1, 2]})
    assert await rb.get_results(["old", "old-failed", "gone"]) == {
        "old": result("old", S.SUCCESS, {"x": [1, 2]}),
        "old-failed": result("old-failed", S.FAILURE, error="boom", traceback="tb"),
    }
    task = await rb.get_task("old")
    assert task is not None
    assert (task.state, task.result, task.attempts, task.name) == (
        S.SUCCESS,
        {"x": [1, 2]},
        0,
        None,
    )
    assert task.created_at == task.updated_at == datetime(1970, 1, 1, tzinfo=UTC)
    # A late non-terminal write cannot undo the terminal state, and changes nothing.
    await rb.set_state("old", S.PENDING, details(name="legacy"))
    task = await rb.get_task("old")
    assert task is not None
    assert (task.state, task.result, task.name) == (S.SUCCESS, {"x": [1, 2]}, None)
    assert 0 < await ttl_of(rb, "old") <= 100
    # A terminal write lands, gives the document its time and so lists it.
    await rb.set_state("old", S.DEAD_LETTERED, details(name="legacy"))
    task = await rb.get_task("old")
    assert task is not None
    assert (task.state, task.result, task.name, task.created_at) == (
        S.DEAD_LETTERED, {"x": [1, 2]}, "legacy", clock.now,
    )  # fmt: skip
    assert [t.task_id for t in (await rb.list_tasks()).items] == ["old"]
    # A new write of a terminal state replaces the old document's fields.
    await rb.store_result("old-failed", result("old-failed", S.SUCCESS, 3), details(1))
    assert await rb.get_result("old-failed") == result("old-failed", S.SUCCESS, 3)

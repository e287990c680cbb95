"""The task history on the contract (issue 13), run unchanged against every backend:
the record each write leaves, the attempt-aware merge under races, keyset pages, filters
and summaries."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chicory_backends import Backend, TaskResult, TaskState
from chicory_backends.errors import InvalidTaskIdError
from chicory_backends.history import rank_of
from chicory_backends.types import TaskDetails, TaskRecord
from tests.support.backends import MakeBackend


def new_id(tag: str = "task") -> str:
    return f"{tag}-{uuid.uuid4()}"


def run(attempt: int, worker: str = "worker-a", name: str = "send_invoice") -> TaskDetails:
    return TaskDetails(name=name, queue="default", worker_id=worker, attempt=attempt)


def success(task_id: str, value: object = None) -> TaskResult:
    return TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=value)


def failure(task_id: str, error: str) -> TaskResult:
    return TaskResult(task_id=task_id, state=TaskState.FAILURE, error=error, traceback="Tb")


async def record(backend: Backend, task_id: str) -> TaskRecord:
    found = await backend.get_task(task_id)
    assert found is not None, task_id
    return found


# -- the record ------------------------------------------------------------------------


async def test_a_task_run_leaves_its_whole_record(backend: Backend) -> None:
    task_id = new_id()
    enqueue = TaskDetails(name="send_invoice", queue="billing", args_json='{"args": [42]}')
    await backend.set_state(task_id, TaskState.PENDING, enqueue)
    queued = await record(backend, task_id)
    assert (queued.state, queued.attempts, queued.worker_id) == (TaskState.PENDING, 0, None)
    assert queued.enqueued_at is not None and queued.started_at is None
    await backend.set_state(task_id, TaskState.STARTED, run(1))
    await asyncio.sleep(0.02)
    await backend.store_result(task_id, success(task_id, {"total": 3}), run(1))

    done = await record(backend, task_id)
    assert done.state is TaskState.SUCCESS
    assert (done.name, done.queue, done.worker_id, done.attempts) == (
        "send_invoice", "billing", "worker-a", 1,
    )  # fmt: skip
    assert done.result == {"total": 3} and done.args == {"args": [42]}
    assert done.enqueued_at is not None and done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at == queued.created_at == done.enqueued_at
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.runtime is not None and 0.015 <= done.runtime < 5
    # get_result is unchanged by the history fields.
    assert await backend.get_result(task_id) == success(task_id, {"total": 3})


async def test_writes_sent_together_record_their_times_too(backend: Backend) -> None:
    """Concurrent writes go out as one batch (PostgreSQL derives the times inside its
    batch statement): each record still has its enqueue, start and finish."""
    ids = [new_id("burst") for _ in range(20)]
    await asyncio.gather(
        *(backend.set_state(i, TaskState.PENDING, TaskDetails(name="b")) for i in ids)
    )
    await asyncio.gather(*(backend.set_state(i, TaskState.STARTED, run(1, name="b")) for i in ids))
    await asyncio.gather(*(backend.store_result(i, success(i, 1), run(1, name="b")) for i in ids))
    for task_id in ids:
        done = await record(backend, task_id)
        assert (done.state, done.attempts, done.name, done.result) == (
            TaskState.SUCCESS, 1, "b", 1,
        )  # fmt: skip
        assert done.enqueued_at == done.created_at
        assert done.enqueued_at is not None and done.started_at is not None
        assert done.finished_at is not None
        assert done.enqueued_at <= done.started_at <= done.finished_at


async def test_unknown_task_has_no_record(backend: Backend) -> None:
    assert await backend.get_task(new_id()) is None
    with pytest.raises(InvalidTaskIdError):
        await backend.get_task("")


async def test_plain_writes_without_details_still_record_times(backend: Backend) -> None:
    task_id = new_id()
    await backend.set_state(task_id, TaskState.STARTED)
    await backend.store_result(task_id, failure(task_id, "boom"))
    done = await record(backend, task_id)
    assert (done.state, done.attempts, done.name, done.error) == (
        TaskState.FAILURE, 0, None, "boom",
    )  # fmt: skip
    assert done.traceback == "Tb" and done.runtime is not None


async def test_a_late_enqueue_changes_nothing(backend: Backend) -> None:
    """A PENDING write that reaches the store after the worker's STARTED (a republish,
    a duplicate) is refused whole, like any write the guard refuses. track() awaits its
    PENDING write before it publishes, so its own never comes late."""
    task_id = new_id()
    await backend.set_state(task_id, TaskState.STARTED, run(1))
    before = await record(backend, task_id)
    await backend.set_state(
        task_id, TaskState.PENDING, TaskDetails(name="other", queue="billing", args_json="[1]")
    )
    assert await record(backend, task_id) == before
    assert (before.state, before.attempts, before.queue) == (TaskState.STARTED, 1, "default")


async def test_an_older_attempt_never_replaces_a_newer_one(backend: Backend) -> None:
    task_id = new_id()
    await backend.set_state(task_id, TaskState.STARTED, run(2, worker="worker-b"))
    # Attempt 1's writes arrive late: its RETRY, then even its SUCCESS.
    await backend.set_state(task_id, TaskState.RETRY, run(1))
    await backend.store_result(task_id, success(task_id, "stale"), run(1))
    current = await record(backend, task_id)
    assert (current.state, current.attempts, current.worker_id) == (
        TaskState.STARTED, 2, "worker-b",
    )  # fmt: skip
    assert await backend.get_result(task_id) == TaskResult(task_id=task_id, state=TaskState.STARTED)
    await backend.store_result(task_id, success(task_id, "fresh"), run(2, worker="worker-b"))
    assert (await record(backend, task_id)).result == "fresh"


async def test_a_retry_records_the_new_attempt(backend: Backend) -> None:
    task_id = new_id()
    await backend.set_state(task_id, TaskState.STARTED, run(1, worker="worker-a"))
    await backend.set_state(task_id, TaskState.RETRY, run(1, worker="worker-a"))
    first = await record(backend, task_id)
    await asyncio.sleep(0.005)
    await backend.set_state(task_id, TaskState.STARTED, run(2, worker="worker-b"))
    await backend.store_result(task_id, success(task_id, 2), run(2, worker="worker-b"))
    done = await record(backend, task_id)
    assert (done.state, done.attempts, done.worker_id) == (TaskState.SUCCESS, 2, "worker-b")
    assert first.started_at is not None and done.started_at is not None
    assert done.started_at > first.started_at  # the runtime is the last attempt's


async def test_terminal_guard_still_holds_within_an_attempt(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(task_id, success(task_id, 1), run(1))
    await backend.set_state(task_id, TaskState.STARTED, run(1))
    await backend.set_state(task_id, TaskState.RETRY, run(3))  # newer, but not terminal
    done = await record(backend, task_id)
    assert (done.state, done.attempts) == (TaskState.SUCCESS, 1)


async def test_racing_attempts_end_with_the_newest_attempts_outcome(
    make_backend: MakeBackend,
) -> None:
    """Three writers (three backend objects, as three processes) run attempts 1, 2 and 3
    of the same tasks at once, each in its own order of steps; whatever the interleaving,
    every task ends with attempt 3's outcome."""
    writers = [await make_backend() for _ in range(3)]
    rng = random.Random(1234)
    task_ids = [new_id("race") for _ in range(40)]

    async def attempt(backend: Backend, task_id: str, number: int) -> None:
        details = run(number, worker=f"worker-{number}")
        await asyncio.sleep(rng.random() * 0.003)
        await backend.set_state(task_id, TaskState.STARTED, details)
        if number < 3:
            await backend.set_state(task_id, TaskState.RETRY, details)
        else:
            await backend.store_result(task_id, success(task_id, number), details)

    jobs = [
        attempt(writers[number - 1], task_id, number)
        for task_id in task_ids
        for number in (1, 2, 3)
    ]
    rng.shuffle(jobs)
    await asyncio.gather(*jobs)
    for task_id in task_ids:
        done = await record(writers[0], task_id)
        assert (done.state, done.attempts, done.worker_id, done.result) == (
            TaskState.SUCCESS, 3, "worker-3", 3,
        ), task_id  # fmt: skip


# -- list_tasks ------------------------------------------------------------------------


async def seed(backend: Backend, count: int, name: str = "job") -> list[str]:
    """``count`` tasks created one after another (distinct created_at), oldest first."""
    ids = []
    for number in range(count):
        task_id = f"{name}-{number:03d}-{uuid.uuid4().hex[:6]}"
        await backend.set_state(task_id, TaskState.PENDING, TaskDetails(name=name))
        ids.append(task_id)
    return ids


async def all_pages(backend: Backend, limit: int, **filters: object) -> list[TaskRecord]:
    items: list[TaskRecord] = []
    cursor = None
    for _ in range(1000):
        page = await backend.list_tasks(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        assert len(page.items) <= limit
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return items
        assert len(page.items) == limit  # only a full page has a next one
    raise AssertionError("pages never ended")


async def test_pages_are_newest_first_and_cover_every_task_once(backend: Backend) -> None:
    ids = await seed(backend, 23)
    items = await all_pages(backend, limit=5)
    assert [item.task_id for item in items] == ids[::-1]
    assert all(item.result is None and item.traceback is None for item in items)
    page = await backend.list_tasks(limit=50)
    assert page.next_cursor is None and len(page.items) == 23


async def test_pages_stay_stable_while_new_tasks_arrive(backend: Backend) -> None:
    ids = await seed(backend, 20)
    seen: list[str] = []
    page = await backend.list_tasks(limit=6)
    while True:
        seen.extend(item.task_id for item in page.items)
        await seed(backend, 2, name="newcomer")  # arrive between the pages
        if page.next_cursor is None:
            break
        page = await backend.list_tasks(limit=6, cursor=page.next_cursor)
    assert seen == ids[::-1]


async def test_filters_combine(backend: Backend) -> None:
    failed_invoice = new_id("inv")
    await backend.set_state(failed_invoice, TaskState.STARTED, run(1, worker="w-1"))
    await backend.store_result(
        failed_invoice, failure(failed_invoice, "card declined"), run(1, "w-1")
    )
    ok_invoice = new_id("inv")
    await backend.store_result(ok_invoice, success(ok_invoice), run(1, "w-2"))
    failed_mail = new_id("mail")
    await backend.store_result(
        failed_mail, failure(failed_mail, "bounce"), run(1, "w-1", "send_mail")
    )

    def ids(records: list[TaskRecord]) -> set[str]:
        return {item.task_id for item in records}

    failed = (await backend.list_tasks(state=TaskState.FAILURE)).items
    assert ids(failed) == {failed_invoice, failed_mail}
    assert ids((await backend.list_tasks(state="FAILURE", name="send_invoice")).items) == {
        failed_invoice
    }
    assert ids((await backend.list_tasks(worker_id="w-1")).items) == {failed_invoice, failed_mail}
    assert ids((await backend.list_tasks(worker_id="w-1", name="send_mail")).items) == {failed_mail}
    page = (await backend.list_tasks(state="FAILURE", name="send_invoice")).items
    assert page[0].error == "card declined" and page[0].worker_id == "w-1"
    assert (await backend.list_tasks(name="nobody")).items == []


async def test_time_window_is_since_inclusive_until_exclusive(backend: Backend) -> None:
    ids = await seed(backend, 6)
    records = [await record(backend, task_id) for task_id in ids]
    middle = records[2].created_at
    newer = await all_pages(backend, limit=2, since=middle)
    assert [item.task_id for item in newer] == ids[2:][::-1]
    older = await all_pages(backend, limit=2, until=middle)
    assert [item.task_id for item in older] == ids[:2][::-1]
    window = await backend.list_tasks(since=records[1].created_at, until=records[4].created_at)
    assert [item.task_id for item in window.items] == ids[1:4][::-1]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await backend.list_tasks(since=future)).items == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"limit": 0}, "limit must be between 1 and 1000"),
        ({"limit": 1001}, "limit must be between 1 and 1000"),
        ({"since": datetime(2026, 1, 1)}, "since must be timezone-aware"),
        ({"state": "DONE"}, "unknown task state 'DONE'"),
        ({"cursor": "not-a-cursor"}, "cursor is not one that list_tasks returned"),
        (
            {"since": datetime(2026, 2, 1, tzinfo=UTC), "until": datetime(2026, 1, 1, tzinfo=UTC)},
            "is after until",
        ),
    ],
)
async def test_bad_queries_are_refused_by_name(
    backend: Backend, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await backend.list_tasks(**arguments)  # type: ignore[arg-type]


# -- task_summary ----------------------------------------------------------------------


async def test_summary_counts_rates_and_nearest_rank_runtimes(backend: Backend) -> None:
    pauses = [0.0, 0.03, 0.01, 0.05, 0.02]
    ids = []
    for pause in pauses:
        task_id = new_id("timed")
        await backend.set_state(task_id, TaskState.STARTED, run(1, name="timed"))
        await asyncio.sleep(pause)
        await backend.store_result(task_id, success(task_id), run(1, name="timed"))
        ids.append(task_id)
    failed = new_id("timed")
    await backend.set_state(failed, TaskState.STARTED, run(1, name="timed"))
    await backend.store_result(failed, failure(failed, "x"), run(1, name="timed"))
    waiting = new_id("other")
    await backend.set_state(waiting, TaskState.PENDING, TaskDetails(name="other"))

    runtimes = sorted(
        [(await record(backend, task_id)).runtime or 0.0 for task_id in [*ids, failed]]
    )
    by_name = {summary.name: summary for summary in await backend.task_summary()}
    timed = by_name["timed"]
    assert timed.total == 6
    assert timed.states == {TaskState.SUCCESS: 5, TaskState.FAILURE: 1}
    assert timed.failure_rate == pytest.approx(1 / 6)
    # SQLite subtracts times at millisecond precision (julianday).
    assert timed.runtime_p50 == pytest.approx(runtimes[rank_of(50, 6) - 1], abs=0.002)
    assert timed.runtime_p95 == pytest.approx(runtimes[rank_of(95, 6) - 1], abs=0.002)
    assert timed.runtime_max == pytest.approx(runtimes[-1], abs=0.002)
    other = by_name["other"]
    assert (other.total, other.states, other.failure_rate, other.runtime_p50) == (
        1, {TaskState.PENDING: 1}, None, None,
    )  # fmt: skip
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await backend.task_summary(since=later) == []


def test_nearest_rank() -> None:
    assert [rank_of(50, n) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 2, 5]
    assert [rank_of(95, n) for n in (1, 19, 20, 21, 100)] == [1, 19, 19, 20, 95]

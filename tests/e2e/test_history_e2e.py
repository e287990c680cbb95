"""End to end, the task history: ``track(app)`` in a real ``chicory worker`` process
(Chicory's own CLI and Worker, unchanged) and in the client, on both of Chicory's brokers
and each of our backends.

One worker run per (broker, backend) pair runs every kind of task: one that succeeds,
one that fails, one that fails once and succeeds on its retry, and one that times out
(``asyncio.timeout`` inside the task). Then the history must say what happened: name,
queue, the worker's heartbeat id, attempts, the enqueue/start/finish times in order,
the error text; ``list_tasks`` filters, ``task_summary`` counts, ``AsyncResult.exists()``,
and arguments recorded only by the client that asked for it.

The fixtures (brokers, fresh databases, the worker subprocess) are test_chicory_e2e.py's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from chicory import Chicory

from chicory_backends import TaskFailedError
from chicory_backends.base import Backend
from chicory_backends.chicory import ChicoryBackendAdapter, async_result
from chicory_backends.types import TaskRecord, TaskState
from tests.e2e.test_chicory_e2e import (  # noqa: F401 (fixtures, found by name)
    TASK_TIMEOUT,
    chicory_cli,
    chicory_worker,
    mysql_backend,
    namespace,
    postgres_backend,
    rabbitmq_broker,
    redis_backend,
    redis_broker,
    sqlite_backend,
)
from tests.support import e2e_app

pytestmark = pytest.mark.slow


@pytest.fixture
def tracked_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker process runs track(app), without recording arguments (it never
    dispatches; what it republishes is a retry)."""
    monkeypatch.setenv("E2E_TRACK", "1")
    monkeypatch.delenv("E2E_RECORD_ARGS", raising=False)


def ours(app: Chicory) -> Backend:
    adapter = app.backend
    assert isinstance(adapter, ChicoryBackendAdapter)
    return adapter.backend


async def _require_history(backend: Backend) -> None:
    try:
        await backend.get_task("history-probe")
    except NotImplementedError as error:
        pytest.skip(f"{type(backend).__name__} has no task history yet: {error}")


async def _outcome(app: Chicory, task_id: str) -> Any:
    try:
        return await async_result(app, task_id).get(timeout=TASK_TIMEOUT)
    except TaskFailedError as failure:
        return failure


async def _worker_id(app: Chicory, pid: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        workers = {stats.pid: stats for stats in await ours(app).get_active_workers()}
        if pid in workers:
            return workers[pid].worker_id
        assert time.monotonic() < deadline, f"no heartbeat from pid {pid}: {list(workers)}"
        await asyncio.sleep(0.1)


def _check_ran(
    record: TaskRecord | None, name: str, state: TaskState, worker_id: str, attempts: int
) -> TaskRecord:
    assert record is not None, f"no record of a {name} task"
    assert (record.name, record.queue, record.state) == (name, "default", state), record
    assert (record.worker_id, record.attempts) == (worker_id, attempts), record
    assert record.enqueued_at is not None, f"{name}: the PENDING of the dispatch is missing"
    assert record.started_at is not None and record.finished_at is not None, record
    assert record.enqueued_at <= record.started_at <= record.finished_at, record
    assert record.created_at <= record.updated_at, record
    assert record.runtime is not None and record.runtime >= 0
    return record


async def _exercise(client: Chicory, recorder: Chicory, tmp_path: Path) -> list[str]:
    add, fail, flaky, timeout = (
        client.get_task(f"e2e.{name}") for name in ("add", "fail", "flaky", "timeout")
    )
    started = [
        await add.delay(2, 3),
        await fail.delay("disk full on /dev/sdz9"),
        await flaky.delay(str(tmp_path / "flaky.log")),
        await timeout.delay(5.0),
        # The same task from a client that records arguments.
        await recorder.get_task("e2e.add").delay(20, b=22),
    ]
    ids = [result.task_id for result in started]
    done_id = ids[0]

    # Known from the dispatch on (its PENDING), whether or not a worker took it yet.
    assert await async_result(client, done_id).exists()
    assert not await async_result(client, str(uuid.uuid4())).exists()

    outcomes = [await _outcome(client, task_id) for task_id in ids]
    assert outcomes[0] == 5 and outcomes[2] == 1 and outcomes[4] == 42, outcomes
    assert isinstance(outcomes[1], TaskFailedError) and isinstance(outcomes[3], TaskFailedError)
    assert (tmp_path / "flaky.log").read_text().splitlines() == ["attempt 0", "attempt 1"]
    return ids


async def _check_history(client: Chicory, worker_pid: int, ids: list[str]) -> None:
    backend = ours(client)
    worker_id = await _worker_id(client, worker_pid)
    done_id, failed_id, retried_id, timed_out_id, recorded_id = ids

    done = _check_ran(await backend.get_task(done_id), "e2e.add", TaskState.SUCCESS, worker_id, 1)
    assert done.result == 5 and done.error is None and done.args is None

    failed = _check_ran(
        await backend.get_task(failed_id), "e2e.fail", TaskState.FAILURE, worker_id, 1
    )
    assert failed.error is not None and "disk full on /dev/sdz9" in failed.error
    assert failed.traceback is not None and "ValueError" in failed.traceback

    retried = _check_ran(
        await backend.get_task(retried_id), "e2e.flaky", TaskState.SUCCESS, worker_id, 2
    )
    assert retried.result == 1

    timed_out = _check_ran(
        await backend.get_task(timed_out_id), "e2e.timeout", TaskState.FAILURE, worker_id, 1
    )
    assert timed_out.traceback is not None and "TimeoutError" in timed_out.traceback
    # It was cut short by its own limit, not by the 5 s it asked to sleep.
    assert timed_out.runtime is not None and timed_out.runtime < 2.5

    recorded = _check_ran(
        await backend.get_task(recorded_id), "e2e.add", TaskState.SUCCESS, worker_id, 1
    )
    assert recorded.args == {"args": [20], "kwargs": {"b": 22}}

    # list_tasks: newest first, filtered; pages leave the traceback out.
    failures = await backend.list_tasks(state=TaskState.FAILURE)
    assert {item.task_id for item in failures.items} == {failed_id, timed_out_id}
    assert all(item.traceback is None for item in failures.items)
    adds = await backend.list_tasks(name="e2e.add")
    assert [item.task_id for item in adds.items] == [recorded_id, done_id]
    assert adds.next_cursor is None
    by_worker = await backend.list_tasks(worker_id=worker_id)
    assert {item.task_id for item in by_worker.items} == set(ids)
    assert (await backend.list_tasks(worker_id="nobody")).items == []
    first = await backend.list_tasks(limit=2)
    second = await backend.list_tasks(limit=2, cursor=first.next_cursor)
    third = await backend.list_tasks(limit=2, cursor=second.next_cursor)
    paged = [item.task_id for page in (first, second, third) for item in page.items]
    assert sorted(paged) == sorted(ids) and third.next_cursor is None

    summaries = {summary.name: summary for summary in await backend.task_summary()}
    assert set(summaries) == {"e2e.add", "e2e.fail", "e2e.flaky", "e2e.timeout"}
    assert summaries["e2e.add"].total == 2
    assert summaries["e2e.add"].states == {TaskState.SUCCESS: 2}
    assert summaries["e2e.add"].failure_rate == 0
    assert summaries["e2e.fail"].states == {TaskState.FAILURE: 1}
    assert summaries["e2e.fail"].failure_rate == 1
    assert summaries["e2e.flaky"].states == {TaskState.SUCCESS: 1}
    assert summaries["e2e.timeout"].states == {TaskState.FAILURE: 1}
    assert all(summary.runtime_max is not None for summary in summaries.values())


async def _run(tmp_path: Path) -> None:
    client = e2e_app.make_app(tracked=True, record_args=False)
    recorder = e2e_app.make_app(tracked=True, record_args=True)
    await client.connect()
    try:
        await recorder.connect()
        try:
            await _require_history(ours(client))
            with chicory_worker(tmp_path / "worker.log") as worker:
                ids = await _exercise(client, recorder, tmp_path)
                await _check_history(client, worker.pid, ids)
        finally:
            await recorder.disconnect()
    finally:
        await client.disconnect()


# -- one worker run per (broker, backend) pair ------------------------------------------


@pytest.mark.usefixtures("redis_broker", "postgres_backend", "tracked_worker")
async def test_redis_broker_postgres_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("redis_broker", "mysql_backend", "tracked_worker")
async def test_redis_broker_mariadb_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("redis_broker", "sqlite_backend", "tracked_worker")
async def test_redis_broker_sqlite_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("redis_broker", "redis_backend", "tracked_worker")
async def test_redis_broker_redis_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("rabbitmq_broker", "postgres_backend", "tracked_worker")
async def test_rabbitmq_broker_postgres_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("rabbitmq_broker", "mysql_backend", "tracked_worker")
async def test_rabbitmq_broker_mariadb_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("rabbitmq_broker", "sqlite_backend", "tracked_worker")
async def test_rabbitmq_broker_sqlite_backend(tmp_path: Path) -> None:
    await _run(tmp_path)


@pytest.mark.usefixtures("rabbitmq_broker", "redis_backend", "tracked_worker")
async def test_rabbitmq_broker_redis_backend(tmp_path: Path) -> None:
    await _run(tmp_path)

"""The Backend contract, run unchanged against every backend."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from chicory_backends import (
    Backend,
    BackendStatus,
    InvalidTaskIdError,
    NotConnectedError,
    ResultNotSerializableError,
    TaskResult,
    TaskState,
    WorkerStats,
)
from tests.support.backends import MakeBackend
from tests.support.write_model import apply, call_for

TERMINAL = [TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED]
NON_TERMINAL = [TaskState.PENDING, TaskState.STARTED, TaskState.RETRY]


def new_id() -> str:
    return f"task-{uuid.uuid4()}"


def stats(worker_id: str, processed: int = 0) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id,
        hostname="host-a",
        pid=4242,
        queue="default",
        concurrency=8,
        tasks_processed=processed,
        started_at=datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC),
        last_heartbeat=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    "value",
    [
        {"value": 1},
        [1, "two", 3.5, None, True],
        "text with ünïcödé ✓ and 'quotes' \"double\"",
        12345678901234567890123,
        0.1,
        {"nested": {"deep": [{"a": []}, {}]}},
        None,
        "",
    ],
)
async def test_result_round_trips(backend: Backend, value: Any) -> None:
    task_id = new_id()
    stored = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=value)
    await backend.store_result(task_id, stored)
    assert await backend.get_result(task_id) == stored


async def test_failure_keeps_error_and_traceback(backend: Backend) -> None:
    task_id = new_id()
    stored = TaskResult(
        task_id=task_id,
        state=TaskState.FAILURE,
        error="ValueError: bad input",
        traceback='Traceback (most recent call last):\n  File "x.py"\n' * 200,
    )
    await backend.store_result(task_id, stored)
    assert await backend.get_result(task_id) == stored


async def test_unknown_task_is_none(backend: Backend) -> None:
    assert await backend.get_result(new_id()) is None


async def test_set_state_creates_and_moves(backend: Backend) -> None:
    task_id = new_id()
    await backend.set_state(task_id, TaskState.PENDING)
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.PENDING and got.result is None
    await backend.set_state(task_id, TaskState.STARTED)
    await backend.set_state(task_id, TaskState.RETRY)
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.RETRY


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest.mark.parametrize("late", NON_TERMINAL)
async def test_late_state_never_replaces_a_finished_task(
    backend: Backend, terminal: TaskState, late: TaskState
) -> None:
    task_id = new_id()
    final = TaskResult(task_id=task_id, state=terminal, result={"done": True}, error="e")
    await backend.store_result(task_id, final)
    await backend.set_state(task_id, late)
    await backend.store_result(task_id, TaskResult(task_id=task_id, state=late))
    assert await backend.get_result(task_id) == final


async def test_terminal_write_always_lands(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.FAILURE))
    success = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=7)
    await backend.store_result(task_id, success)
    assert await backend.get_result(task_id) == success
    await backend.set_state(task_id, TaskState.DEAD_LETTERED)
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.DEAD_LETTERED and got.result == 7


async def test_set_state_keeps_an_unfinished_result(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(
        task_id, TaskResult(task_id=task_id, state=TaskState.RETRY, error="x")
    )
    await backend.set_state(task_id, TaskState.STARTED)
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.STARTED and got.error == "x"


async def test_get_results_returns_only_known_ids(backend: Backend) -> None:
    ids = [new_id() for _ in range(120)]
    for i, task_id in enumerate(ids[:100]):
        await backend.store_result(
            task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"value": i})
        )
    got = await backend.get_results(ids + ids[:3])
    assert set(got) == set(ids[:100])
    assert all(got[task_id].result == {"value": i} for i, task_id in enumerate(ids[:100]))
    assert await backend.get_results([]) == {}


async def test_delete_result(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS))
    await backend.delete_result(task_id)
    assert await backend.get_result(task_id) is None
    await backend.delete_result(task_id)  # deleting nothing is fine


async def test_concurrent_writers_of_one_id(backend: Backend) -> None:
    task_id = new_id()
    await asyncio.gather(
        *(
            backend.store_result(
                task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=i)
            )
            for i in range(50)
        )
    )
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.SUCCESS and got.result in range(50)
    assert list(await backend.get_results([task_id])) == [task_id]


async def test_terminal_state_wins_the_race(backend: Backend) -> None:
    for _round in range(3):
        task_id = new_id()
        final = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"ok": 1})
        late = [backend.set_state(task_id, NON_TERMINAL[i % 3]) for i in range(60)]
        await asyncio.gather(*late[:30], backend.store_result(task_id, final), *late[30:])
        assert await backend.get_result(task_id) == final


async def test_results_expire_before_any_cleanup(make_backend: MakeBackend) -> None:
    backend = await make_backend(result_ttl=1)
    task_id = new_id()
    await backend.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS))
    assert await backend.get_result(task_id) is not None
    await asyncio.sleep(1.3)
    assert await backend.get_result(task_id) is None
    assert await backend.get_results([task_id]) == {}


async def test_heartbeats(backend: Backend) -> None:
    alive = [f"worker-{uuid.uuid4()}" for _ in range(5)]
    for n, worker_id in enumerate(alive):
        await backend.store_heartbeat(worker_id, stats(worker_id, n), ttl=60)
    await backend.store_heartbeat(alive[0], stats(alive[0], 99), ttl=60)
    got = await backend.get_heartbeat(alive[0])
    assert got == stats(alive[0], 99).model_copy(
        update={"last_heartbeat": got and got.last_heartbeat}
    )
    active = {w.worker_id: w for w in await backend.get_active_workers()}
    assert set(active) == set(alive)
    assert active[alive[3]].tasks_processed == 3
    assert await backend.get_heartbeat("worker-nobody") is None


async def test_expired_heartbeats_are_inactive_then_cleaned(backend: Backend) -> None:
    stale, alive = f"worker-{uuid.uuid4()}", f"worker-{uuid.uuid4()}"
    await backend.store_heartbeat(stale, stats(stale), ttl=1)
    await backend.store_heartbeat(alive, stats(alive), ttl=60)
    await asyncio.sleep(1.3)
    assert await backend.get_heartbeat(stale) is None
    assert [w.worker_id for w in await backend.get_active_workers()] == [alive]
    assert await backend.cleanup_stale_clients(stale_seconds=60) == 0
    assert await backend.cleanup_stale_clients(stale_seconds=0) == 1
    assert await backend.cleanup_stale_clients(stale_seconds=0) == 0
    assert await backend.get_heartbeat(alive) is not None


async def test_healthcheck(backend: Backend) -> None:
    status = await backend.healthcheck()
    assert isinstance(status, BackendStatus)
    assert status.connected and status.error is None
    assert status.latency_ms is not None and status.latency_ms >= 0


@pytest.mark.parametrize("bad_id", ["", "x" * 256])
async def test_invalid_task_ids_are_refused(backend: Backend, bad_id: str) -> None:
    with pytest.raises(InvalidTaskIdError):
        await backend.set_state(bad_id, TaskState.PENDING)
    with pytest.raises(InvalidTaskIdError):
        await backend.get_result(bad_id)


async def test_longest_task_id_and_sql_text_are_data(backend: Backend) -> None:
    for task_id in ["x" * 255, "'; DROP TABLE chicory_task_results; --", "ab", "Ab", "ab "]:
        await backend.store_result(
            task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=task_id)
        )
    for task_id in ["x" * 255, "'; DROP TABLE chicory_task_results; --", "ab", "Ab", "ab "]:
        got = await backend.get_result(task_id)
        assert got is not None and got.result == task_id


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", float("nan"), object()])
async def test_unserialisable_result_writes_nothing(backend: Backend, value: Any) -> None:
    task_id = new_id()
    with pytest.raises(ResultNotSerializableError, match=task_id):
        await backend.store_result(
            task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=value)
        )
    assert await backend.get_result(task_id) is None


async def test_calls_before_connect_are_refused(backend: Backend) -> None:
    await backend.disconnect()
    with pytest.raises(NotConnectedError, match="connect"):
        await backend.get_result(new_id())
    with pytest.raises(NotConnectedError):
        await backend.store_heartbeat("w", stats("w"))
    status = await backend.healthcheck()
    assert not status.connected


async def test_async_with_connects_and_disconnects(backend: Backend) -> None:
    await backend.disconnect()
    async with backend as same:
        assert same is backend
        assert (await backend.healthcheck()).connected
    assert not (await backend.healthcheck()).connected


async def test_racing_connects_share_one_connection_pool(backend: Backend) -> None:
    """Several tasks calling connect() on one object at once: one pool, nothing leaked."""
    await backend.disconnect()

    async def connect() -> object:
        await backend.connect()
        return _pool_of(backend)  # what this caller was given

    pools = await asyncio.gather(*(connect() for _ in range(5)))
    assert all(pool is pools[0] for pool in pools), pools
    assert _pool_of(backend) is pools[0]
    assert (await backend.healthcheck()).connected


def _pool_of(backend: Backend) -> object:
    engine = getattr(backend, "_engine", None)
    return engine if engine is not None else backend._client  # type: ignore[attr-defined]


@pytest.mark.parametrize("ttl", [0, -5])
async def test_a_heartbeat_lives_at_least_a_second(backend: Backend, ttl: int) -> None:
    with pytest.raises(ValueError, match="at least 1 second"):
        await backend.store_heartbeat("w-ttl", stats("w-ttl"), ttl=ttl)
    assert await backend.get_heartbeat("w-ttl") is None


async def test_random_bursts_equal_one_call_at_a_time(backend: Backend) -> None:
    """400 writes over 12 ids, random kinds and states, gathered in bursts of 50: what
    the backend sends together (coalesced batches, pipelines) ends as if sent one by one,
    in call order, terminal guard included."""
    rng = random.Random(20261201)
    ids = [new_id() for _ in range(12)]
    model: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
    states = list(TaskState)
    for _burst in range(8):
        calls = []
        for n in range(50):
            task_id = rng.choice(ids)
            write = (rng.choice(["set_state", "store_result"]), rng.choice(states), n)
            model[task_id] = apply(model[task_id], write)
            calls.append(call_for(backend, task_id, write))
        await asyncio.gather(*calls)
    found = await backend.get_results(ids)
    for task_id in ids:
        expected = model[task_id]
        assert expected is not None
        got = found[task_id]
        assert (got.state, got.result, got.error) == (
            expected["state"], expected["result"], expected["error"]
        ), task_id  # fmt: skip

"""AsyncResult over every backend of the contract fixture (the SQL kinds, and Redis where
conftest adds it). PostgreSQL's LISTEN/NOTIFY wake-ups under it: test_postgres_wait.py."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable

import pytest

from chicory_backends import (
    BackendNotConfiguredError,
    TaskFailedError,
    TaskResult,
    TaskState,
)
from chicory_backends.base import Backend
from chicory_backends.result import AsyncResult
from tests.support.backends import MakeBackend
from tests.support.result_helpers import before_first_read, new_id, success

# -- AsyncResult on every backend --------------------------------------------------------


async def test_get_returns_the_stored_result(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(task_id, success(task_id, {"value": [1, 2]}))
    result = AsyncResult(task_id, backend)
    assert await result.get(timeout=5) == {"value": [1, 2]}
    assert await result.state() is TaskState.SUCCESS
    assert await result.ready() and await result.successful()
    assert not await result.failed()


async def test_get_waits_for_a_later_store(make_backend: MakeBackend) -> None:
    client, worker = await make_backend(), await make_backend()
    task_id = new_id()
    await worker.set_state(task_id, TaskState.STARTED)
    waiting = asyncio.create_task(AsyncResult(task_id, client).get(timeout=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # STARTED is not finished
    await worker.store_result(task_id, success(task_id, 42))
    assert await waiting == 42


async def test_unknown_task_is_pending(backend: Backend) -> None:
    result = AsyncResult(new_id(), backend)
    assert await result.state() is TaskState.PENDING
    assert not await result.ready()
    assert not await result.successful() and not await result.failed()


@pytest.mark.parametrize("state", [TaskState.FAILURE, TaskState.DEAD_LETTERED])
async def test_failure_raises_with_error_and_traceback(backend: Backend, state: TaskState) -> None:
    task_id = new_id()
    trace = "Traceback (most recent call last):\n  File \"job.py\", line 3\nKeyError: 'x'"
    failed = TaskResult(task_id=task_id, state=state, error="KeyError: 'x'", traceback=trace)
    await backend.store_result(task_id, failed)
    result = AsyncResult(task_id, backend)
    with pytest.raises(TaskFailedError) as info:
        await result.get(timeout=5)
    assert info.value.task_id == task_id
    assert info.value.error == "KeyError: 'x'"
    assert info.value.traceback == trace
    assert "KeyError: 'x'" in str(info.value)
    assert await result.failed() and await result.ready()
    assert not await result.successful()


@pytest.mark.parametrize("started", [False, True])
async def test_timeout_raises_timeout_error(backend: Backend, started: bool) -> None:
    task_id = new_id()
    if started:
        await backend.set_state(task_id, TaskState.STARTED)
    begun = time.monotonic()
    with pytest.raises(TimeoutError, match=task_id):
        await AsyncResult(task_id, backend).get(timeout=0.3)
    assert 0.3 <= time.monotonic() - begun < 2.0


async def test_zero_timeout_reads_once(backend: Backend) -> None:
    task_id = new_id()
    with pytest.raises(TimeoutError):
        await AsyncResult(task_id, backend).get(timeout=0)
    await backend.store_result(task_id, success(task_id, "now"))
    assert await AsyncResult(task_id, backend).get(timeout=0) == "now"


async def test_no_backend_raises_backend_not_configured() -> None:
    result = AsyncResult("any-task", None)
    for call in (result.get, result.state, result.ready, result.failed, result.forget):
        with pytest.raises(BackendNotConfiguredError, match="send"):
            await call()


async def test_forget_deletes_the_result(backend: Backend) -> None:
    task_id = new_id()
    await backend.store_result(task_id, success(task_id, 1))
    result = AsyncResult(task_id, backend)
    await result.forget()
    assert await backend.get_result(task_id) is None
    assert await result.state() is TaskState.PENDING
    await result.forget()  # forgetting twice is fine


async def test_result_stored_before_the_first_read_is_seen(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored after the waiter registered (listener subscribed) and before its first read."""
    task_id = new_id()

    async def store() -> None:
        await backend.store_result(task_id, success(task_id, "early"))

    before_first_read(backend, monkeypatch, store, after=False)
    begun = time.monotonic()
    assert await AsyncResult(task_id, backend).get(timeout=5) == "early"
    assert time.monotonic() - begun < 1.0


async def test_waiting_backs_off(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quick second look, then ever longer pauses: a long wait costs a handful of reads
    (PostgreSQL reads once and waits for the NOTIFY)."""
    times: list[float] = []
    real_one, real_many = backend.get_result, backend.get_results

    async def get_result(task_id: str) -> TaskResult | None:
        times.append(time.monotonic())
        return await real_one(task_id)

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        times.append(time.monotonic())
        return await real_many(task_ids)

    monkeypatch.setattr(backend, "get_result", get_result)
    monkeypatch.setattr(backend, "get_results", get_results)
    with pytest.raises(TimeoutError):
        await AsyncResult(new_id(), backend).get(timeout=1.2)
    assert 1 <= len(times) <= 10
    if len(times) > 1:
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps[0] < 0.1  # a task that finishes quickly is seen quickly
        assert max(gaps) >= 0.3  # and a slow one is not read every few ms

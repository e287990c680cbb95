"""AsyncResult.get (result.py) over a fake backend: what it makes of each answer of
``wait_for_result``, including the ones a real backend rarely gives."""

from __future__ import annotations

from typing import cast

import pytest

from chicory_backends.base import Backend
from chicory_backends.errors import TaskFailedError
from chicory_backends.result import AsyncResult
from chicory_backends.types import TaskResult, TaskState


class FakeBackend:
    """Only ``wait_for_result``: AsyncResult.get waits through the contract, nothing else."""

    def __init__(self, answer: TaskResult | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, float | None]] = []

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        self.asked.append((task_id, timeout))
        return self.answer


def handle(answer: TaskResult | None) -> tuple[AsyncResult, FakeBackend]:
    backend = FakeBackend(answer)
    return AsyncResult("t", cast(Backend, backend)), backend


@pytest.mark.parametrize(("seconds", "shown"), [(1.5, "within 1.5s"), (0, "within 0s")])
async def test_no_result_within_the_timeout_is_a_timeout_error_naming_it(
    seconds: float, shown: str
) -> None:
    result, backend = handle(None)
    with pytest.raises(TimeoutError, match=f"'t' did not finish {shown}"):
        await result.get(timeout=seconds)
    assert backend.asked == [("t", seconds)]


async def test_no_result_without_a_timeout_is_still_a_timeout_error() -> None:
    """A backend that gives up on an unbounded wait broke the contract; the caller still
    gets a TimeoutError with a readable text, not a TypeError from formatting None."""
    result, backend = handle(None)
    with pytest.raises(TimeoutError) as raised:
        await result.get()
    assert str(raised.value) == "task 't' did not finish"
    assert backend.asked == [("t", None)]


async def test_a_negative_timeout_is_refused_before_any_wait() -> None:
    result, backend = handle(None)
    with pytest.raises(ValueError, match="negative"):
        await result.get(timeout=-1)
    assert backend.asked == []


async def test_success_returns_the_value_and_failure_raises_with_the_stored_texts() -> None:
    done = TaskResult(task_id="t", state=TaskState.SUCCESS, result={"v": 1})
    assert await handle(done)[0].get(timeout=1) == {"v": 1}
    failed = TaskResult(task_id="t", state=TaskState.FAILURE, error="boom", traceback="tb")
    with pytest.raises(TaskFailedError) as raised:
        await handle(failed)[0].get()
    assert (raised.value.error, raised.value.traceback) == ("boom", "tb")

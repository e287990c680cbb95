"""woken_reads (waiting.py): the reads of woken waiters, batched, over a fake get_results.

It replaced ReadBatcher and keeps its promises: the ids read in one event-loop turn go
out together, a bounded number per statement, and one unreadable row fails only its own
waiters.
"""

from __future__ import annotations

import asyncio

import pytest

from chicory_backends import waiting
from chicory_backends.errors import CorruptResultError, DatabaseError
from chicory_backends.types import TaskResult, TaskState
from chicory_backends.waiting import woken_reads


class FakeResults:
    """``get_results``: the stored rows, each call recorded; ``corrupt`` ids fail a read."""

    def __init__(self, *stored: str) -> None:
        self.rows = {
            task_id: TaskResult(task_id=task_id, state=TaskState.SUCCESS) for task_id in stored
        }
        self.calls: list[list[str]] = []
        self.corrupt: set[str] = set()
        self.error: Exception | None = None

    async def fetch(self, task_ids: list[str]) -> dict[str, TaskResult]:
        self.calls.append(list(task_ids))
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        bad = self.corrupt & set(task_ids)
        if bad:
            raise CorruptResultError(min(bad), "not a result")
        return {task_id: self.rows[task_id] for task_id in task_ids if task_id in self.rows}


async def test_the_reads_of_one_loop_turn_go_out_as_one_call() -> None:
    results = FakeResults("a", "c")
    read = woken_reads(results.fetch)
    found = list(await asyncio.gather(read("a"), read("b"), read("c")))
    assert found == [results.rows["a"], None, results.rows["c"]]
    assert results.calls == [["a", "b", "c"]]


async def test_a_burst_is_read_a_bounded_number_of_ids_per_call() -> None:
    ids = [f"t{n}" for n in range(2 * waiting.WAIT_READ_BATCH + 7)]
    results = FakeResults(*ids)
    read = woken_reads(results.fetch)
    found = await asyncio.gather(*(read(task_id) for task_id in ids))
    assert found == [results.rows[task_id] for task_id in ids]
    assert sorted(map(len, results.calls)) == [7, waiting.WAIT_READ_BATCH, waiting.WAIT_READ_BATCH]


async def test_a_corrupt_row_fails_only_its_own_waiter() -> None:
    results = FakeResults("a", "b", "c")
    results.corrupt = {"b"}
    read = woken_reads(results.fetch)
    found = await asyncio.gather(read("a"), read("b"), read("c"), return_exceptions=True)
    assert found[0] == results.rows["a"] and found[2] == results.rows["c"]
    assert isinstance(found[1], CorruptResultError)
    assert results.calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]


async def test_any_other_error_fails_every_waiter_of_the_read() -> None:
    results = FakeResults("a", "b")
    results.error = DatabaseError("the server went away")
    read = woken_reads(results.fetch)
    found = await asyncio.gather(read("a"), read("b"), return_exceptions=True)
    assert all(outcome is results.error for outcome in found)
    assert results.calls == [["a", "b"]]


@pytest.mark.parametrize("waiters", [1, 3])
async def test_waiters_of_one_id_each_get_the_row(waiters: int) -> None:
    results = FakeResults("a")
    read = woken_reads(results.fetch)
    assert (
        await asyncio.gather(*(read("a") for _ in range(waiters))) == [results.rows["a"]] * waiters
    )
    assert len(results.calls) == 1

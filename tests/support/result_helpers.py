"""Helpers shared by the result tests: ids, results, and equality that sees types."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from chicory_backends.base import Backend
from chicory_backends.types import TaskResult, TaskState


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``True != 1``, ``"42" != 42``, a tuple
    is not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return bool(a == b)


def new_id() -> str:
    return f"task-{uuid.uuid4().hex}"


def success(task_id: str, value: Any) -> TaskResult:
    return TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=value)


def before_first_read(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, action: Callable[[], Any], *, after: bool
) -> None:
    """Run ``action`` once, just before (or just after) the waiter's first read."""
    done = [False]
    real_one, real_many = backend.get_result, backend.get_results

    async def around(read: Any) -> Any:
        if not done[0] and not after:
            done[0] = True
            await action()
        value = await read
        if not done[0] and after:
            done[0] = True
            await action()
        return value

    async def get_result(task_id: str) -> TaskResult | None:
        result: TaskResult | None = await around(real_one(task_id))
        return result

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        results: dict[str, TaskResult] = await around(real_many(task_ids))
        return results

    monkeypatch.setattr(backend, "get_result", get_result)
    monkeypatch.setattr(backend, "get_results", get_results)

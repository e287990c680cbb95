"""Strict JSON for stored results: refuse what would not come back unchanged, before any I/O."""

from __future__ import annotations

import json
from typing import Any

from chicory_backends.errors import (
    CorruptResultError,
    InvalidTaskIdError,
    ResultNotSerializableError,
    ResultTooLargeError,
)
from chicory_backends.types import MAX_TASK_ID_LENGTH, TaskResult, TaskState, WorkerStats

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def check_task_id(task_id: str) -> str:
    if not isinstance(task_id, str):
        raise InvalidTaskIdError(f"task id must be a str, not {type(task_id).__name__}")
    if not task_id:
        raise InvalidTaskIdError("task id must not be empty")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise InvalidTaskIdError(
            f"task id is {len(task_id)} characters long, the limit is {MAX_TASK_ID_LENGTH}"
        )
    if "\x00" in task_id:
        raise InvalidTaskIdError("task id must not contain a NUL character")
    return task_id


def encode_value(task_id: str, value: Any, max_bytes: int | None = None) -> str | None:
    """JSON text of a task's return value; None stays SQL NULL."""
    if value is None:
        return None
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ResultNotSerializableError(task_id, str(exc)) from None
    if max_bytes is not None and len(text) > max_bytes // 4:
        size = len(text.encode())
        if size > max_bytes:
            raise ResultTooLargeError(task_id, size, max_bytes)
    return text


def decode_value(task_id: str, text: str | bytes | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptResultError(task_id, f"invalid JSON ({exc})") from None


def decode_state(task_id: str, state: str) -> TaskState:
    try:
        return TaskState(state)
    except ValueError:
        raise CorruptResultError(task_id, f"unknown state {state!r}") from None


def build_result(
    task_id: str, state: str, value: str | bytes | None, error: str | None, tb: str | None
) -> TaskResult:
    # model_construct: the fields were checked on the way in; validation on every
    # read would cost more than the query on a local database.
    return TaskResult.model_construct(
        task_id=task_id,
        state=decode_state(task_id, state),
        result=decode_value(task_id, value),
        error=error,
        traceback=tb,
    )


def encode_stats(stats: WorkerStats) -> str:
    return stats.model_dump_json()


def decode_stats(worker_id: str, text: str | bytes) -> WorkerStats:
    try:
        return WorkerStats.model_validate_json(text)
    except ValueError as exc:
        raise CorruptResultError(worker_id, f"invalid heartbeat ({exc})") from None

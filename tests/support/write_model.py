"""The contract, one write at a time: the model coalesced batches must agree with."""

from __future__ import annotations

from typing import Any

from chicory_backends.base import Backend
from chicory_backends.types import TERMINAL_STATES, TaskResult, TaskState

Write = tuple[str, TaskState, Any]  # kind ("set_state" / "store_result"), state, value


def apply(row: dict[str, Any] | None, write: Write) -> dict[str, Any] | None:
    """The contract, one write at a time: the model the batches must agree with."""
    kind, state, value = write
    if row is not None and row["state"] in TERMINAL_STATES and state not in TERMINAL_STATES:
        return row
    if kind == "set_state":
        kept = row or {"result": None, "error": None}
        return {"state": state, "result": kept["result"], "error": kept["error"]}
    return {"state": state, "result": value, "error": f"e{value}"}


def call_for(backend: Backend, task_id: str, write: Write) -> Any:
    kind, state, value = write
    if kind == "set_state":
        return backend.set_state(task_id, state)
    return backend.store_result(
        task_id, TaskResult(task_id=task_id, state=state, result=value, error=f"e{value}")
    )

"""The strict JSON codec's read side: results are rebuilt without re-validation."""

from __future__ import annotations

import pytest

from chicory_backends import codec
from chicory_backends.types import TaskResult, TaskState

CASES = [
    ("a", "SUCCESS", '{"x":[1,2.5,null,"\u00e9"]}', None, None),
    ("b", "FAILURE", None, "ValueError: boom", "Traceback ..."),
    ("c", "PENDING", "null", None, None),
    ("d", "RETRY", '"text"', "", ""),
]


def test_direct_result_construction_equals_model_construct() -> None:
    """build_result skips model_construct when the installed pydantic allows it; the
    object must be the same in every respect."""
    assert codec._FAST_CONSTRUCT  # the installed pydantic is one it supports
    for task_id, state, value, error, tb in CASES:
        fast = codec.build_result(task_id, state, value, error, tb)
        slow = TaskResult.model_construct(
            task_id=task_id,
            state=codec.decode_state(task_id, state),
            result=codec.decode_value(task_id, value),
            error=error,
            traceback=tb,
        )
        assert type(fast) is TaskResult
        assert fast == slow and repr(fast) == repr(slow)
        assert fast.__dict__ == slow.__dict__
        assert fast.model_fields_set == slow.model_fields_set
        assert fast.__pydantic_extra__ == slow.__pydantic_extra__
        assert fast.__pydantic_private__ == slow.__pydantic_private__
        assert fast.model_dump() == slow.model_dump()
        assert fast.model_dump_json() == slow.model_dump_json()
        assert fast.model_copy(update={"error": "x"}) == slow.model_copy(update={"error": "x"})
        assert TaskResult.model_validate(fast.model_dump()) == fast


def test_fallback_to_model_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_FAST_CONSTRUCT", False)
    task_id, state, value, error, tb = CASES[0]
    assert codec.build_result(task_id, state, value, error, tb) == TaskResult(
        task_id="a", state=TaskState.SUCCESS, result={"x": [1, 2.5, None, "\u00e9"]}
    )

"""Chicory 0.1.0's own stored formats, read exactly and written on request.

Chicory's own backends store a task as the JSON of its ``TaskResult`` model
(``{"task_id", "state", "result", "error", "traceback"}``, the value as plain JSON): in
the ``result_json`` column of its SQL table and as the ``chicory:result:<id>`` key in
Redis. A store that Chicory wrote, or that Chicory's own clients still read during a
switch, holds that document beside ours. This module is the one place that knows it:

- ``decode_chicory_result`` reads it back with every JSON type kept (a stored string
  ``"42"`` stays the string ``"42"``; ours keeps the value as JSON text, which is why the
  two must never be confused);
- ``encode_chicory_result`` writes the same document, for the window in which Chicory's
  own clients read what our workers store.

In Redis both documents live at the same key, ``<prefix>:result:<id>``; ``is_chicory_shaped``
is the rule that tells them apart, and ``chicory_shaped_document`` writes ours in a shape
that Chicory's client reads too (``RedisBackendConfig.write_chicory_format``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from chicory_backends.codec import decode_state, document_record
from chicory_backends.errors import CorruptResultError
from chicory_backends.types import TaskRecord, TaskResult, TaskState

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_RESULT_TEXTS = ("result", "error", "traceback")


def load_chicory_document(task_id: str, raw: str | bytes) -> dict[str, Any]:
    """The fields of one Chicory ``TaskResult`` document; raises CorruptResultError
    naming the task when it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptResultError(task_id, f"invalid Chicory result JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        raise CorruptResultError(task_id, "not a Chicory result document")
    return check_chicory_fields(task_id, doc)


def check_chicory_fields(task_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` itself once its error and traceback are text or null; raises
    CorruptResultError naming the task otherwise."""
    for name in ("error", "traceback"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise CorruptResultError(task_id, f"{name} must be text or null")
    return doc


def decode_chicory_result(task_id: str, raw: str | bytes, state: str | None = None) -> TaskResult:
    """A ``TaskResult`` from Chicory's document, the value exactly as Chicory stored it.

    ``state``: the state stored beside the document (Chicory's SQL ``state`` column, which
    its ``set_state`` updates without rewriting the document); the document's own state
    otherwise.
    """
    return chicory_result(task_id, load_chicory_document(task_id, raw), state)


def chicory_result(task_id: str, doc: Mapping[str, Any], state: str | None = None) -> TaskResult:
    """``decode_chicory_result`` of a document already loaded and checked.

    The state beside the document (``state``) wins, but never with a non-terminal state
    over a terminal document: Chicory's own ``set_state`` has no guard, and a late STARTED
    of its worker rewrites the column alone; Chicory's own client then still reads the
    document's SUCCESS, and so does ours (the terminal-state rule)."""
    stored = decode_state(task_id, doc["state"])
    beside = decode_state(task_id, state) if state else stored
    return TaskResult.model_construct(
        task_id=task_id,
        state=stored if stored.is_terminal and not beside.is_terminal else beside,
        result=doc.get("result"),
        error=doc.get("error"),
        traceback=doc.get("traceback"),
    )


def encode_chicory_result(
    task_id: str,
    state: TaskState | str,
    value_json: str | None,
    error: str | None,
    traceback: str | None,
    fields: Mapping[str, Any] | None = None,
) -> str:
    """Chicory's ``TaskResult`` document for a write of ours; ``value_json`` is the value
    as the JSON text our codec already made (embedded as it is, never re-encoded).

    ``fields``: more JSON fields, put after the state (Chicory's client ignores them);
    "result", "error" and "traceback" always come last, in that order."""
    head_fields = {"task_id": task_id, "state": decode_state(task_id, str(state)).value}
    for name, value in (fields or {}).items():
        if name not in _RESULT_TEXTS:
            head_fields.setdefault(name, value)
    head = _encoder.encode(head_fields)
    tail = _encoder.encode({"error": error, "traceback": traceback})
    return f'{head[:-1]},"result":{value_json or "null"},{tail[1:]}'


# -- Redis: two document shapes at one key ---------------------------------------------
#
# The rule: a document with a "task_id" key is Chicory-shaped, and its "result" is the
# value as plain JSON; a document without one is ours, and its "result" is the value's
# JSON text. Chicory's TaskResult JSON always has "task_id" (pydantic dumps every field,
# None included); ours never has one (codec.encode_document and encode_state_document
# write the state, the result fields and the history fields, and the store script drops
# "task_id" whenever it rewrites a document without write_chicory_format) unless written
# with write_chicory_format, which makes it Chicory-shaped on purpose: our fields plus
# "task_id", the value as plain JSON, and "result", "error", "traceback" last in that order
# (the store script cuts the value's text out there; redis/backend.py).
CHICORY_SHAPE_KEY = "task_id"


def is_chicory_shaped(doc: Mapping[str, Any]) -> bool:
    """Whether a loaded Redis document keeps its value as plain JSON (see the rule above)."""
    return CHICORY_SHAPE_KEY in doc


def chicory_record(task_id: str, doc: dict[str, Any], *, whole: bool = True) -> TaskRecord:
    """The TaskRecord of a Chicory-shaped document: the history fields that ours written
    for Chicory carry, none (times at codec.UNKNOWN_TIME) for Chicory's own; the value as
    stored. Raises CorruptResultError."""
    others = {name: value for name, value in doc.items() if name not in ("task_id", "result")}
    record = document_record(task_id, others, whole=whole)
    if whole:
        record.result = doc.get("result")
    return record


def chicory_shaped_document(task_id: str, ours: bytes) -> bytes:
    """Our Redis document (codec.encode_document or encode_state_document) in the shape
    Chicory 0.1.0's ``TaskResult.model_validate_json`` reads, our fields kept beside it."""
    doc = json.loads(ours)
    value_json, error, traceback = (doc.pop(name, None) for name in _RESULT_TEXTS)
    state = doc.pop("state")
    return encode_chicory_result(task_id, state, value_json, error, traceback, doc).encode()

"""Strict JSON for stored results: refuse what would not come back unchanged, before any I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from chicory_backends.errors import (
    ArgumentsNotRecordableError,
    CorruptResultError,
    InvalidTaskIdError,
    ResultNotSerializableError,
    ResultTooLargeError,
)
from chicory_backends.types import (
    MAX_TASK_ID_LENGTH,
    TaskRecord,
    TaskResult,
    TaskState,
    WorkerStats,
)

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

# orjson (a default dependency; the stdlib path works without it, and the tests run both):
# encodes a large result in a tenth of the stdlib encoder's time.
# ``use_orjson(False)`` switches it off (tests, and a user who must).
try:
    import orjson as _orjson_module
except ImportError:  # pragma: no cover - orjson is a dependency; the pure path is tested
    _orjson_module = None  # type: ignore[assignment]
_orjson: Any = _orjson_module


def use_orjson(enabled: bool) -> None:
    """Use orjson for results' JSON (the default when installed) or the stdlib only."""
    global _orjson
    _orjson = _orjson_module if enabled else None


# A result is refused unless it reads back equal, with the same types, from EVERY backend,
# so that what stores in development (SQLite) also stores in production. The strictest
# backend sets each limit:
# - MariaDB's JSON column carries CHECK (JSON_VALID(..)), which refuses 32 levels of nesting;
MAX_NESTING = 31
# - PostgreSQL's JSONB keeps numbers as NUMERIC and prints them without an exponent, so a
#   float of magnitude 1e16 or more (all of them integral) would come back as an int;
FLOAT_MAGNITUDE_LIMIT = 1e16
# - PostgreSQL text and JSONB cannot hold a NUL character.


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
    if not _is_utf8(task_id):
        raise InvalidTaskIdError("task id must be valid Unicode text, without lone surrogates")
    return task_id


def check_label(field: str, value: str) -> str:
    """A task name, queue or worker id: the rules of a task id, naming the field.

    The same few names, queues and worker ids come with every write of a busy worker:
    those already found valid are remembered (a bounded set), so each write checks a
    set membership instead of scanning and encoding three strings."""
    if type(value) is str and value in _VALID_LABELS:
        return value
    try:
        check_task_id(value)
    except InvalidTaskIdError as exc:
        raise InvalidTaskIdError(str(exc).replace("task id", field, 1)) from None
    if len(_VALID_LABELS) >= _MAX_VALID_LABELS:
        _VALID_LABELS.clear()
    _VALID_LABELS.add(value)
    return value


_VALID_LABELS: set[str] = set()
_MAX_VALID_LABELS = 4096


def encode_arguments(task_id: str, arguments: Any, max_bytes: int) -> str:
    """The JSON text of a task's recorded arguments, by the rules of results, capped."""
    try:
        text = encode_value(task_id, arguments)
    except ResultNotSerializableError as exc:
        raise ArgumentsNotRecordableError(task_id, exc.reason) from None
    size = len(text.encode("utf-8")) if text is not None else 0
    if size > max_bytes:
        raise ArgumentsNotRecordableError(
            task_id, f"{size} bytes as JSON, over max_args_bytes={max_bytes}"
        )
    return text or "null"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(task_id: str, field: str, text: str | None) -> str | None:
    """An error or traceback text every backend can store unchanged."""
    if text is not None and ("\x00" in text or not _is_utf8(text)):
        raise ResultNotSerializableError(
            task_id, f"{field} contains a NUL character or a lone surrogate"
        )
    return text


def _refuse(task_id: str, reason: str) -> NoReturn:
    raise ResultNotSerializableError(task_id, reason)


def _check_portable(task_id: str, value: Any) -> None:
    """Refuse what json would silently change (tuples, non-str keys, subclasses) or what
    some backend cannot keep (see the limits above). Iterative: no recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                _refuse(task_id, "a string contains a NUL character")
        elif item is None or kind is bool or kind is int:
            continue
        elif kind is float:
            if not math.isfinite(item):
                _refuse(task_id, f"{item!r} is not a JSON number")
            if abs(item) >= FLOAT_MAGNITUDE_LIMIT:
                _refuse(
                    task_id,
                    f"float {item!r} is too large to read back as a float from every "
                    f"backend (limit {FLOAT_MAGNITUDE_LIMIT:g}); store it as an int or a str",
                )
        elif kind is list or kind is dict:
            if depth >= MAX_NESTING:
                _refuse(task_id, f"lists and dicts are nested deeper than {MAX_NESTING} levels")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        _refuse(
                            task_id,
                            f"dict key {key!r} is of type {type(key).__name__}, not str "
                            "(JSON would turn it into a str)",
                        )
                    if "\x00" in key:
                        _refuse(task_id, "a dict key contains a NUL character")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str | int | float | list | tuple | dict):
            base = next(t for t in (str, int, float, list, dict, tuple) if isinstance(item, t))
            base = list if base is tuple else base
            _refuse(
                task_id,
                f"type {kind.__name__} would come back as a plain {base.__name__}: "
                "convert it first",
            )
        else:
            _refuse(
                task_id,
                f"type {kind.__name__} is not JSON (None, bool, int, float, str, "
                "list and dict with str keys are)",
            )


def _plainly_portable(value: Any) -> bool:
    """True when ``value`` certainly passes ``_check_portable`` but for NUL characters in
    strings (which the caller finds in the encoded text, where they are ``\\u0000``).

    The same rules as ``_check_portable``, cut to what the common case needs: leaves are
    checked inline instead of one stack entry each, which halves the walk of a large
    result. False says only "look closer": ``_check_portable`` then names the problem.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return (
            kind is str
            or kind is int
            or kind is bool
            or (kind is float and -FLOAT_MAGNITUDE_LIMIT < value < FLOAT_MAGNITUDE_LIMIT)
        )
    # One list per level instead of a (container, depth) tuple per container: a large
    # result holds tens of thousands of small dicts, and a tuple each kept Python's
    # garbage collector running over the whole live result (half the walk's time).
    level: list[Any] = [value]
    depth = 0
    while level:
        if depth >= MAX_NESTING:
            return False
        deeper: list[Any] = []
        push = deeper.append
        for container in level:
            if type(container) is dict:
                for key in container:
                    if type(key) is not str:
                        return False
                children = container.values()
            else:
                children = container
            for child in children:
                child_kind = type(child)
                if child_kind is str or child_kind is int or child_kind is bool or child is None:
                    continue
                if child_kind is float:
                    # NaN fails both comparisons, and so does infinity.
                    if not -FLOAT_MAGNITUDE_LIMIT < child < FLOAT_MAGNITUDE_LIMIT:
                        return False
                elif child_kind is dict or child_kind is list:
                    push(child)
                else:
                    return False
        level = deeper
        depth += 1
    return True


def _encoded(task_id: str, value: Any) -> bytes:
    """The UTF-8 JSON of a value already found portable: orjson where it is installed (a
    tenth of the stdlib encoder's time on a large result), the stdlib encoder otherwise
    and for what orjson does not take (ints beyond 64 bits)."""
    if _orjson is not None:
        try:
            encoded: bytes = _orjson.dumps(value)
            return encoded
        except TypeError:
            pass  # an int beyond 64 bits, a lone surrogate: the stdlib says which
    try:
        return _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. an int over 4300 digits
        if isinstance(exc, UnicodeEncodeError):
            raise ResultNotSerializableError(
                task_id, "a string contains a lone surrogate"
            ) from None
        raise ResultNotSerializableError(task_id, str(exc)) from None


def encode_value(task_id: str, value: Any, max_bytes: int | None = None) -> str | None:
    """JSON text of a task's return value; None stays SQL NULL.

    Raises ResultNotSerializableError (naming the problem) when the value would not read
    back unchanged from every backend, and ResultTooLargeError over ``max_bytes`` UTF-8
    bytes, before any I/O.
    """
    if value is None:
        return None
    if not _plainly_portable(value):
        _check_portable(task_id, value)  # raises, naming the problem
    data = _encoded(task_id, value)
    if b"\\u0000" in data:  # a NUL character in a string or key (or the text \\u0000)
        _check_portable(task_id, value)
    if max_bytes is not None and len(data) > max_bytes:
        raise ResultTooLargeError(task_id, len(data), max_bytes)
    return data.decode("utf-8")


def decode_value(task_id: str, text: str | bytes | None) -> Any:
    """The value of stored JSON text, every type as it was stored; raises
    CorruptResultError naming the task when the text is not JSON. (The stdlib decoder:
    orjson measured no faster here, and reads ints beyond 64 bits as floats.)"""
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


def _fast_construct_supported() -> bool:
    """Whether ``_construct_raw`` builds exactly what ``TaskResult.model_construct`` does.

    It sets pydantic's internal slots itself; a pydantic whose models store something
    else (or a TaskResult with private attributes, extras or a custom init) falls back.
    """
    if (
        TaskResult.__private_attributes__
        or TaskResult.model_config.get("extra") == "allow"
        or set(getattr(TaskResult, "__slots__", ()))
        != {"__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"}
    ):
        return False
    try:
        fields = dict.fromkeys(_RESULT_FIELDS, None)
        fields.update(task_id="x", state=TaskState.SUCCESS)
        expected = TaskResult.model_construct(**fields)
        built = _construct_raw(fields)
        return (
            built == expected
            and built.__dict__ == expected.__dict__
            and built.__pydantic_fields_set__ == expected.__pydantic_fields_set__
            and built.__pydantic_extra__ == expected.__pydantic_extra__
            and built.__pydantic_private__ == expected.__pydantic_private__
        )
    except Exception:  # any surprise means: use model_construct
        return False


_RESULT_FIELDS = ("task_id", "state", "result", "error", "traceback")
_new = object.__new__
_setattr = object.__setattr__


def _construct_raw(fields: dict[str, Any]) -> TaskResult:
    result = _new(TaskResult)
    _setattr(result, "__dict__", fields)
    _setattr(result, "__pydantic_fields_set__", set(_RESULT_FIELDS))
    _setattr(result, "__pydantic_extra__", None)
    _setattr(result, "__pydantic_private__", None)
    return result


_FAST_CONSTRUCT = _fast_construct_supported()


def build_result(
    task_id: str, state: str, value: str | bytes | None, error: str | None, tb: str | None
) -> TaskResult:
    # model_construct: the fields were checked on the way in; validation on every
    # read would cost more than the query on a local database. When the installed
    # pydantic lays models out as checked at import (_fast_construct_supported), the
    # same object is built directly, at a quarter of model_construct's cost.
    fields = {
        "task_id": task_id,
        "state": decode_state(task_id, state),
        "result": decode_value(task_id, value),
        "error": error,
        "traceback": tb,
    }
    if _FAST_CONSTRUCT:
        return _construct_raw(fields)
    return TaskResult.model_construct(**fields)


def encode_stats(stats: WorkerStats) -> str:
    return stats.model_dump_json()


def decode_stats(worker_id: str, text: str | bytes) -> WorkerStats:
    try:
        return WorkerStats.model_validate_json(text)
    except ValueError as exc:
        raise CorruptResultError(worker_id, f"invalid heartbeat ({exc})") from None


# -- the Redis document ------------------------------------------------------------------
#
# One JSON object per task: "state", "attempts" (int), the texts "name", "queue",
# "worker_id", "error", "traceback", "result" and "args" (both JSON text), and the times
# "enqueued_at", "started_at", "finished_at", "created_at", "updated_at" as ISO-8601 text
# (the store script re-encodes with cjson, which prints numbers with 14 significant
# digits: a float timestamp would lose its microseconds). A field that is null is left
# out. Documents written before the history ({"state", "result", "error", "traceback"},
# nulls included) still read.

_document_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DOCUMENT_TEXTS = ("name", "queue", "worker_id", "error", "traceback", "result", "args")
_DOCUMENT_TIMES = ("enqueued_at", "started_at", "finished_at", "created_at", "updated_at")
# What a document without times (one written before the history) reads as.
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _document_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, TaskState):
        return value.value
    return value


def _encode_document_fields(task_id: str, fields: Mapping[str, Any]) -> bytes:
    doc = {name: _document_value(value) for name, value in fields.items() if value is not None}
    try:
        return _document_encoder.encode(doc).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
        raise ResultNotSerializableError(task_id, str(exc)) from None


def encode_document(
    task_id: str,
    result: TaskResult,
    max_bytes: int | None,
    history: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON of one ``store_result`` write; raises before any I/O when it cannot
    round-trip. ``history``: the write's other fields (history.write_fields, the times)."""
    doc = {
        **(history or {}),
        "state": TaskState(result.state).value,
        "result": encode_value(task_id, result.result, max_bytes),
        "error": check_text(task_id, "error", result.error),
        "traceback": check_text(task_id, "traceback", result.traceback),
    }
    return _encode_document_fields(task_id, doc)


def encode_state_document(task_id: str, state: TaskState, history: Mapping[str, Any]) -> bytes:
    """The JSON of one ``set_state`` write: the state and the history fields only (the
    store script keeps the stored result, error and traceback)."""
    return _encode_document_fields(task_id, {**history, "state": TaskState(state).value})


def load_document(task_id: str, raw: bytes | str) -> dict[str, Any]:
    """The fields of one stored Redis document, ours or Chicory's (chicory_format tells
    them apart); raises CorruptResultError when it is not a JSON object with a state."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptResultError(task_id, f"invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        raise CorruptResultError(task_id, "not a result document")
    return doc


def decode_document(task_id: str, raw: bytes | str) -> TaskResult:
    return document_result(task_id, load_document(task_id, raw))


def document_result(task_id: str, doc: Mapping[str, Any]) -> TaskResult:
    """The TaskResult of one of our loaded documents (result, error, traceback as text)."""
    texts = [doc.get(name) for name in ("result", "error", "traceback")]
    if not all(text is None or isinstance(text, str) for text in texts):
        raise CorruptResultError(task_id, "result, error and traceback must be text or null")
    return build_result(task_id, doc["state"], *texts)


def decode_document_record(task_id: str, raw: bytes | str, *, whole: bool = True) -> TaskRecord:
    """The TaskRecord of one stored document; ``whole=False`` leaves out result,
    traceback and args (a page of list_tasks). A document written before the history
    reads with attempts 0 and created_at/updated_at at ``UNKNOWN_TIME``."""
    return document_record(task_id, load_document(task_id, raw), whole=whole)


def document_record(task_id: str, doc: Mapping[str, Any], *, whole: bool = True) -> TaskRecord:
    """``decode_document_record`` of a loaded document; raises CorruptResultError."""
    for name in (*_DOCUMENT_TEXTS, *_DOCUMENT_TIMES):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise CorruptResultError(task_id, f"{name} must be text or null")
    attempts = doc.get("attempts")
    if attempts is not None and (type(attempts) is not int or attempts < 0):
        raise CorruptResultError(task_id, "attempts must be a non-negative int")
    columns = ["task_id", "state", "attempts", *_DOCUMENT_TIMES, "name", "queue", "worker_id"]
    columns.append("error")
    if whole:
        columns += ["result", "traceback", "args"]
    row = [task_id, *(doc.get(name) for name in columns[1:])]
    for name in ("created_at", "updated_at"):
        position = columns.index(name)
        if row[position] is None:
            row[position] = UNKNOWN_TIME
    return record_from_row(columns, row)


# -- history records ---------------------------------------------------------------------


def utc_time(value: datetime | str | None) -> datetime | None:
    """A stored time as an aware UTC datetime: drivers give aware, naive-UTC (MySQL,
    SQLite) or, in a Redis document, ISO text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def record_from_row(columns: Sequence[str], row: Sequence[Any]) -> TaskRecord:
    """A TaskRecord from one row (or document) of the named columns; JSON columns are text."""
    fields = dict(zip(columns, row, strict=True))
    task_id = fields["task_id"]
    try:
        for name in ("enqueued_at", "started_at", "finished_at", "created_at", "updated_at"):
            if name in fields:
                fields[name] = utc_time(fields[name])
    except (TypeError, ValueError) as exc:
        raise CorruptResultError(task_id, f"invalid time ({exc})") from None
    fields["state"] = decode_state(task_id, fields["state"])
    for name in ("result", "args"):
        if name in fields:
            fields[name] = decode_value(task_id, fields[name])
    fields["attempts"] = int(fields.get("attempts") or 0)
    return TaskRecord.model_construct(**fields)

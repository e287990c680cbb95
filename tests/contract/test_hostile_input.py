"""Hostile task ids, results and stored rows, generated with hypothesis, on every backend.

Each kind gets a fresh migrated database of its own (Redis: a fresh key prefix on the
shared server), connected once on a module event loop; hypothesis examples run on that
loop. The rule under test: a value is stored and read back EXACTLY (equal, same Python
types), or refused with our own error before any I/O, and then nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert, update

from chicory_backends.base import Backend
from chicory_backends.codec import FLOAT_MAGNITUDE_LIMIT, MAX_NESTING
from chicory_backends.errors import (
    CorruptResultError,
    InvalidTaskIdError,
    ResultNotSerializableError,
    ResultTooLargeError,
)
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.schema import task_results
from chicory_backends.types import MAX_TASK_ID_LENGTH, TaskResult, TaskState, WorkerStats
from tests.support.result_helpers import same
from tests.support.services import REDIS_HOST, REDIS_PORT, require
from tests.support.sql_databases import migrated_database, run_database_name

T = TypeVar("T")
KINDS = ("sqlite", "postgres", "mysql", "redis")
LIMIT = 200  # max_result_bytes of each target's second, limited backend

HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- targets: one connected backend per kind, on a loop of the module's own ----------------


@dataclass
class Target:
    kind: str
    backend: Backend
    limited: Backend  # the same storage, with max_result_bytes=LIMIT
    run: Callable[[Awaitable[T]], T]
    io: list[int] = field(default_factory=lambda: [0])  # statements / commands sent

    @contextmanager
    def no_io(self) -> Iterator[None]:
        before = self.io[0]
        yield
        assert self.io[0] == before, "a refused call reached the server"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _count_sql(backend: DatabaseBackend, io: list[int]) -> None:
    # Every statement, SQLAlchemy's or the hot path's on the driver connection, needs a
    # connection from the pool first: a call that takes none cannot have reached the server.
    assert backend._engine is not None

    def count(*_args: Any) -> None:
        io[0] += 1

    event.listen(backend._engine.sync_engine, "checkout", count)


def _count_redis(backend: Any, io: list[int]) -> None:
    client = backend._client
    original = client.execute_command

    async def counted(*args: Any, **kwargs: Any) -> Any:
        io[0] += 1
        return await original(*args, **kwargs)

    client.execute_command = counted


def _redis_backend(prefix: str, **overrides: Any) -> Backend:
    try:
        from chicory_backends.redis import RedisBackend
    except Exception as error:  # being written: test it only once it imports
        pytest.skip(f"chicory_backends.redis is not importable: {error}")
    from chicory_backends.config import RedisBackendConfig

    require("Redis", REDIS_HOST, REDIS_PORT)
    config = RedisBackendConfig(host=REDIS_HOST, port=REDIS_PORT, db=1, key_prefix=prefix)
    return RedisBackend(config.model_copy(update=overrides))


async def _delete_redis_prefix(backend: Any) -> None:
    client = backend._client
    keys = [key async for key in client.scan_iter(match=f"{backend.config.key_prefix}:*")]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


@pytest.fixture(scope="module", params=KINDS)
def target(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[Target]:
    kind: str = request.param
    run = loop.run_until_complete
    with ExitStack() as stack:
        if kind == "redis":
            prefix = f"hostile-{uuid.uuid4().hex[:10]}"
            backend = _redis_backend(prefix)
            limited = _redis_backend(prefix, max_result_bytes=LIMIT)
        else:
            config = stack.enter_context(migrated_database(kind, run_database_name("hostile")))
            backend = DatabaseBackend(config)
            limited = DatabaseBackend(config.model_copy(update={"max_result_bytes": LIMIT}))
        run(backend.connect())
        run(limited.connect())
        found = Target(kind, backend, limited, run)
        for each in (backend, limited):
            if kind == "redis":
                _count_redis(each, found.io)
            else:
                _count_sql(each, found.io)  # type: ignore[arg-type]
        try:
            yield found
        finally:
            if kind == "redis":
                run(_delete_redis_prefix(backend))
            run(limited.disconnect())
            run(backend.disconnect())


def new_id() -> str:
    return f"h-{uuid.uuid4()}"


# -- exact comparison ----------------------------------------------------------------------


# -- task ids --------------------------------------------------------------------------------

SPECIAL_CHARS = [
    "\x00", "'", '"', "`", "\\", "%", "?", ":", "$", ";", "-", "/", "*",
    " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1f", "\x7f", "\u00a0", "\u2028", "\u200b",
    "\ufeff", "\ufffd", "\uffff", "\U0001f600", "\U00010000", "\U0010ffff", "ß", "İ", "ǅ",
    "\u0301", "\u00e9", "\ud800", "\udfff",
]  # fmt: skip
SNIPPETS = ["%s", "%(task_id)s", "$1", "--", "/*", "e\u0301", "' OR '1'='1", "\\'", "{}"]

id_char = st.one_of(
    st.characters(),  # any code point but a surrogate
    st.characters(min_codepoint=0x10000),  # 4-byte UTF-8 (MariaDB utf8mb4)
    st.sampled_from(SPECIAL_CHARS),
)
task_ids = st.one_of(
    st.lists(id_char | st.sampled_from(SNIPPETS), max_size=12).map("".join),
    st.text(id_char, min_size=250, max_size=260),
    st.builds(lambda c, n: c * n, id_char, st.sampled_from([1, 254, 255, 256])),
    st.builds(lambda s, pad: s + pad, st.text(id_char, max_size=10), st.sampled_from([" ", "  "])),
)


def valid_id(task_id: str) -> bool:
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(task_id) <= MAX_TASK_ID_LENGTH and "\x00" not in task_id


def refused_before_io(target: Target, task_id: str) -> None:
    b = target.backend
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: b.set_state(task_id, TaskState.STARTED),
        lambda: b.store_result(task_id, TaskResult(task_id="x", state=TaskState.SUCCESS)),
        lambda: b.get_result(task_id),
        lambda: b.get_results(["fine", task_id]),
        lambda: b.delete_result(task_id),
    ]
    for call in calls:
        with target.no_io(), pytest.raises(InvalidTaskIdError):
            target.run(call())


@HYPOTHESIS
@given(task_id=task_ids)
def test_task_ids_round_trip_exactly_or_are_refused(target: Target, task_id: str) -> None:
    if not valid_id(task_id):
        refused_before_io(target, task_id)
        return
    b, run = target.backend, target.run
    stored = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=task_id, error=task_id)
    run(b.set_state(task_id, TaskState.STARTED))
    run(b.store_result(task_id, stored))
    got = run(b.get_result(task_id))
    assert got is not None and got == stored and same(got.result, task_id)
    many = run(b.get_results([task_id, task_id]))
    assert list(many) == [task_id] and many[task_id] == stored
    run(b.delete_result(task_id))
    assert run(b.get_result(task_id)) is None


@HYPOTHESIS
@given(first=task_ids, second=task_ids)
def test_distinct_ids_never_share_a_row(target: Target, first: str, second: str) -> None:
    """Case, trailing spaces, normalisation forms: different strings, different tasks."""
    assume(valid_id(first) and valid_id(second) and first != second)
    b, run = target.backend, target.run
    tag = uuid.uuid4().hex
    for task_id in (first, second):
        run(b.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS)))
        run(b.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS,
                                               result=[task_id, tag])))  # fmt: skip
    got = run(b.get_results([first, second]))
    assert set(got) == {first, second}
    assert got[first].result == [first, tag] and got[second].result == [second, tag]
    run(b.delete_result(first))
    assert run(b.get_result(second)) is not None
    run(b.delete_result(second))


@pytest.mark.parametrize(
    "task_id",
    ["x" * 255, "\U0001f600" * 255, "'" * 255, " " * 255, "\\" * 255, "é" * 255],
    ids=["ascii", "4-byte", "quotes", "spaces", "backslashes", "2-byte"],
)
def test_longest_ids(target: Target, task_id: str) -> None:
    b, run = target.backend, target.run
    stored = TaskResult(task_id=task_id, state=TaskState.FAILURE, error="e")
    run(b.store_result(task_id, stored))
    assert run(b.get_result(task_id)) == stored
    assert run(b.get_results([task_id])) == {task_id: stored}
    run(b.delete_result(task_id))
    refused_before_io(target, task_id + task_id[-1])  # 256 characters


@pytest.mark.parametrize(
    "task_id", ["", "a\x00b", "\x00", "\ud800", "ok\udfff", "\ud83d\ude00", 7, None, b"bytes"]
)
def test_invalid_ids_are_refused_before_io(target: Target, task_id: Any) -> None:
    refused_before_io(target, task_id)


# -- results ---------------------------------------------------------------------------------

text_char = st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARS))
portable_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: abs(x) < FLOAT_MAGNITUDE_LIMIT
)
portable_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30
)
portable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    portable_floats,
    portable_text,
)
portable_values = st.recursive(
    portable_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(portable_text, children, max_size=5)
    ),
    max_leaves=25,
)


def nested(depth: int, leaf: Any = 1, as_dict: bool = False) -> Any:
    value = leaf
    for level in range(depth):
        value = {f"k{level}": value} if as_dict else [value]
    return value


class Colour(IntEnum):
    RED = 1


class Point(NamedTuple):
    x: int
    y: int


hostile_scalars = st.one_of(
    portable_scalars,
    st.floats(),  # NaN, +-Infinity, huge
    st.sampled_from([1e16, -1e16, 1e308, 1.7976931348623157e308, 9999999999999998.0, -0.0]),
    st.sampled_from([10**4299, -(10**4299)]),  # 4300 digits: the most Python prints
    st.text(text_char, max_size=30),  # NUL, lone surrogates
    st.binary(max_size=10),
    st.builds(object),
    st.complex_numbers(allow_nan=False, max_magnitude=10),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(),
    st.just(Colour.RED),
    st.just(TaskState.SUCCESS),
    st.frozensets(st.integers(), max_size=3),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(text_char, max_size=8), children, max_size=4),
        st.dictionaries(
            st.one_of(st.integers(), st.booleans(), st.none(), st.floats(), st.tuples()),
            children,
            min_size=1,
            max_size=3,
        ),
        st.tuples(children, children),
        st.builds(Point, children, children),
        st.sets(st.integers(), max_size=3),
    ),
    max_leaves=12,
) | st.builds(nested, st.integers(MAX_NESTING - 2, MAX_NESTING + 3), st.just(1), st.booleans())


def store_exactly_or_refuse(target: Target, value: Any, backend: Backend | None = None) -> bool:
    """True if stored and read back exactly; False if refused before I/O with nothing written.

    Any other outcome (a DatabaseError from the server, a raw driver exception, a value
    that comes back different) fails the test.
    """
    b = backend or target.backend
    task_id = new_id()
    stored = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=value)
    before = target.io[0]
    try:
        target.run(b.store_result(task_id, stored))
    except (ResultNotSerializableError, ResultTooLargeError) as refused:
        assert target.io[0] == before, "refused only after reaching the server"
        assert task_id in str(refused)
        assert target.run(b.get_result(task_id)) is None
        return False
    got = target.run(b.get_result(task_id))
    assert got is not None, "the write returned and left nothing"
    assert same(got.result, value), (value, got.result)
    return True


@HYPOTHESIS
@given(value=portable_values)
def test_json_values_round_trip_exactly(target: Target, value: Any) -> None:
    assert store_exactly_or_refuse(target, value), f"refused a portable value {value!r}"


@HYPOTHESIS
@given(value=hostile_values)
def test_hostile_values_round_trip_exactly_or_are_refused(target: Target, value: Any) -> None:
    store_exactly_or_refuse(target, value)


CASES: dict[str, tuple[Any, bool]] = {  # value, stored?
    f"nesting-{MAX_NESTING}": (nested(MAX_NESTING), True),
    f"dict-nesting-{MAX_NESTING}": (nested(MAX_NESTING, as_dict=True), True),
    f"nesting-{MAX_NESTING + 1}": (nested(MAX_NESTING + 1), False),
    "nesting-100000": (nested(100_000), False),
    "int-4299-digits": (10**4298, True),
    "int-4301-digits": (10**4300, False),
    "int-64-bit-edges": ([2**63 - 1, -(2**63), 2**64, -(2**64) - 1], True),
    "nan": (math.nan, False),
    "infinity": ([math.inf], False),
    "-infinity": ({"x": -math.inf}, False),
    "float-below-limit": ([9999999999999998.0, 1e15 + 0.5, 5e-324, 2.2250738585072014e-308], True),
    "float-1e16": (1e16, False),
    "float-1e308": (1e308, False),
    "negative-zero": (-0.0, True),  # PostgreSQL returns 0.0: equal, same type
    "bytes": (b"\x00\xff", False),
    "bytearray": (bytearray(b"x"), False),
    "object": (object(), False),
    "set": ({1, 2}, False),
    "tuple": ((1, 2), False),
    "namedtuple": (Point(1, 2), False),
    "tuple-inside": ({"a": [1, (2,)]}, False),
    "int-key": ({1: "a"}, False),
    "bool-key": ({True: "a"}, False),
    "none-key": ({None: "a"}, False),
    "float-key": ({1.5: "a"}, False),
    "tuple-key": ({(1, 2): "a"}, False),
    "intenum": (Colour.RED, False),
    "strenum": ([TaskState.SUCCESS], False),
    "str-nul": ("a\x00b", False),
    "key-nul": ({"a\x00": 1}, False),
    "lone-surrogate": ("\ud800", False),
    "key-surrogate": ({"\udfff": 1}, False),
    "unicode": ("ß İ ǅ e\u0301 \u2028 \ufeff \uffff \U0010ffff \U0001f600 '\"\\", True),
    "empty-containers": ([[], {}, "", 0, False], True),
    "key-order": ({"b": 1, "a": 2, "": 3, "aa": 4}, True),
    "duplicate-looking-keys": ({"1": 1, "01": 2, "1.0": 3}, True),
}


@pytest.mark.parametrize("case", CASES)
def test_value_classes(target: Target, case: str) -> None:
    value, expected = CASES[case]
    assert store_exactly_or_refuse(target, value) is expected


@HYPOTHESIS
@given(value=portable_values)
def test_max_result_bytes(target: Target, value: Any) -> None:
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    stored = store_exactly_or_refuse(target, value, target.limited)
    assert stored is (value is None or size <= LIMIT)


@pytest.mark.parametrize("extra", [0, 1])
def test_max_result_bytes_boundary_counts_utf8_bytes(target: Target, extra: int) -> None:
    value = "é" * ((LIMIT - 2) // 2) + "x" * extra  # 2 quotes + 2 bytes a character
    size = len(json.dumps(value, ensure_ascii=False).encode())
    assert size == LIMIT + extra
    assert store_exactly_or_refuse(target, value, target.limited) is (extra == 0)


@pytest.mark.parametrize("field_name", ["error", "traceback"])
@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"], ids=["nul", "surrogate"])
def test_error_texts_are_stored_exactly_or_refused(
    target: Target, field_name: str, bad: str
) -> None:
    task_id = new_id()
    result = TaskResult(task_id=task_id, state=TaskState.FAILURE, **{field_name: bad})
    try:
        target.run(target.backend.store_result(task_id, result))
    except ResultNotSerializableError as refused:
        assert task_id in str(refused)
        assert target.run(target.backend.get_result(task_id)) is None
    else:
        assert target.run(target.backend.get_result(task_id)) == result


# -- corrupt stored rows -----------------------------------------------------------------------


async def _write_row(backend: Backend, task_id: str, state: str, raw_result: str | None) -> None:
    """Put a row the backend would never write, straight into the storage."""
    if isinstance(backend, DatabaseBackend):
        assert backend._engine is not None
        now = datetime.now(UTC)
        async with backend._engine.connect() as connection:
            await connection.execute(
                insert(task_results).values(
                    task_id=task_id, state="PENDING", created_at=now, updated_at=now
                )
            )
            await connection.execute(
                update(task_results)
                .where(task_results.c.task_id == task_id)
                .values(state=state, result=raw_result)
            )
        return
    doc = json.dumps({"state": state, "result": raw_result, "error": None, "traceback": None})
    await backend._client.set(backend._result_key(task_id), doc)  # type: ignore[attr-defined]


def corrupt_or_valid(target: Target, task_id: str) -> None:
    """Reading a row back gives a TaskResult or CorruptResultError naming the task: no crash."""
    try:
        got = target.run(target.backend.get_result(task_id))
    except CorruptResultError as corrupt:
        assert corrupt.task_id == task_id and repr(task_id) in str(corrupt)
    else:
        assert got is not None and got.task_id == task_id and isinstance(got.state, TaskState)


def test_unknown_state_is_corrupt(target: Target) -> None:
    good, bad = new_id(), new_id()
    target.run(target.backend.store_result(good, TaskResult(task_id=good, state=TaskState.SUCCESS)))
    target.run(_write_row(target.backend, bad, "EXPLODED", None))
    with pytest.raises(CorruptResultError, match=bad) as raised:
        target.run(target.backend.get_result(bad))
    assert raised.value.task_id == bad and "EXPLODED" in str(raised.value)
    # Decided: one corrupt row among good ones fails the whole read, naming it, rather
    # than hiding the task (a missing id would read as "unknown or expired").
    with pytest.raises(CorruptResultError, match=bad):
        target.run(target.backend.get_results([good, bad]))
    target.run(target.backend.delete_result(bad))  # and it can be removed
    assert list(target.run(target.backend.get_results([good, bad]))) == [good]


@HYPOTHESIS
@given(
    state=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=16
    )
)
def test_any_stored_state_reads_back_or_is_corrupt(target: Target, state: str) -> None:
    assume(len(state.encode()) <= 64)
    task_id = new_id()
    try:
        target.run(_write_row(target.backend, task_id, state, None))
    except Exception:  # the column refused it (e.g. too long in bytes): nothing to read
        assume(False)
    corrupt_or_valid(target, task_id)


# PostgreSQL and MariaDB check JSON in the column itself: invalid JSON cannot be stored there.
# Stores whose result column takes any text (PostgreSQL's is TEXT since revision 0006, so
# as not to parse every value again): what they hold reads back, or as corrupt.
STORES_ANY_TEXT = ("sqlite", "postgres", "redis")


@pytest.mark.parametrize("target", STORES_ANY_TEXT, indirect=True)
def test_invalid_json_is_corrupt(target: Target) -> None:
    good, bad = new_id(), new_id()
    target.run(target.backend.store_result(good, TaskResult(task_id=good, state=TaskState.SUCCESS)))
    target.run(_write_row(target.backend, bad, "SUCCESS", '{"truncated": [1, 2'))
    with pytest.raises(CorruptResultError, match=bad) as raised:
        target.run(target.backend.get_result(bad))
    assert "invalid JSON" in str(raised.value)
    with pytest.raises(CorruptResultError, match=bad):
        target.run(target.backend.get_results([good, bad]))


@pytest.mark.parametrize("target", ("mysql",), indirect=True)
def test_server_json_columns_refuse_invalid_json(target: Target) -> None:
    with pytest.raises(Exception):  # noqa: B017  (the driver's own error, raised by the server)
        target.run(_write_row(target.backend, new_id(), "SUCCESS", '{"truncated": [1, 2'))


@pytest.mark.parametrize("target", STORES_ANY_TEXT, indirect=True)
@HYPOTHESIS
@given(
    raw=st.one_of(
        st.text(text_char, max_size=40), st.builds(lambda d: "[" * d, st.integers(1, 5000))
    )
)
def test_any_stored_text_reads_back_or_is_corrupt(target: Target, raw: str) -> None:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        assume(False)
    assume(target.kind != "postgres" or "\x00" not in raw)  # PostgreSQL text holds no NUL
    task_id = new_id()
    target.run(_write_row(target.backend, task_id, "SUCCESS", raw))
    corrupt_or_valid(target, task_id)


@pytest.mark.parametrize("target", ("redis",), indirect=True)
def test_redis_documents_of_the_wrong_shape_are_corrupt(target: Target) -> None:
    client = target.backend._client  # type: ignore[attr-defined]
    for raw in [b"not json", b"[1, 2]", b'{"state": 1}', b'{"state": "SUCCESS", "result": 5}',
                b"\xff\xfe", b'{"state": "SUCCESS", "result": "[[["}']:  # fmt: skip
        task_id = new_id()
        target.run(client.set(target.backend._result_key(task_id), raw))  # type: ignore[attr-defined]
        with pytest.raises(CorruptResultError, match=task_id):
            target.run(target.backend.get_result(task_id))


# -- heartbeats: worker ids follow the task-id rules -----------------------------------------


def _stats(worker_id: str) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id, hostname="h", pid=1, queue="q", concurrency=1,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


@pytest.mark.parametrize("worker_id", ["", "w" * 256, "a\x00b", "\ud800"])
def test_invalid_worker_ids_are_refused(
    request: pytest.FixtureRequest, target: Target, worker_id: str
) -> None:
    with target.no_io(), pytest.raises(InvalidTaskIdError):
        target.run(target.backend.store_heartbeat(worker_id, _stats(worker_id)))

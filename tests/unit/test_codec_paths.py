"""Results' JSON on both paths: orjson (the default) and the stdlib alone.

Each path refuses the same values with the same reasons, and each reads what the other
wrote (and what earlier versions, stdlib only, wrote) with every type unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum, StrEnum
from typing import Any

import pytest

from chicory_backends import codec
from chicory_backends.errors import ResultNotSerializableError, ResultTooLargeError


@pytest.fixture(params=["orjson", "stdlib"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    codec.use_orjson(request.param == "orjson")
    try:
        yield request.param
    finally:
        codec.use_orjson(True)


class Color(IntEnum):
    RED = 1


class Name(StrEnum):
    A = "a"


KEPT: list[Any] = [
    "42", "true", "[1, 2]", "", "ünïcode ✓ 日本 \U0001f600", "\\u0000 as text", True, False,
    0, -7, 2**63 - 1, 2**63, 10**20, -(10**30), 1.0, -0.0, 0.1, 9.999e15, -9.999e15, 1e-300,
    [], {}, [1, "2", None, [[]]], {"a": [1, {"b": None}], "c": "d"},
]  # fmt: skip


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", KEPT, ids=repr)
def test_values_read_back_with_their_types(path: str, value: Any) -> None:
    text = codec.encode_value("t", value)
    assert text is not None
    back = codec.decode_value("t", text)
    assert back == value and type(back) is type(value)
    # What earlier versions wrote (the stdlib encoder) reads back the same on this path.
    old = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    again = codec.decode_value("t", old)
    assert again == value and type(again) is type(value)
    assert codec.decode_value("t", old.encode()) == value


REFUSED: list[tuple[Any, str]] = [
    ({"a": "x\x00y"}, "NUL"),
    ({"k\x00": 1}, "NUL"),
    (float("nan"), "not a JSON number"),
    ([float("inf")], "not a JSON number"),
    ([1e16], "too large"),
    ({"x": -2e20}, "too large"),
    ((1, 2), "tuple"),
    ([(1, 2)], "tuple"),
    ({1: "a"}, "dict key"),
    (Color.RED, "Color would come back as a plain int"),
    ([Name.A], "Name"),
    ({b"x": 1}, "dict key"),
    ([b"x"], "bytes"),
    ({"s": {1, 2}}, "set"),
    (nested(32), "nested deeper"),
    (["\ud800"], "surrogate"),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED, ids=lambda v: repr(v)[:30])
def test_refusals_name_the_problem(path: str, value: Any, reason: str) -> None:
    with pytest.raises(ResultNotSerializableError, match=reason):
        codec.encode_value("t", value)


def test_depth_31_is_kept(path: str) -> None:
    value = nested(31)
    assert codec.decode_value("t", codec.encode_value("t", value)) == value


def test_size_is_counted_in_utf8_bytes(path: str) -> None:
    text = codec.encode_value("t", "é" * 10)
    assert text == '"' + "é" * 10 + '"'
    with pytest.raises(ResultTooLargeError):
        codec.encode_value("t", "é" * 10, max_bytes=21)
    assert codec.encode_value("t", "é" * 10, max_bytes=22) == text

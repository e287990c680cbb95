"""The one duration/time parser and formatter (timetext.py) and the one redactor
(redact.py) that the CLI and the dashboard share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chicory_backends.redact import redact
from chicory_backends.timetext import (
    Moment,
    format_duration,
    parse_age,
    parse_duration,
    parse_moment,
    parse_when,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2w", 1209600),
        ("1h30m", 5400), ("1.5h", 5400), ("1d12h", 129600), (" 24H ", 86400), ("0s", 0),
    ],
)  # fmt: skip
def test_durations_and_ages_read_the_same_words(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_age(text) == timedelta(seconds=seconds)
    assert parse_moment(text) == Moment(text.strip(), age=timedelta(seconds=seconds))


@pytest.mark.parametrize("text", ["", "5 parsecs", "1h 30m", "-1h", "h", "10", "1y", "\u0661h"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
    with pytest.raises(ValueError, match="is not an age"):
        parse_age(text)


def test_too_long() -> None:
    with pytest.raises(ValueError, match=r"'99999999999d' is too long$"):
        parse_duration("99999999999d")
    with pytest.raises(ValueError, match="'99999999999d' is too long ago"):
        parse_age("99999999999d")
    with pytest.raises(ValueError, match="'99999999999d' is too long ago"):
        parse_moment("99999999999d")
    with pytest.raises(ValueError, match=r"^9999999d ago is before year 1$"):
        parse_moment("9999999d").at(NOW)
    with pytest.raises(ValueError, match="9999999d ago is before year 1"):
        parse_when("9999999d", NOW)


def test_moments_are_ages_or_iso_times_in_utc() -> None:
    assert parse_when("1h30m", NOW) == NOW - timedelta(minutes=90)
    assert parse_when("2026-11-30T10:00", NOW) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_when("2026-11-30T10:00+02:00", NOW) == datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert parse_when("2026-11-30T10:00+02:00", NOW).tzinfo is UTC  # type: ignore[union-attr]
    assert parse_when("", NOW) is None and parse_when("  ", NOW) is None
    for text in ("yesterday", "-1h", "5 parsecs"):
        with pytest.raises(ValueError, match="is neither an age like 90s, 15m, 1h, 7d nor"):
            parse_moment(text)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0.0 ms"), (0.0123, "12.3 ms"), (2.5, "2.50 s"), (59.5, "59.50 s"),
        (90, "1 min 30 s"), (180, "3 min"), (3600, "1 h"), (5400, "1 h 30 min"),
        (5430, "1 h 30 min"), (86400, "1 d"), (7 * 86400 + 4 * 3600, "7 d 4 h"),
    ],
)  # fmt: skip
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+asyncpg://u:s3cr3t@db:5432/app", "postgresql+asyncpg://u:***@db:5432/app"),
        ("redis://:s3cr3t@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mysql://u:p@ss@db/app", "mysql://u:***@db/app"),  # an unencoded "@" in it
        ("postgresql://u@db/app", "postgresql://u@db/app"),
        ("sqlite+aiosqlite:///results.db", "sqlite+aiosqlite:///results.db"),
        ("mssql+aioodbc:///?odbc_connect=UID=u;PWD=s3cr3t;",
         "mssql+aioodbc:///?odbc_connect=UID=u;PWD=***;"),
        ("postgresql://u@db/app?password=s3cr3t&ssl=1", "postgresql://u@db/app?password=***&ssl=1"),
        ("cannot reach redis://:s3cr3t@cache:1/0: refused",
         "cannot reach redis://:***@cache:1/0: refused"),
    ],
)  # fmt: skip
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "s3cr3t" not in redact(text)


def test_redact_none() -> None:
    assert redact(None) is None

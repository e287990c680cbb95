"""Durations and moments as people type and read them: the one parser and the one
formatter of the CLI, the dashboard and the task history (no driver, no I/O).

- ``parse_duration("1h30m")`` -> 5400.0 seconds: a number and a unit (``s``, ``m``,
  ``h``, ``d``, ``w``), or a sum of them; ``parse_age`` is the same as a ``timedelta``.
- ``parse_moment("15m")``, ``parse_moment("2026-12-01T10:00")``: an age back from now
  or an ISO 8601 time (UTC when it names no zone); ``Moment.at(now)`` is the time it
  means. ``parse_when`` does both at once, an empty text meaning no bound.
- ``format_duration(5400)`` -> ``"1 h 30 min"``: a duration for people.

Every input that means nothing is a ValueError whose message can be shown as it is
(the CLI prefixes the option, the dashboard the field).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
_LONGEST = timedelta.max.total_seconds()
EXAMPLES = "90s, 15m, 1h, 7d"


def _seconds(text: str) -> float | None:
    """The seconds of ``90s`` or ``1h30m``; None when the text is not such a sum."""
    compact = text.strip().lower()
    if not compact or _PART.sub("", compact):
        return None
    return sum(float(number) * UNITS[unit] for number, unit in _PART.findall(compact))


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``24h``, ``7d``, ``2w`` or a sum such as ``1h30m``."""
    seconds = _seconds(text)
    if seconds is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, e.g. 90s, 15m, 24h, 7d or 1h30m"
        )
    if seconds > _LONGEST:
        raise ValueError(f"{text!r} is too long")
    return seconds


def parse_age(text: str) -> timedelta:
    """The same text as ``parse_duration``, as a ``timedelta`` (how long ago)."""
    seconds = _seconds(text)
    if seconds is None:
        raise ValueError(f"{text!r} is not an age like {EXAMPLES} or 1h30m")
    if seconds > _LONGEST:
        raise ValueError(f"{text!r} is too long ago")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Moment:
    """A bound of a time window as typed: an ``age`` back from now, or a ``time``."""

    text: str
    age: timedelta | None = None
    time: datetime | None = None

    def at(self, now: datetime) -> datetime:
        """The UTC time this moment means at ``now``: an age counts back from ``now``."""
        if self.time is not None:
            return self.time
        assert self.age is not None
        try:
            return now - self.age
        except OverflowError:
            raise ValueError(f"{self.text} ago is before year 1") from None


def parse_moment(text: str) -> Moment:
    """An age (``90s``, ``15m``, ``1h``, ``7d``, ``1h30m``) or an ISO 8601 time, naive
    meaning UTC."""
    stripped = text.strip()
    try:
        return Moment(stripped, age=parse_age(stripped))
    except ValueError:
        if _seconds(stripped) is not None:
            raise  # an age, but too long ago
    try:
        when = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age like {EXAMPLES} nor an ISO 8601 time such as "
            "2026-12-01T10:00 (UTC)"
        ) from None
    return Moment(
        stripped, time=when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    )


def parse_when(text: str, now: datetime) -> datetime | None:
    """``parse_moment(text).at(now)`` in UTC; an empty text means no bound (None)."""
    if not text.strip():
        return None
    return parse_moment(text).at(now)


_SPANS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def format_duration(seconds: float) -> str:
    """``12.5 ms``, ``2.50 s``, then the two largest of days, hours, minutes and seconds
    (``1 min 30 s``, ``2 h``, ``7 d 4 h``); a zero second part is left out."""
    if seconds < 1:
        return f"{max(seconds, 0.0) * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    rest = round(seconds)
    parts: list[str] = []
    for unit, size in _SPANS:
        count, rest = divmod(rest, size)
        if count or parts:
            parts.append(f"{count} {unit}")
    first, second = parts[0], parts[1]
    return first if second.startswith("0 ") else f"{first} {second}"

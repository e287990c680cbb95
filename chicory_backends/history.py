"""What both backends share about task history: the checked query, the keyset cursor,
the fields a write derives from its state, and nearest-rank summaries.

SQL answers queries in SQL (sql/dialects.py); Redis from its recent-history index
(redis/backend.py). Both take their arguments through ``HistoryQuery`` so that bad input
gets the same clear error everywhere, and both build summaries with ``summary_of`` so
the percentiles mean the same thing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chicory_backends.codec import check_label
from chicory_backends.types import (
    TERMINAL_STATES,
    TaskDetails,
    TaskProgress,
    TaskRecord,
    TaskState,
    TaskSummary,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
FAILED_STATES = frozenset({TaskState.FAILURE, TaskState.DEAD_LETTERED})


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last item's ``created_at`` and ``task_id``."""

    created_at: datetime
    task_id: str


@dataclass(frozen=True)
class HistoryQuery:
    """``list_tasks``' arguments, checked: aware datetimes, a bounded page, a valid cursor."""

    state: TaskState | None
    name: str | None
    worker_id: str | None
    since: datetime | None
    until: datetime | None
    limit: int
    after: Position | None

    @classmethod
    def of(
        cls,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> HistoryQuery:
        check_limit(limit)
        since, until = check_window(since, until)
        return cls(
            state=check_state(state),
            name=None if name is None else check_label("name", name),
            worker_id=None if worker_id is None else check_label("worker_id", worker_id),
            since=since,
            until=until,
            limit=limit,
            after=None if cursor is None else decode_cursor(cursor),
        )


def check_limit(limit: int) -> int:
    """A page size: an int from 1 to MAX_PAGE_SIZE, else ValueError naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValueError(f"limit must be an int, not {type(limit).__name__}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, not {limit}")
    return limit


def check_progress_wait(after: datetime | None, timeout: float | None) -> None:
    """``wait_for_progress``'s arguments: an aware ``after``, a timeout not negative."""
    if after is not None and (not isinstance(after, datetime) or after.utcoffset() is None):
        raise ValueError("after must be a timezone-aware datetime (a TaskProgress.updated_at)")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must not be negative")


def is_news(progress: TaskProgress, after: datetime | None) -> bool:
    """Whether ``progress`` is what a wait for progress newer than ``after`` returns:
    a finished task, or progress reported later than ``after`` (any, when None)."""
    if progress.state.is_terminal:
        return True
    if progress.updated_at is None:
        return False
    return after is None or progress.updated_at > after


def check_state(state: TaskState | str | None) -> TaskState | None:
    if state is None:
        return None
    try:
        return TaskState(state)
    except ValueError:
        known = ", ".join(s.value for s in TaskState)
        raise ValueError(f"unknown task state {state!r} (known: {known})") from None


def check_window(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Both bounds aware (a naive time would silently mean the server's zone), in UTC."""
    for label, when in (("since", since), ("until", until)):
        if when is None:
            continue
        if not isinstance(when, datetime):
            raise ValueError(f"{label} must be a datetime, not {type(when).__name__}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"{label} must be timezone-aware, e.g. datetime.now(UTC)")
    since = None if since is None else since.astimezone(UTC)
    until = None if until is None else until.astimezone(UTC)
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    return since, until


# -- the cursor: opaque to callers, a position to us ------------------------------------


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position.created_at.astimezone(UTC).isoformat(), position.task_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    problem = "cursor is not one that list_tasks returned"
    if not isinstance(cursor, str) or not cursor or len(cursor) > 2048:
        raise ValueError(problem)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, task_id = json.loads(raw)
        when = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(problem) from None
    if not isinstance(task_id, str) or when.tzinfo is None:
        raise ValueError(problem)
    return Position(when.astimezone(UTC), task_id)


# -- a write's history fields -------------------------------------------------------------


def write_fields(
    task_id: str, state: TaskState, details: TaskDetails | None, now: datetime
) -> dict[str, Any]:
    """The history columns of one write, derived from its state and details.

    ``enqueued_at`` is set by PENDING, ``started_at`` by STARTED, ``finished_at`` by a
    terminal state (and cleared by any other); how each merges with the stored row is
    the backends' rule (sql/dialects.py, the Redis store script).
    """
    details = details if details is not None else _NO_DETAILS
    return {
        "name": None if details.name is None else check_label("name", details.name),
        "queue": None if details.queue is None else check_label("queue", details.queue),
        "worker_id": (
            None if details.worker_id is None else check_label("worker_id", details.worker_id)
        ),
        "attempts": details.attempt,
        "enqueued_at": now if state is TaskState.PENDING else None,
        "started_at": now if state is TaskState.STARTED else None,
        "finished_at": now if state in TERMINAL_STATES else None,
        "args": details.args_json,
    }


_NO_DETAILS = TaskDetails()


# -- summaries -------------------------------------------------------------------------


def rank_of(percent: int, count: int) -> int:
    """Nearest rank (1-based) of the ``percent``-th percentile among ``count`` values:
    the smallest rank r with r * 100 >= percent * count (SQL computes the same)."""
    return max(1, (percent * count + 99) // 100)


@dataclass(frozen=True)
class Spread:
    """Some durations in seconds, summed up: nearest-rank p50 and p95, and the longest."""

    p50: float | None = None
    p95: float | None = None
    longest: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        """The spread of ``values`` (any order)."""
        ordered = sorted(values)
        if not ordered:
            return NO_SPREAD
        return cls(_percentile(ordered, 50), _percentile(ordered, 95), ordered[-1])

    @classmethod
    def at_ranks(cls, marks: dict[int, float], size: int) -> Spread:
        """The spread from the values at their ranks (1-based, ascending) among ``size``:
        what the SQL statements return, which send only the ranks asked for."""
        if size == 0:
            return NO_SPREAD
        return cls(marks.get(rank_of(50, size)), marks.get(rank_of(95, size)), marks.get(size))


NO_SPREAD = Spread()


def queue_wait_of(record: TaskRecord) -> float | None:
    """Seconds from enqueue to start of a task enqueued and started once; None otherwise
    (see TaskSummary: a retry's start would count its first run as waiting)."""
    if record.attempts != 1 or record.enqueued_at is None or record.started_at is None:
        return None
    return max(0.0, (record.started_at - record.enqueued_at).total_seconds())


def summary_of(
    name: str | None,
    states: dict[TaskState, int],
    runtime: Spread,
    queue_wait: Spread = NO_SPREAD,
) -> TaskSummary:
    """One name's summary from its counts per state and its two spreads."""
    finished = sum(n for state, n in states.items() if state in TERMINAL_STATES)
    failed = sum(n for state, n in states.items() if state in FAILED_STATES)
    return TaskSummary(
        name=name,
        total=sum(states.values()),
        states=dict(sorted(states.items())),
        failure_rate=None if finished == 0 else failed / finished,
        runtime_p50=runtime.p50,
        runtime_p95=runtime.p95,
        runtime_max=runtime.longest,
        queue_wait_p50=queue_wait.p50,
        queue_wait_p95=queue_wait.p95,
        queue_wait_max=queue_wait.longest,
    )


def summarize(records: Iterable[TaskRecord]) -> list[TaskSummary]:
    """Summaries of ``records``, for backends that cannot aggregate on the server."""
    states: dict[str | None, dict[TaskState, int]] = {}
    runtimes: dict[str | None, list[float]] = {}
    waits: dict[str | None, list[float]] = {}
    for record in records:
        name = record.name
        counts = states.setdefault(name, {})
        counts[record.state] = counts.get(record.state, 0) + 1
        runtime, wait = record.runtime, queue_wait_of(record)
        if runtime is not None:
            runtimes.setdefault(name, []).append(runtime)
        if wait is not None:
            waits.setdefault(name, []).append(wait)
    return [
        summary_of(
            name,
            states[name],
            Spread.of(runtimes.get(name, ())),
            Spread.of(waits.get(name, ())),
        )
        for name in sorted(states, key=name_order)
    ]


def _percentile(ordered: Sequence[float], percent: int) -> float | None:
    return ordered[rank_of(percent, len(ordered)) - 1] if ordered else None


def name_order(name: str | None) -> tuple[bool, str]:
    """The order of summaries and queues: by name, the nameless last."""
    return (name is None, name or "")

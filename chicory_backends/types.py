"""The data the backends store and return, shaped like Chicory's own types."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

MAX_TASK_ID_LENGTH = 255


class TaskState(StrEnum):
    """Where a task is in its life; its value is the name, as Chicory stores it.

    PENDING (enqueued), STARTED (a worker runs it), RETRY (it failed and will run
    again): not terminal. SUCCESS, FAILURE and DEAD_LETTERED: terminal, final for the
    backends' write guard (see ``is_terminal``).
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    DEAD_LETTERED = "DEAD_LETTERED"

    @property
    def is_terminal(self) -> bool:
        """A terminal state is final: a late non-terminal update must never replace it."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCESS, TaskState.FAILURE, TaskState.DEAD_LETTERED}
)


class WriteKind(StrEnum):
    """The two kinds of write a batch carries.

    Tagged alike in the SQL batch statement (sql/dialects.py) and in the Redis store
    script's arguments (redis/).
    """

    STATE = "s"  # set_state: the state and history; the stored result stays
    RESULT = "r"  # store_result: the whole outcome


class BackendType(StrEnum):
    """The backend kinds ``create_backend`` makes, named as in ``CHICORY_BACKEND_TYPE``."""

    REDIS = "redis"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    SQLITE = "sqlite"
    MSSQL = "mssql"


class TaskResult(BaseModel):
    """A task's outcome as ``store_result`` takes it and ``get_result`` returns it.

    ``result`` is the task's return value (portable JSON only: see codec.py), ``error``
    and ``traceback`` the failure's texts; a task only ``set_state`` wrote has a state
    and no value.
    """

    task_id: str
    state: TaskState
    result: Any = None
    error: str | None = None
    traceback: str | None = None


class TaskDetails(BaseModel):
    """What a write knows about its task beyond the state: filled in by ``track(app)``.

    ``attempt`` is the run that writes: 0 while the task is only enqueued (or when
    nobody said), 1 for the first run, 2 for the first retry. A write of an older attempt
    never replaces what a newer one wrote.
    """

    model_config = ConfigDict(frozen=True)

    name: str | None = None
    queue: str | None = None
    worker_id: str | None = None
    attempt: int = Field(default=0, ge=0)
    # {"args": [...], "kwargs": {...}} as JSON text (codec.encode_arguments): only when the
    # app records arguments, which is off by default (they may hold personal data).
    args_json: str | None = None

    @field_validator("args_json")
    @classmethod
    def _json_text(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                json.loads(text)
            except ValueError:
                raise ValueError("args_json must be JSON text (codec.encode_arguments)") from None
        return text


class TaskRecord(BaseModel):
    """One task's history: what ran where, when, how often, and how it ended.

    The times are the backend's clock at each write: ``enqueued_at`` at the PENDING
    write, ``started_at`` at the latest attempt's STARTED, ``finished_at`` at the terminal
    write. ``created_at`` (the first write of any kind) orders the history. Pages of
    ``list_tasks`` leave ``result``, ``traceback`` and ``args`` out; ``get_task`` has all.
    """

    task_id: str
    state: TaskState
    name: str | None = None
    queue: str | None = None
    worker_id: str | None = None
    attempts: int = 0
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    args: Any = None
    # The latest progress the task reported (report_progress) and when; a finished task
    # keeps its last.
    progress: ProgressUpdate | None = None
    progress_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def runtime(self) -> float | None:
        """Seconds from the latest start to the finish; None until both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


class TaskPage(BaseModel):
    """One page of ``list_tasks``, newest first; pass ``next_cursor`` for the next one."""

    items: list[TaskRecord]
    next_cursor: str | None = None


class TaskSummary(BaseModel):
    """Per task name over a time window: counts per state, queue waits and runtimes.

    Percentiles are nearest-rank. Runtimes are over the tasks with a runtime (started
    and finished). Queue waits (``started_at - enqueued_at``, seconds) are over the tasks
    that were enqueued and started once (``attempts == 1``): a retry's start would count
    the first run and the back-off as waiting. ``failure_rate`` is FAILURE and
    DEAD_LETTERED over all finished tasks.
    """

    name: str | None
    total: int
    states: dict[TaskState, int]
    failure_rate: float | None = None
    runtime_p50: float | None = None
    runtime_p95: float | None = None
    runtime_max: float | None = None
    queue_wait_p50: float | None = None
    queue_wait_p95: float | None = None
    queue_wait_max: float | None = None


class QueueStatus(BaseModel):
    """A queue's backlog: its PENDING tasks (enqueued, not started yet) and the oldest.

    Only tasks whose dispatch was recorded (``track(app)`` writes PENDING with the
    queue) are seen; ``queue`` is None for PENDING tasks recorded without one.
    """

    queue: str | None
    pending: int
    oldest_enqueued_at: datetime | None = None

    def oldest_pending_age(self, now: datetime | None = None) -> float | None:
        """Seconds the oldest PENDING task has waited at ``now`` (default: now, UTC).

        None when nothing is pending; never negative.
        """
        if self.oldest_enqueued_at is None:
            return None
        moment = now if now is not None else datetime.now(UTC)
        return max(0.0, (moment - self.oldest_enqueued_at).total_seconds())


MAX_PROGRESS_MESSAGE_LENGTH = 1000


class ProgressUpdate(BaseModel):
    """How far a running task is, as it reports it: checked before any I/O.

    ``current`` of ``total`` units (``total`` None when unknown), and a short
    ``message``. Numbers must be finite and not negative; ``current`` may exceed
    ``total`` (the task's own estimate was off), it is stored as given.
    """

    model_config = ConfigDict(frozen=True)

    current: float
    total: float | None = None
    message: str | None = None

    @field_validator("current", "total")
    @classmethod
    def _finite_and_not_negative(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"progress must be a finite number, not negative: {value!r}")
        return value

    @field_validator("message")
    @classmethod
    def _short_text(cls, text: str | None) -> str | None:
        if text is None:
            return None
        if len(text) > MAX_PROGRESS_MESSAGE_LENGTH:
            raise ValueError(
                f"progress message is {len(text)} characters; at most "
                f"{MAX_PROGRESS_MESSAGE_LENGTH} are stored: shorten it"
            )
        if "\x00" in text:
            raise ValueError("progress message must not contain NUL characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("progress message must be valid Unicode (a lone surrogate)") from None
        return text


class TaskProgress(BaseModel):
    """A task's state and the latest progress it reported (``get_progress``).

    ``current``, ``total`` and ``message`` are None until the task reported progress;
    ``updated_at`` is the backend's clock at that report. A finished task keeps the
    last progress it reported.
    """

    task_id: str
    state: TaskState
    current: float | None = None
    total: float | None = None
    message: str | None = None
    updated_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fraction(self) -> float | None:
        """``current / total`` capped at 1.0; None without both, or with a zero total."""
        if self.current is None or not self.total:
            return None
        return min(1.0, self.current / self.total)


class BaseStatus(BaseModel):
    """Whether a connection works, and if not, why (``error``)."""

    connected: bool
    error: str | None = None


class BrokerStatus(BaseStatus):
    """A worker's broker connection as its heartbeat reports it (Chicory's own type)."""


class BackendStatus(BaseStatus):
    """What ``Backend.healthcheck`` answers: reachable or not, and how fast."""

    latency_ms: float | None = Field(default=None, description="Round trip of the health query")


class WorkerStats(BaseModel):
    """A worker's heartbeat: who it is, what it consumes, and its counters so far.

    Stored by ``store_heartbeat`` as it is given, returned by ``get_heartbeat`` and
    ``get_active_workers`` until its TTL passes.
    """

    worker_id: str
    hostname: str
    pid: int
    queue: str
    concurrency: int
    tasks_processed: int = 0
    tasks_failed: int = 0
    active_tasks: int = 0
    started_at: datetime
    last_heartbeat: datetime | None = None
    is_running: bool = True
    broker: BrokerStatus | None = None
    backend: BackendStatus | None = None


TaskRecord.model_rebuild()

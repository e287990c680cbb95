"""The data the backends store and return, shaped like Chicory's own types."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

MAX_TASK_ID_LENGTH = 255


class TaskState(StrEnum):
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


class BackendType(StrEnum):
    REDIS = "redis"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    SQLITE = "sqlite"
    MSSQL = "mssql"


class TaskResult(BaseModel):
    task_id: str
    state: TaskState
    result: Any = None
    error: str | None = None
    traceback: str | None = None


class BaseStatus(BaseModel):
    connected: bool
    error: str | None = None


class BrokerStatus(BaseStatus):
    pass


class BackendStatus(BaseStatus):
    latency_ms: float | None = Field(default=None, description="Round trip of the health query")


class WorkerStats(BaseModel):
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

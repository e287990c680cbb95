"""Result and worker-metadata storage for the Chicory task queue."""

from typing import TYPE_CHECKING

from chicory_backends.base import Backend
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import (
    ArgumentsNotRecordableError,
    BackendNotConfiguredError,
    BackendUnreachableError,
    ChicoryBackendError,
    ConfigurationError,
    CorruptResultError,
    DatabaseError,
    DriverNotInstalledError,
    InvalidTaskIdError,
    NotConnectedError,
    PoolExhaustedError,
    ResultNotSerializableError,
    ResultTooLargeError,
    SchemaNotReadyError,
    TaskFailedError,
)
from chicory_backends.factory import create_backend
from chicory_backends.result import AsyncResult
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import (
    BackendStatus,
    BackendType,
    ProgressUpdate,
    QueueStatus,
    TaskDetails,
    TaskPage,
    TaskProgress,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    WorkerStats,
)

if TYPE_CHECKING:
    from chicory_backends.redis import RedisBackend


def __getattr__(name: str) -> object:
    # RedisBackend needs the optional redis package: import it only when asked for.
    if name == "RedisBackend":
        from chicory_backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module 'chicory_backends' has no attribute {name!r}")


__all__ = [
    "ArgumentsNotRecordableError",
    "AsyncResult",
    "Backend",
    "BackendNotConfiguredError",
    "BackendStatus",
    "BackendType",
    "BackendUnreachableError",
    "ChicoryBackendError",
    "ConfigurationError",
    "CorruptResultError",
    "DatabaseBackend",
    "DatabaseError",
    "DriverNotInstalledError",
    "InvalidTaskIdError",
    "MSSQLBackendConfig",
    "MySQLBackendConfig",
    "NotConnectedError",
    "PoolExhaustedError",
    "PostgresBackendConfig",
    "ProgressUpdate",
    "QueueStatus",
    "RedisBackend",
    "RedisBackendConfig",
    "ResultNotSerializableError",
    "ResultTooLargeError",
    "SQLiteBackendConfig",
    "SchemaNotReadyError",
    "TaskDetails",
    "TaskFailedError",
    "TaskPage",
    "TaskProgress",
    "TaskRecord",
    "TaskResult",
    "TaskState",
    "TaskSummary",
    "WorkerStats",
    "create_backend",
]

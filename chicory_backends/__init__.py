"""Result and worker-metadata storage for the Chicory task queue."""

from chicory_backends.base import Backend
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import (
    BackendNotConfiguredError,
    BackendUnreachableError,
    ChicoryBackendError,
    InvalidTaskIdError,
    NotConnectedError,
    PoolExhaustedError,
    ResultNotSerializableError,
    SchemaNotReadyError,
    TaskFailedError,
)
from chicory_backends.factory import create_backend
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import (
    BackendStatus,
    BackendType,
    TaskResult,
    TaskState,
    WorkerStats,
)

__all__ = [
    "Backend",
    "BackendNotConfiguredError",
    "BackendStatus",
    "BackendType",
    "BackendUnreachableError",
    "ChicoryBackendError",
    "DatabaseBackend",
    "InvalidTaskIdError",
    "MSSQLBackendConfig",
    "MySQLBackendConfig",
    "NotConnectedError",
    "PoolExhaustedError",
    "PostgresBackendConfig",
    "RedisBackendConfig",
    "ResultNotSerializableError",
    "SQLiteBackendConfig",
    "SchemaNotReadyError",
    "TaskFailedError",
    "TaskResult",
    "TaskState",
    "WorkerStats",
    "create_backend",
]

"""Every failure a caller can see is one of these; no raw driver exception escapes."""

from __future__ import annotations


class ChicoryBackendError(Exception):
    """Base of every error raised by chicory-backends."""


class ConfigurationError(ChicoryBackendError):
    """The configuration cannot describe a working backend."""


class DriverNotInstalledError(ConfigurationError):
    """The driver of a backend kind cannot be imported: names what to install.

    Raised when the backend is created, not at the first connect(), so that a missing
    extra or system library shows up as one clear line instead of an ImportError from
    deep inside SQLAlchemy or the driver.
    """

    def __init__(self, backend: str, problem: str, install: str) -> None:
        self.backend = backend
        self.install = install
        super().__init__(f"the {backend} backend cannot load its driver ({problem}): {install}")


class NotConnectedError(ChicoryBackendError):
    def __init__(self, backend: str) -> None:
        super().__init__(f"{backend} is not connected: call 'await backend.connect()' first")


class BackendUnreachableError(ChicoryBackendError):
    """The server did not answer; names where we tried, never the credentials."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(f"backend server at {address} is unreachable: {reason}")


class DatabaseError(ChicoryBackendError):
    """The server refused a statement or command for a reason that is neither
    reachability nor schema: the same error from SQL and from Redis (an error reply)."""


class PoolExhaustedError(ChicoryBackendError):
    def __init__(self, pool_size: int, max_overflow: int, timeout: float) -> None:
        super().__init__(
            f"no database connection free within {timeout:g}s "
            f"(pool_size={pool_size}, max_overflow={max_overflow}); "
            "raise the pool limits or lower the concurrency"
        )


class SchemaNotReadyError(ChicoryBackendError):
    """The tables are missing, older than this library expects, Chicory's own, or not
    what the version table claims; the message names what was found and the one command
    that fixes it."""

    UPGRADE = (
        "run 'alembic upgrade head' (or 'chicory-backends migrate', "
        "or set auto_migrate=True in the backend config)"
    )

    def __init__(
        self, found: str | None, expected: str, *, what: str | None = None, fix: str | None = None
    ) -> None:
        self.found = found
        self.expected = expected
        where = what or (
            "the result-backend schema is missing"
            if found is None
            else f"the result-backend schema is at revision {found}"
        )
        super().__init__(f"{where}; this library needs revision {expected}: {fix or self.UPGRADE}")


class ResultNotSerializableError(ChicoryBackendError):
    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"result of task {task_id!r} cannot be stored as JSON: {reason}")


class ArgumentsNotRecordableError(ChicoryBackendError, ValueError):
    """``track(app, record_args=True)``: a task's arguments are not portable JSON, or
    larger than the cap; the task is not dispatched, so nothing is half-recorded."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"arguments of task {task_id!r} cannot be recorded: {reason}")


class ResultTooLargeError(ChicoryBackendError):
    def __init__(self, task_id: str, size: int, limit: int) -> None:
        self.task_id = task_id
        super().__init__(
            f"result of task {task_id!r} is {size} bytes as JSON, over max_result_bytes={limit}"
        )


class CorruptResultError(ChicoryBackendError):
    """A stored row cannot be read back as a result; names the task so it can be removed."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        super().__init__(f"stored result of task {task_id!r} is corrupt: {reason}")


class InvalidTaskIdError(ChicoryBackendError, ValueError):
    pass


class TaskFailedError(ChicoryBackendError):
    """Raised by AsyncResult.get() when the task ended in FAILURE or DEAD_LETTERED."""

    def __init__(self, task_id: str, error: str | None, traceback: str | None) -> None:
        self.task_id = task_id
        self.error = error
        self.traceback = traceback
        super().__init__(f"task {task_id!r} failed: {error or 'no error text stored'}")


class BackendNotConfiguredError(ChicoryBackendError):
    def __init__(self) -> None:
        super().__init__(
            "task results need a result backend, and none is configured: "
            "configure one, or use send() for fire-and-forget tasks"
        )

"""Every failure a caller can see is one of these; no raw driver exception escapes."""

from __future__ import annotations


class ChicoryBackendError(Exception):
    """Base of every error raised by chicory-backends.

    ``except ChicoryBackendError`` catches every failure of a backend call except a bad
    argument refused with a plain ``ValueError``. InvalidTaskIdError and
    ArgumentsNotRecordableError are both: ChicoryBackendErrors and ValueErrors.
    """


class ConfigurationError(ChicoryBackendError):
    """The configuration cannot describe a working backend.

    Raised by ``create_backend`` (an unknown kind, a config of the wrong class, a value
    the settings refuse, named by its ``CHICORY_BACKEND_*`` variable), by a config class
    for a variable Chicory 0.1.0 would refuse, by ``RedisBackend(config)`` for settings
    that exclude each other, and by ``connect()`` for what only shows then (MySQL TLS
    files that cannot be loaded, a Redis client that cannot be made). The message names
    the setting and the problem, never a password.
    """


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
    """A call needs the server, but the backend is not connected.

    Raised by every method that talks to the server before ``connect()`` or after
    ``disconnect()`` (and by waits that ``disconnect()`` ended). The message names the
    backend class and says to call ``await backend.connect()``.
    """

    def __init__(self, backend: str) -> None:
        super().__init__(f"{backend} is not connected: call 'await backend.connect()' first")


class BackendUnreachableError(ChicoryBackendError):
    """The server did not answer; names where we tried, never the credentials.

    Raised when the server is down, refuses connections, is in recovery, drops the
    connection (again, on the one retry), or gives no answer within the connect timeout,
    ``command_timeout`` (SQL) or ``socket_timeout`` (Redis); also by a terminal Redis
    write that fewer replicas than ``wait_replicas`` confirmed in time. The message
    names where it tried (``config.address()``: host:port, the listed hosts, a Sentinel
    service, a SQLite file) and the reason; ``address`` holds the former.
    """

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(f"backend server at {address} is unreachable: {reason}")


class DatabaseError(ChicoryBackendError):
    """The server refused a statement or command, for a reason other than reachability.

    The same error from SQL and from Redis (an error reply): a permission, a constraint,
    a full disk, an out-of-memory Redis. The message carries the driver's reason,
    without credentials.
    """


class PoolExhaustedError(ChicoryBackendError):
    """No connection of the pool became free within ``pool_timeout``.

    Raised when more calls run at once than the pool holds (``pool_size +
    max_overflow`` on SQL, ``max_connections`` on Redis) for longer than
    ``pool_timeout``. The message names the limits and the timeout.
    """

    def __init__(self, pool_size: int, max_overflow: int, timeout: float) -> None:
        super().__init__(
            f"no database connection free within {timeout:g}s "
            f"(pool_size={pool_size}, max_overflow={max_overflow}); "
            "raise the pool limits or lower the concurrency"
        )


class SchemaNotReadyError(ChicoryBackendError):
    """The SQL tables are not the schema this library needs.

    Raised by ``connect()`` (after the upgrade, with ``auto_migrate``) when the tables
    are missing, at another revision than this library's, Chicory's own, or not what the
    version table claims; and by any SQL call that finds a table missing. The message names what was
    found and the one command that fixes it; ``found`` and ``expected`` hold the
    revisions.
    """

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
    """A result would not read back unchanged from every backend, so it is not stored.

    Raised by ``store_result`` before any I/O for a value that is not portable JSON
    (codec.py), or an error or traceback text with a NUL or a lone surrogate. The message
    names the task and the reason; ``task_id`` and ``reason`` hold them.
    """

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"result of task {task_id!r} cannot be stored as JSON: {reason}")


class ArgumentsNotRecordableError(ChicoryBackendError, ValueError):
    """A task's arguments cannot be recorded: not portable JSON, or over the cap.

    Raised by ``delay()`` of an app under ``track(app, record_args=True)``; the task is
    not dispatched, so nothing is half-recorded. The message names the task and the
    reason (or the size and ``max_args_bytes``).
    """

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"arguments of task {task_id!r} cannot be recorded: {reason}")


class ResultTooLargeError(ChicoryBackendError):
    """A result's JSON is larger than ``max_result_bytes``, so it is not stored.

    Raised by ``store_result`` before any I/O. The message names the task, the size in
    UTF-8 bytes and the limit.
    """

    def __init__(self, task_id: str, size: int, limit: int) -> None:
        self.task_id = task_id
        super().__init__(
            f"result of task {task_id!r} is {size} bytes as JSON, over max_result_bytes={limit}"
        )


class CorruptResultError(ChicoryBackendError):
    """A stored row cannot be read back as a result; names the task so it can be removed.

    Raised by the reads (``get_result``, ``get_results``, ``get_task``, ``list_tasks``,
    ``task_summary``, the heartbeat reads, naming the worker) for invalid JSON, an
    unknown state or a malformed document; ``delete_result`` removes it.
    """

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        super().__init__(f"stored result of task {task_id!r} is corrupt: {reason}")


class InvalidTaskIdError(ChicoryBackendError, ValueError):
    """A task id (or worker id, task name, queue) that no backend could store as given.

    Raised before any I/O for a value that is not a str, is empty, longer than 255
    characters, or holds a NUL or a lone surrogate. The message names the field and
    the rule broken.
    """


class TaskFailedError(ChicoryBackendError):
    """Raised by AsyncResult.get() when the task ended in FAILURE or DEAD_LETTERED.

    The message names the task and its stored error text; ``error`` and ``traceback``
    hold the stored texts (None when the worker stored none).
    """

    def __init__(self, task_id: str, error: str | None, traceback: str | None) -> None:
        self.task_id = task_id
        self.error = error
        self.traceback = traceback
        super().__init__(f"task {task_id!r} failed: {error or 'no error text stored'}")


class BackendNotConfiguredError(ChicoryBackendError):
    """Task results were asked of an app (or AsyncResult) that has no result backend.

    Raised by the AsyncResult methods that need storage when it was made with
    ``backend=None``, and by ``chicory.async_result`` for an app without a backend. The
    message says to configure one, or to use ``send()`` for fire-and-forget tasks.
    """

    def __init__(self) -> None:
        super().__init__(
            "task results need a result backend, and none is configured: "
            "configure one, or use send() for fire-and-forget tasks"
        )

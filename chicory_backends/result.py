"""AsyncResult: a client's handle on one task's outcome, over any backend.

It waits through the contract (``Backend.wait_for_result``) and never through a driver,
so each backend brings its own way of being woken: LISTEN/NOTIFY on PostgreSQL,
pub/sub on Redis, polling with back-off elsewhere.
"""

from __future__ import annotations

from typing import Any

from chicory_backends.base import Backend
from chicory_backends.errors import BackendNotConfiguredError, TaskFailedError
from chicory_backends.types import TaskResult, TaskState

__all__ = ["AsyncResult"]

_FAILED = frozenset({TaskState.FAILURE, TaskState.DEAD_LETTERED})


class AsyncResult:
    """The outcome of task ``task_id`` as stored in ``backend``.

    ``backend=None`` is allowed (an app with no result backend) so that the handle can
    still be passed around; every method that needs storage then raises
    BackendNotConfiguredError. Every method reads through ``backend`` and so may raise
    what its calls raise (Backend: NotConnectedError, BackendUnreachableError,
    CorruptResultError, ...).
    """

    def __init__(self, task_id: str, backend: Backend | None) -> None:
        self.task_id = task_id
        self.backend = backend

    def __repr__(self) -> str:
        return f"AsyncResult({self.task_id!r})"

    async def get(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (Chicory's API)
        """Wait for the task to finish and return its value.

        ``timeout=None`` waits as long as it takes. Waits through
        ``Backend.wait_for_result``.

        Raises:
            TaskFailedError: the task ended in FAILURE or DEAD_LETTERED; carries the
                stored error text and traceback.
            TimeoutError: ``timeout`` seconds passed first.
            ValueError: ``timeout`` is negative.
            BackendNotConfiguredError: the handle has no backend.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        result = await self._backend().wait_for_result(self.task_id, timeout)
        if result is None:
            # None with no timeout breaks the contract, but must still read as a timeout
            # (formatting None with :g would raise a TypeError instead).
            within = "" if timeout is None else f" within {timeout:g}s"
            raise TimeoutError(f"task {self.task_id!r} did not finish{within}")
        return _outcome(result)

    async def state(self) -> TaskState:
        """The current state; PENDING for a task the backend knows nothing about (yet).

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        result = await self._backend().get_result(self.task_id)
        return TaskState.PENDING if result is None else result.state

    async def exists(self) -> bool:
        """Whether the backend knows the task at all.

        True from its first write on (with ``track(app)``, the PENDING that ``delay()``
        writes), False for an id nobody dispatched (or whose result expired or was
        forgotten). ``state()`` cannot tell these apart: it says PENDING for both.

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        return await self._backend().get_result(self.task_id) is not None

    async def ready(self) -> bool:
        """True once the task is finished, whichever way (a terminal state).

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        return (await self.state()).is_terminal

    async def successful(self) -> bool:
        """True once the task finished in SUCCESS.

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        return await self.state() is TaskState.SUCCESS

    async def failed(self) -> bool:
        """True once the task finished in FAILURE or DEAD_LETTERED.

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        return await self.state() in _FAILED

    async def forget(self) -> None:
        """Delete the stored result, e.g. once it was read and will not be needed again.

        Forgetting a task that is not stored is not an error (``Backend.delete_result``).

        Raises:
            BackendNotConfiguredError: the handle has no backend.
        """
        await self._backend().delete_result(self.task_id)

    def _backend(self) -> Backend:
        if self.backend is None:
            raise BackendNotConfiguredError()
        return self.backend


def _outcome(result: TaskResult) -> Any:
    if result.state in _FAILED:
        raise TaskFailedError(result.task_id, result.error, result.traceback)
    return result.result

"""The async contract every backend fulfils, named as in Chicory's own ``Backend``."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Self

from chicory_backends.history import DEFAULT_PAGE_SIZE, HistoryQuery, check_window
from chicory_backends.types import (
    BackendStatus,
    TaskDetails,
    TaskPage,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    WorkerStats,
)


def check_heartbeat_ttl(ttl: int) -> None:
    """One rule for every backend: a heartbeat lives at least a second (Redis cannot
    store a key that expires in 0 seconds, and SQL must not accept what Redis refuses)."""
    if ttl < 1:
        raise ValueError(f"heartbeat ttl must be at least 1 second, not {ttl}")


class Backend(ABC):
    """Stores task states, results and worker heartbeats.

    Writes are atomic and idempotent: a non-terminal state (PENDING, STARTED, RETRY)
    never replaces a terminal one (SUCCESS, FAILURE, DEAD_LETTERED), and a write of an
    older attempt (``TaskDetails.attempt``) never replaces one of a newer attempt, so a
    late or duplicated delivery cannot undo a finished task or a retry's outcome. Both
    rules sit inside the one statement (or script) of each write.
    """

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def set_state(
        self, task_id: str, state: TaskState, details: TaskDetails | None = None
    ) -> None: ...

    @abstractmethod
    async def store_result(
        self, task_id: str, result: TaskResult, details: TaskDetails | None = None
    ) -> None: ...

    @abstractmethod
    async def get_result(self, task_id: str) -> TaskResult | None: ...

    @abstractmethod
    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """Read many results in one round trip; unknown or expired ids are absent."""

    @abstractmethod
    async def delete_result(self, task_id: str) -> None: ...

    # -- history (the record of each task: see TaskRecord) -------------------------------

    @abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The whole record of one task, with result, error, traceback and arguments."""

    async def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks matching every filter given, newest first (by ``created_at``, in
        ``[since, until)``), one page of at most ``limit``. Pages are keyset pages: the
        ``next_cursor`` of one page starts the next, stable while new tasks arrive.

        Bad arguments raise ValueError naming the problem, before any I/O."""
        query = HistoryQuery.of(
            state=state, name=name, worker_id=worker_id, since=since, until=until,
            limit=limit, cursor=cursor,
        )  # fmt: skip
        return await self.query_tasks(query)

    @abstractmethod
    async def query_tasks(self, query: HistoryQuery) -> TaskPage:
        """``list_tasks`` with its arguments checked: what each backend implements."""

    async def task_summary(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[TaskSummary]:
        """One summary per task name of the tasks created in ``[since, until)``."""
        since, until = check_window(since, until)
        return await self.summarize_tasks(since, until)

    @abstractmethod
    async def summarize_tasks(
        self, since: datetime | None, until: datetime | None
    ) -> list[TaskSummary]:
        """``task_summary`` with its window checked (aware, UTC, in order)."""

    @abstractmethod
    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None: ...

    @abstractmethod
    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None: ...

    @abstractmethod
    async def get_active_workers(self) -> list[WorkerStats]: ...

    @abstractmethod
    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Remove heartbeats that expired more than ``stale_seconds`` ago; return the count."""

    @abstractmethod
    async def healthcheck(self) -> BackendStatus: ...

    # The default wait_for_result polls: first after this many seconds, then twice as long
    # each time up to the cap. Set them on an instance (or a subclass) to tune a backend.
    poll_interval_start: float = 0.005
    poll_interval_cap: float = 0.5

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        """Wait until the task is finished; its terminal result, or None once ``timeout`` passes.

        This default polls ``get_result``, from a few milliseconds backing off to
        ``poll_interval_cap``, so a quick task is seen quickly and a slow one costs few
        reads. Backends that can be told when a result lands (LISTEN/NOTIFY, pub/sub)
        override it; callers such as AsyncResult only ever wait through this method.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = self.poll_interval_start
        while True:
            result = await self.get_result(task_id)
            if result is not None and result.state.is_terminal:
                return result
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_interval_cap)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

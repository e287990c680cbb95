"""Our backends inside the real Chicory package (``pip install chicory-backends[chicory]``).

``Chicory(broker=..., backend=...)`` takes either a ``BackendType`` or a ready
``chicory.backend.Backend`` instance, so an adapter instance is all it needs::

    from chicory import BrokerType, Chicory
    from chicory_backends.chicory import chicory_backend

    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend("postgres"))

Chicory's own Worker and AsyncResult then store and read through our backend unchanged;
``async_result(app, task_id)`` gives our AsyncResult, which waits by LISTEN/NOTIFY on
PostgreSQL instead of Chicory's fixed 100 ms polling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from chicory import types as chicory_types
from chicory.backend.base import Backend as ChicoryBackend

from chicory_backends.base import Backend
from chicory_backends.config import AnyBackendConfig
from chicory_backends.errors import BackendNotConfiguredError, ConfigurationError
from chicory_backends.factory import create_backend
from chicory_backends.result import AsyncResult
from chicory_backends.types import BackendType, TaskResult, TaskState, WorkerStats

if TYPE_CHECKING:
    from chicory.app import Chicory

__all__ = ["ChicoryBackendAdapter", "async_result", "chicory_backend"]


class ChicoryBackendAdapter(ChicoryBackend):
    """A ``chicory.backend.Backend`` that stores through one of our backends.

    Only the types are converted (Chicory's pydantic models to ours and back, field for
    field); every guarantee of the wrapped backend, such as atomic upserts and the
    terminal-state guard, holds unchanged.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"ChicoryBackendAdapter({self.backend!r})"

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    async def set_state(self, task_id: str, state: chicory_types.TaskState) -> None:
        await self.backend.set_state(task_id, TaskState(state.value))

    async def store_result(self, task_id: str, result: chicory_types.TaskResult[Any]) -> None:
        await self.backend.store_result(task_id, to_result(result))

    async def get_result(self, task_id: str) -> chicory_types.TaskResult[Any] | None:
        result = await self.backend.get_result(task_id)
        return None if result is None else from_result(result)

    async def delete_result(self, task_id: str) -> None:
        await self.backend.delete_result(task_id)

    async def store_heartbeat(
        self, worker_id: str, heartbeat: chicory_types.WorkerStats, ttl: int = 30
    ) -> None:
        await self.backend.store_heartbeat(worker_id, to_stats(heartbeat), ttl)

    async def get_heartbeat(self, worker_id: str) -> chicory_types.WorkerStats | None:
        stats = await self.backend.get_heartbeat(worker_id)
        return None if stats is None else from_stats(stats)

    async def get_active_workers(self) -> list[chicory_types.WorkerStats]:
        return [from_stats(stats) for stats in await self.backend.get_active_workers()]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        return await self.backend.cleanup_stale_clients(stale_seconds)

    async def healthcheck(self) -> chicory_types.BackendStatus:
        status = await self.backend.healthcheck()
        return chicory_types.BackendStatus(connected=status.connected, error=status.error)

    # Beyond Chicory's contract: what our backends add.

    async def get_results(
        self, task_ids: Iterable[str]
    ) -> dict[str, chicory_types.TaskResult[Any]]:
        found = await self.backend.get_results(task_ids)
        return {task_id: from_result(result) for task_id, result in found.items()}

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> chicory_types.TaskResult[Any] | None:
        result = await self.backend.wait_for_result(task_id, timeout)
        return None if result is None else from_result(result)


def chicory_backend(
    kind: BackendType | str | None = None, config: AnyBackendConfig | None = None
) -> ChicoryBackendAdapter:
    """One of our backends, built like ``create_backend`` (from CHICORY_BACKEND_* variables
    unless ``config`` is given), ready to pass as ``Chicory(backend=...)``.

    ``kind`` may be ours or Chicory's ``BackendType`` (the values are the same).
    """
    return ChicoryBackendAdapter(create_backend(kind, config))


def async_result(app: Chicory, task_id: str) -> AsyncResult:
    """Our AsyncResult for a task of ``app``: pushed wake-ups where the backend has them.

    Raises BackendNotConfiguredError when the app has no backend, as Chicory does.
    """
    backend = app.backend
    if backend is None:
        raise BackendNotConfiguredError()
    if not isinstance(backend, ChicoryBackendAdapter):
        raise ConfigurationError(
            f"{type(backend).__name__} is Chicory's own backend; "
            "build the app with backend=chicory_backend(...) to use ours"
        )
    return AsyncResult(task_id, backend.backend)


# -- conversions: the models have the same fields and values on both sides -----------


def to_result(result: chicory_types.TaskResult[Any]) -> TaskResult:
    return TaskResult(
        task_id=result.task_id,
        state=TaskState(result.state.value),
        result=result.result,
        error=result.error,
        traceback=result.traceback,
    )


def from_result(result: TaskResult) -> chicory_types.TaskResult[Any]:
    return chicory_types.TaskResult[Any](
        task_id=result.task_id,
        state=chicory_types.TaskState(result.state.value),
        result=result.result,
        error=result.error,
        traceback=result.traceback,
    )


def to_stats(stats: chicory_types.WorkerStats) -> WorkerStats:
    # uptime_seconds is computed by Chicory's model from started_at; we do not store it.
    return WorkerStats.model_validate(stats.model_dump(exclude={"uptime_seconds"}))


def from_stats(stats: WorkerStats) -> chicory_types.WorkerStats:
    data = stats.model_dump()
    for name in ("broker", "backend"):  # Chicory's BackendStatus has no latency_ms
        if data.get(name) is not None:
            data[name] = {"connected": data[name]["connected"], "error": data[name]["error"]}
    return chicory_types.WorkerStats.model_validate(data)

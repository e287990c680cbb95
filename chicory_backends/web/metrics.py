"""``/metrics`` in the Prometheus text format, from the backend's own summaries.

Each application has a registry of its own (never prometheus_client's global one), so
two dashboards in one process, or a host service's own metrics, never collide.

What is exposed, with low-cardinality labels only (never a task id):

- ``chicory_tasks_total{name,state}``: stored tasks per task name and state, from
  ``task_summary()`` at scrape time (a gauge: cleanup makes it go down).
- ``chicory_task_runtime_seconds{name,quantile}``: runtime p50 (0.5), p95 (0.95) and the
  longest (1) per task name. A real histogram needs every runtime in buckets, and the
  backend hands out nearest-rank percentiles (``TaskSummary``), so this is a
  summary-style gauge set instead of the histogram celery-exporter has.
- ``chicory_workers_up``: workers with a live heartbeat (``get_active_workers()``).
- ``chicory_worker_active_tasks{worker}``: tasks each live worker is running.
- ``chicory_backend_operation_seconds{op,backend}``: a histogram of the backend calls
  this application makes (pages, live updates and scrapes alike).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chicory_backends.base import Backend
from chicory_backends.types import (
    TaskPage,
    TaskRecord,
    TaskState,
    TaskSummary,
    WorkerStats,
)

T = TypeVar("T")

UNNAMED = "unknown"  # the name label of tasks stored without a name
QUANTILES = (("0.5", "runtime_p50"), ("0.95", "runtime_p95"), ("1", "runtime_max"))


def backend_kind(backend: Backend) -> str:
    """A short label for the backend (postgres, mysql, sqlite, mssql, redis), from its
    config class's name: the web package never imports a driver or a backend module."""
    config = getattr(backend, "config", None)
    if config is not None:
        name = type(config).__name__
        if name.endswith("BackendConfig") and name != "SQLBackendConfig":
            return name.removesuffix("BackendConfig").lower()
    return type(backend).__name__.removesuffix("Backend").lower() or "unknown"


class TimedBackend:
    """The backend calls the application makes, each timed into the histogram."""

    def __init__(self, backend: Backend, registry: CollectorRegistry) -> None:
        self.backend = backend
        self.kind = backend_kind(backend)
        self.seconds = Histogram(
            "chicory_backend_operation_seconds",
            "Seconds each backend call of the dashboard took, by operation",
            ["op", "backend"],
            registry=registry,
        )

    async def _timed(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await call()
        finally:
            self.seconds.labels(op=op, backend=self.kind).observe(time.perf_counter() - started)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await self._timed("get_task", lambda: self.backend.get_task(task_id))

    async def list_tasks(self, **filters: Any) -> TaskPage:
        return await self._timed("list_tasks", lambda: self.backend.list_tasks(**filters))

    async def task_summary(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[TaskSummary]:
        return await self._timed(
            "task_summary", lambda: self.backend.task_summary(since=since, until=until)
        )

    async def get_active_workers(self) -> list[WorkerStats]:
        return await self._timed("get_active_workers", self.backend.get_active_workers)

    async def delete_result(self, task_id: str) -> None:
        await self._timed("delete_result", lambda: self.backend.delete_result(task_id))


class _Snapshot(Collector):
    """The gauges of the latest scrape: filled by ``Metrics.render`` before each collect."""

    def __init__(self) -> None:
        self.summaries: Sequence[TaskSummary] = ()
        self.workers: Sequence[WorkerStats] = ()

    def collect(self) -> Iterable[Metric]:
        tasks = GaugeMetricFamily(
            "chicory_tasks_total", "Stored tasks by task name and state", labels=["name", "state"]
        )
        runtime = GaugeMetricFamily(
            "chicory_task_runtime_seconds",
            "Task runtime per name: p50 (0.5), p95 (0.95) and the longest (1); "
            "nearest-rank percentiles from the backend's task summary",
            labels=["name", "quantile"],
        )
        for summary in self.summaries:
            name = summary.name if summary.name is not None else UNNAMED
            for state in TaskState:
                tasks.add_metric([name, state.value], summary.states.get(state, 0))
            for quantile, field in QUANTILES:
                value = getattr(summary, field)
                if value is not None:
                    runtime.add_metric([name, quantile], float(value))
        up = GaugeMetricFamily("chicory_workers_up", "Workers with a live heartbeat")
        up.add_metric([], sum(1 for worker in self.workers if worker.is_running))
        active = GaugeMetricFamily(
            "chicory_worker_active_tasks", "Tasks each live worker is running", labels=["worker"]
        )
        for worker in self.workers:
            active.add_metric([worker.worker_id], worker.active_tasks)
        return [tasks, runtime, up, active]


class Metrics:
    """One application's registry: the operation histogram and the scrape-time gauges."""

    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ops = TimedBackend(backend, self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._lock = asyncio.Lock()
        self._asked_at = 0.0  # when the backend was last asked (time.monotonic)

    async def render(self) -> bytes:
        """Ask the backend, then the text format. One scrape at a time; scrapes that
        arrive while one is asking share its answer instead of asking again."""
        arrived = time.monotonic()
        async with self._lock:
            if self._asked_at < arrived:
                self._asked_at = time.monotonic()
                self._snapshot.summaries = await self.ops.task_summary()
                self._snapshot.workers = await self.ops.get_active_workers()
            return generate_latest(self.registry)

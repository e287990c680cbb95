"""Tasks and heartbeats the dashboard tests store through the contract, and what they
expect to see of them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import unescape

from chicory_backends.base import Backend
from chicory_backends.types import TaskDetails, TaskResult, TaskState, WorkerStats

XSS_ID = "<script>alert(1)</script>"
XSS_ERROR = '<img src=x onerror="alert(2)"> & "quotes"'


@dataclass
class Seeded:
    ids: list[str] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, state) -> n

    def add(self, task_id: str, name: str, state: TaskState) -> None:
        self.ids.append(task_id)
        key = (name, state.value)
        self.counts[key] = self.counts.get(key, 0) + 1


async def run_task(
    backend: Backend,
    task_id: str,
    name: str | None,
    worker: str,
    outcome: TaskState,
    *,
    result: object = None,
    error: str | None = None,
    traceback: str | None = None,
) -> None:
    """The writes a worker makes: PENDING, STARTED, then the outcome (if terminal)."""
    await backend.set_state(task_id, TaskState.PENDING, TaskDetails(name=name, queue="default"))
    running = TaskDetails(name=name, queue="default", worker_id=worker, attempt=1)
    await backend.set_state(task_id, TaskState.STARTED, running)
    if outcome.is_terminal:
        stored = TaskResult(
            task_id=task_id, state=outcome, result=result, error=error, traceback=traceback
        )
        await backend.store_result(task_id, stored, running)
    elif outcome is not TaskState.STARTED:
        await backend.set_state(task_id, outcome, running)


def worker_stats(worker_id: str, *, active: int, processed: int) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id,
        hostname=f"host-{worker_id}",
        pid=4242,
        queue="default",
        concurrency=4,
        tasks_processed=processed,
        tasks_failed=1,
        active_tasks=active,
        started_at=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
        last_heartbeat=datetime.now(UTC),
    )


async def seed(backend: Backend) -> Seeded:
    """24 successes of ``add`` (w1), 5 failures of ``charge`` (w2), 3 running ``report``
    (w2), one retrying ``add``, and the hostile id: 34 tasks; two worker heartbeats."""
    seeded = Seeded()
    for index in range(24):
        task_id = f"add-{index:03d}"
        await run_task(backend, task_id, "add", "w1", TaskState.SUCCESS, result={"sum": index})
        seeded.add(task_id, "add", TaskState.SUCCESS)
    for index in range(5):
        task_id = f"charge-{index}"
        await run_task(
            backend,
            task_id,
            "charge",
            "w2",
            TaskState.FAILURE,
            error=f"CardDeclined: card {index} declined",
            traceback='Traceback (most recent call last):\n  File "t.py", line 1\nCardDeclined',
        )
        seeded.add(task_id, "charge", TaskState.FAILURE)
    for index in range(3):
        task_id = f"report-{index}"
        await run_task(backend, task_id, "report", "w2", TaskState.STARTED)
        seeded.add(task_id, "report", TaskState.STARTED)
    await run_task(backend, "add-retry", "add", "w1", TaskState.RETRY)
    seeded.add("add-retry", "add", TaskState.RETRY)
    await run_task(backend, XSS_ID, "hostile", "w1", TaskState.FAILURE, error=XSS_ERROR)
    seeded.add(XSS_ID, "hostile", TaskState.FAILURE)
    await backend.store_heartbeat("w1", worker_stats("w1", active=1, processed=25), ttl=60)
    await backend.store_heartbeat("w2", worker_stats("w2", active=3, processed=8), ttl=60)
    return seeded


TASK_LINK = re.compile(r'href="[^"]*/task\?id=([^"]+)"')


def task_ids_in(html: str) -> list[str]:
    """The task ids a tasks page links to, in page order."""
    from urllib.parse import unquote_plus

    return [unquote_plus(unescape(match)) for match in TASK_LINK.findall(html)]

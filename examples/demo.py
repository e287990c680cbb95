"""A short tour on the embedded SQLite default: store, read, expire, clean up; then a
small task history (tasks of three names, a retry, failures, one worker's heartbeat) that
`chicory-backends dashboard` shows from the same file.

Runs as it stands (`python examples/demo.py`): auto_migrate creates the tables at
connect() on a new file. `make demo` migrates first, as a deploy would, with
`alembic upgrade head`; connect() then finds the schema at head and changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime

from chicory_backends import TaskDetails, TaskResult, TaskState, WorkerStats, create_backend
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.sql.backend import DatabaseBackend

WORKER = f"{socket.gethostname()}-{os.getpid()}-demo"


async def record_history(config: SQLiteBackendConfig) -> None:
    """What a tracked worker leaves (track(app) writes the same through Chicory)."""
    async with create_backend("sqlite", config) as backend:
        await backend.store_heartbeat(
            WORKER,
            WorkerStats(
                worker_id=WORKER, hostname=socket.gethostname(), pid=os.getpid(),
                queue="default", concurrency=32, tasks_processed=24, tasks_failed=3,
                active_tasks=1, started_at=datetime.now(UTC), last_heartbeat=datetime.now(UTC),
            ),
            ttl=3600,
        )  # fmt: skip
        for number in range(24):
            name = ("app.send_invoice", "app.resize_image", "app.sync_crm")[number % 3]
            task_id = f"demo-task-{number:02d}"
            queued = TaskDetails(name=name, queue="default")
            await backend.set_state(task_id, TaskState.PENDING, queued)
            attempts = 2 if number % 7 == 3 else 1
            for attempt in range(1, attempts + 1):
                run = TaskDetails(name=name, queue="default", worker_id=WORKER, attempt=attempt)
                await backend.set_state(task_id, TaskState.STARTED, run)
                await asyncio.sleep(0.002 * (number % 5))
                if attempt < attempts:
                    await backend.set_state(task_id, TaskState.RETRY, run)
            if number % 8 == 5:
                failed = TaskResult(
                    task_id=task_id, state=TaskState.FAILURE,
                    error="TimeoutError: the upstream service did not answer",
                    traceback="Traceback ...",
                )  # fmt: skip
                await backend.store_result(task_id, failed, run)
            elif number != 23:  # the last one is still running
                done = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"n": number})
                await backend.store_result(task_id, done, run)
        page = await backend.list_tasks(state=TaskState.FAILURE)
        print(f"history     {len(page.items)} failed of 24 tasks recorded, newest first:")
        for task in page.items:
            print(f"            {task.task_id} {task.name} attempts={task.attempts} {task.error}")


async def main() -> None:
    # CHICORY_BACKEND_SQLITE_FILE_PATH picks the file (default chicory_results.db).
    config = SQLiteBackendConfig(result_ttl=1, auto_migrate=True)
    backend = create_backend("sqlite", config)
    assert isinstance(backend, DatabaseBackend)
    print(f"backend: {backend!r}")
    async with backend:
        await backend.set_state("demo-1", TaskState.STARTED)
        print("set_state   demo-1 -> STARTED")
        result = TaskResult(task_id="demo-1", state=TaskState.SUCCESS, result={"value": 42})
        await backend.store_result("demo-1", result)
        print("store_result demo-1 -> SUCCESS {'value': 42}")

        await backend.set_state("demo-1", TaskState.STARTED)  # a late redelivery
        read = await backend.get_result("demo-1")
        assert read is not None and read.state is TaskState.SUCCESS
        print(f"get_result  demo-1 -> {read.state.value} {read.result} (late STARTED ignored)")

        print("waiting 1.2 s for the 1 s result_ttl to pass ...")
        await asyncio.sleep(1.2)
        assert await backend.get_result("demo-1") is None
        print("get_result  demo-1 -> None (expired, row not yet reclaimed)")

        health = await backend.healthcheck()
        print(f"healthcheck -> connected={health.connected} latency={health.latency_ms} ms")

    # The cron path: a backend that was never connected cleans up on its own.
    deleted = await DatabaseBackend(config).cleanup_old_results(86400)
    print(f"cleanup_old_results -> {deleted} row(s) reclaimed")
    assert deleted == 1

    await record_history(SQLiteBackendConfig(auto_migrate=True))  # kept: no result_ttl
    print("demo finished: stored, read, expired and cleaned results on SQLite, and left")
    print("a task history to look at: chicory-backends dashboard (same CHICORY_BACKEND_*)")


if __name__ == "__main__":
    asyncio.run(main())

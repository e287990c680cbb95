"""``health`` (does the backend answer, its schema at head) and ``workers`` (the workers
whose heartbeats have not expired)."""

from __future__ import annotations

import asyncio

import typer

from chicory_backends.cli.app import (
    EXIT_OK,
    EXIT_RUNTIME,
    JsonOption,
    Target,
    UrlOption,
    command,
    fail,
    session,
)
from chicory_backends.cli.history import with_backend
from chicory_backends.cli.render import iso, safe_text, table
from chicory_backends.errors import ChicoryBackendError, ConfigurationError
from chicory_backends.factory import create_backend
from chicory_backends.types import BackendStatus, WorkerStats

# -- health ------------------------------------------------------------------------------


async def probe(target: Target) -> BackendStatus:
    """Connect (which checks the schema of a SQL backend) and run the health query."""
    backend = create_backend(target.kind, target.config)
    try:
        await backend.connect()
    except ConfigurationError:
        raise
    except ChicoryBackendError as error:
        return BackendStatus(connected=False, error=str(error))
    try:
        return await backend.healthcheck()
    finally:
        await backend.disconnect()


@command("health", help="exit 0 when the backend answers (its schema at head), 1 otherwise")
def health(ctx: typer.Context, url: UrlOption = None, as_json: JsonOption = False) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target()
    status = asyncio.run(probe(target))
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "healthy": status.connected,
        "latency_ms": status.latency_ms,
        "error": status.error,
    }
    if status.connected:
        asked.emit(payload, f"ok: {target.label} answered in {status.latency_ms or 0:.1f} ms")
        return EXIT_OK
    if asked.json:
        asked.emit(payload, "")
    fail(f"unhealthy: {target.kind.value}: {status.error}")
    return EXIT_RUNTIME


# -- workers -----------------------------------------------------------------------------

WORKER_COLUMNS = (
    "WORKER", "HOST", "PID", "QUEUE", "CONCURRENCY", "ACTIVE", "PROCESSED", "FAILED",
    "LAST HEARTBEAT",
)  # fmt: skip


def worker_row(worker: WorkerStats) -> list[object]:
    return [
        safe_text(worker.worker_id),
        safe_text(worker.hostname),
        worker.pid,
        safe_text(worker.queue),
        worker.concurrency,
        worker.active_tasks,
        worker.tasks_processed,
        worker.tasks_failed,
        iso(worker.last_heartbeat) or "-",
    ]


@command("workers", help="active workers (heartbeats)")
def workers(ctx: typer.Context, url: UrlOption = None, as_json: JsonOption = False) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target()
    active = asyncio.run(with_backend(target, lambda backend: backend.get_active_workers()))
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "workers": [worker.model_dump(mode="json") for worker in active],
    }
    if active:
        text = table(WORKER_COLUMNS, [worker_row(worker) for worker in active])
    else:
        text = f"{target.label}: no active workers"
    asked.emit(payload, text)
    return EXIT_OK

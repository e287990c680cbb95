"""``cleanup`` (reclaim expired and old results) and ``stats`` (the storage overview and
per task name: counts, failure rate, runtimes)."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from chicory_backends.cli.app import (
    EXIT_OK,
    BadValue,
    JsonOption,
    UrlOption,
    checked,
    command,
    session,
    whole_number,
)
from chicory_backends.cli.history import (
    DEFAULT_STATS_WINDOW,
    StatsSinceOption,
    UntilOption,
    resolve_window,
    with_backend,
)
from chicory_backends.cli.render import (
    deleted_so_far,
    iso,
    iso_seconds,
    percent,
    safe_text,
    seconds,
    table,
)
from chicory_backends.config import SQLBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.timetext import format_duration, parse_duration
from chicory_backends.types import BackendType, TaskState, TaskSummary

# -- cleanup -----------------------------------------------------------------------------


def older_than(text: str) -> float:
    """``--older-than``: a duration whose cutoff (now minus it) is a date."""
    value = checked("--older-than", parse_duration)(text)
    try:
        datetime.now(UTC) - timedelta(seconds=value)  # the cutoff the backend computes
    except OverflowError:
        raise BadValue("--older-than", f"{text!r} reaches back before year 1") from None
    return value


def batch_size_value(text: str) -> int:
    return whole_number("--batch-size", text)


@command("cleanup", help="delete expired results, and results not updated for --older-than (SQL)")
def cleanup(
    ctx: typer.Context,
    older: Annotated[
        float,
        typer.Option(
            "--older-than",
            parser=older_than,
            metavar="DURATION",
            show_default=False,
            help="delete results not updated for this long, expired or not: 90s, 15m, "
            "24h, 7d or a sum such as 1h30m (required)",
        ),
    ],
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            parser=batch_size_value,
            metavar="N",
            show_default=False,
            help="rows per DELETE statement (default: the backend's cleanup_batch_size)",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would be deleted, delete nothing")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target()
    config = target.sql_config("cleanup")
    if batch_size is not None:
        config = config.model_copy(update={"cleanup_batch_size": batch_size})
    what = f"expired or untouched for {format_duration(older)}"
    payload: dict[str, Any] = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "older_than_seconds": older,
        "batch_size": config.cleanup_batch_size,
        "dry_run": dry_run,
    }
    backend = DatabaseBackend(config)  # never connected: each call connects for itself
    if dry_run:
        count = asyncio.run(backend.count_reclaimable(older))
        payload["would_delete"] = count
        asked.emit(payload, f"{target.label}: would delete {count} results ({what}); dry run")
        return EXIT_OK

    started = time.monotonic()
    with deleted_so_far(sys.stderr.isatty() and not asked.json) as progress:
        deleted = asyncio.run(backend.cleanup_old_results(older, progress=progress))
    elapsed = time.monotonic() - started
    payload.update(deleted=deleted, seconds=round(elapsed, 3))
    asked.emit(payload, f"{target.label}: deleted {deleted} results ({what}) in {elapsed:.1f}s")
    return EXIT_OK


# -- stats -------------------------------------------------------------------------------

SUMMARY_STATES = (
    TaskState.PENDING, TaskState.STARTED, TaskState.RETRY, TaskState.SUCCESS,
    TaskState.FAILURE, TaskState.DEAD_LETTERED,
)  # fmt: skip
SUMMARY_COLUMNS = ("NAME", "TOTAL", *SUMMARY_STATES, "FAILURE RATE", "P50", "P95", "MAX")


def summary_row(summary: TaskSummary) -> list[object]:
    return [
        "(no name)" if summary.name is None else safe_text(summary.name),
        summary.total,
        *(summary.states.get(state, 0) for state in SUMMARY_STATES),
        percent(summary.failure_rate),
        seconds(summary.runtime_p50),
        seconds(summary.runtime_p95),
        seconds(summary.runtime_max),
    ]


async def storage_and_history(
    config: SQLBackendConfig, since: datetime | None, until: datetime | None
) -> tuple[Any, list[TaskSummary]]:
    async with DatabaseBackend(config) as backend:
        return await backend.result_stats(), await backend.task_summary(since=since, until=until)


def describe_window(since: datetime | None, until: datetime | None) -> str:
    start = "the start" if since is None else iso_seconds(since)
    return f"tasks created from {start} until {'now' if until is None else iso_seconds(until)}"


@command(
    "stats",
    help="results per state, age, expiry (SQL); per task name: counts, failure rate, runtimes",
)
def stats(
    ctx: typer.Context,
    since: StatsSinceOption = None,
    until: UntilOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    """Per task name on every backend; the storage overview (results per state, expiry)
    too on SQL, the only backends that keep one. The window starts 24 hours ago unless
    ``--since`` says otherwise."""
    asked = session(ctx, url, as_json)
    target = asked.target()
    since_at, until_at = resolve_window(since, until, default_since=DEFAULT_STATS_WINDOW)
    if target.kind is BackendType.REDIS:
        summaries = asyncio.run(
            with_backend(
                target, lambda backend: backend.task_summary(since=since_at, until=until_at)
            )
        )
        overview = None
    else:
        overview, summaries = asyncio.run(
            storage_and_history(target.sql_config("stats"), since_at, until_at)
        )
    payload: dict[str, Any] = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "since": iso(since_at),
        "until": iso(until_at),
        "tasks": [summary.model_dump(mode="json") for summary in summaries],
    }
    history = (
        table(SUMMARY_COLUMNS, [summary_row(summary) for summary in summaries])
        if summaries
        else "no tasks"
    )
    lines = [target.label]
    if overview is not None:
        payload.update({
            "total": overview.total,
            "by_state": overview.by_state,
            "expired_not_reclaimed": overview.expired,
            "oldest_updated_at": iso(overview.oldest),
            "newest_updated_at": iso(overview.newest),
        })  # fmt: skip
        lines += [
            table(["STATE", "RESULTS"], [*overview.by_state.items(), ("total", overview.total)]),
            f"expired, not yet reclaimed: {overview.expired}",
            f"oldest updated_at: {iso(overview.oldest) or '-'}",
            f"newest updated_at: {iso(overview.newest) or '-'}",
            "",
        ]
    lines += [f"{describe_window(since_at, until_at)}:", history]
    asked.emit(payload, "\n".join(lines))
    return EXIT_OK

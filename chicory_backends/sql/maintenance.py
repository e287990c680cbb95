"""Cleanup, counts and statistics: the maintenance the backend and the CLI share.

The CLI asks the backend (``DatabaseBackend.cleanup_old_results``, ``count_reclaimable``,
``result_stats``), which runs these over its own pool; the statements are named in
dialects.py. So ``cleanup --dry-run`` counts with the very condition cleanup deletes by.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chicory_backends.sql.dialects import Statements
from chicory_backends.sql.statements import NamedStatement

Execute = Callable[[NamedStatement, Mapping[str, Any]], Awaitable[int]]
Fetch = Callable[[NamedStatement, Mapping[str, Any]], Awaitable[list[Any]]]
Progress = Callable[[int], None]  # the rows deleted so far, after each batch


async def delete_in_batches(
    execute: Execute,
    statement: NamedStatement,
    cutoff: datetime,
    batch_size: int,
    progress: Progress | None = None,
    done_before: int = 0,
) -> int:
    """Run a bounded DELETE until a batch comes back short; the rows it deleted."""
    total = 0
    while True:
        deleted = await execute(statement, {"cutoff": cutoff})
        total += deleted
        if progress is not None and deleted:
            progress(done_before + total)
        if deleted < batch_size:
            return total


async def cleanup(
    execute: Execute,
    stmts: Statements,
    now: datetime,
    older_than_seconds: float,
    batch_size: int,
    progress: Progress | None = None,
) -> int:
    """Expired results, then those untouched for ``older_than_seconds``."""
    expired = await delete_in_batches(
        execute, stmts.delete_expired_results, now, batch_size, progress
    )
    old = await delete_in_batches(
        execute,
        stmts.delete_old_results,
        now - timedelta(seconds=older_than_seconds),
        batch_size,
        progress,
        done_before=expired,
    )
    return expired + old


async def count_reclaimable(
    fetch: Fetch, stmts: Statements, now: datetime, older_than_seconds: float
) -> int:
    """What ``cleanup`` would delete now, by the same condition."""
    rows = await fetch(
        stmts.count_reclaimable,
        {"now": now, "cutoff": now - timedelta(seconds=older_than_seconds)},
    )
    return int(rows[0][0])


@dataclass
class ResultStats:
    by_state: dict[str, int] = field(default_factory=dict)
    expired: int = 0  # expired, not yet reclaimed by cleanup
    oldest: datetime | None = None
    newest: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


async def result_stats(fetch: Fetch, stmts: Statements, now: datetime) -> ResultStats:
    """One GROUP BY over the results; expired rows count until cleanup reclaims them."""
    stats = ResultStats()
    for state, count, expired, oldest, newest in await fetch(stmts.result_stats, {"now": now}):
        stats.by_state[state] = int(count)
        stats.expired += int(expired or 0)
        stats.oldest = oldest if stats.oldest is None else min(stats.oldest, oldest)
        stats.newest = newest if stats.newest is None else max(stats.newest, newest)
    return stats

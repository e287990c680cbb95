"""``python -m bench cleanup``: cleanup_old_results on a large expired table, under load.

Per SQL backend: a fresh, migrated ``chicory_bench`` database gets N expired rows by one
bulk ``INSERT .. SELECT`` (generate_series / MariaDB's seq_1_to_N / a recursive CTE).
A subprocess that does nothing but the cleanup (the cron path: a DatabaseBackend that was
never connected) deletes them, while this process stores a result every 10 ms through
its own DatabaseBackend. Reported: rows deleted per second (timed inside the subprocess,
around ``cleanup_old_results`` alone), p50/p99/max latency of the stores made during the
cleanup (next to the same stores on an idle table), and the cleaning process's peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read in that subprocess, beside its RSS just
before the call (after imports), so the difference is what the cleanup itself held.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import env
from bench.env import LABELS, Servers, log

DEFAULT_ROWS = {"postgres": 1_000_000, "mysql": 1_000_000, "sqlite": 100_000}
BASELINE_SECONDS = 2.0
MYSQL_CHUNK = 250_000
_PROJECT_DIR = str(Path(__file__).resolve().parent.parent)


# -- loading expired rows ---------------------------------------------------------------------


async def insert_expired(kind: str, servers: Servers, rows: int) -> float:
    """N rows that expired a day ago (untouched for two), by bulk INSERT .. SELECT."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    expired = now - timedelta(days=1)
    touched = now - timedelta(days=2)
    if kind == "postgres":
        import asyncpg

        url = servers.database_url("postgres", env.OURS_DATABASE).set(drivername="postgresql")
        conn = await asyncpg.connect(env.plain_url(url))
        try:
            # No NOTIFY per loaded row from revision 0002's trigger: replica role skips it.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "INSERT INTO chicory_task_results (task_id, state, result, error, traceback, "
                "created_at, updated_at, expires_at) SELECT 'expired-' || g, 'SUCCESS', "
                "'{\"value\": 1}'::jsonb, NULL, NULL, $2, $2, $3 FROM generate_series(1, $1) g",
                rows, touched, expired,
            )  # fmt: skip
            await conn.execute("ANALYZE chicory_task_results")
        finally:
            await conn.close()
    elif kind == "mysql":
        import aiomysql

        url = servers.database_url("mysql", env.OURS_DATABASE)
        conn = await aiomysql.connect(
            host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
            password=url.password or "", db=env.OURS_DATABASE, autocommit=True,
        )  # fmt: skip
        try:
            async with conn.cursor() as cur:
                for first in range(1, rows + 1, MYSQL_CHUNK):
                    last = min(first + MYSQL_CHUNK - 1, rows)
                    await cur.execute(
                        "INSERT INTO chicory_task_results (task_id, state, result, error, "
                        "traceback, created_at, updated_at, expires_at) SELECT "
                        "CONCAT('expired-', seq), 'SUCCESS', '{\"value\": 1}', NULL, NULL, "
                        f"%s, %s, %s FROM seq_{first}_to_{last}",
                        (touched.replace(tzinfo=None), touched.replace(tzinfo=None),
                         expired.replace(tzinfo=None)),
                    )  # fmt: skip
                await cur.execute("ANALYZE TABLE chicory_task_results")
                await cur.fetchall()
        finally:
            conn.close()
    else:
        import aiosqlite

        fmt = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DateTime text
        async with aiosqlite.connect(servers.sqlite_path(env.OURS_DATABASE)) as conn:
            await conn.execute(
                "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?) "
                "INSERT INTO chicory_task_results (task_id, state, result, error, traceback, "
                "created_at, updated_at, expires_at) SELECT 'expired-' || x, 'SUCCESS', "
                "'{\"value\": 1}', NULL, NULL, ?, ?, ? FROM g",
                (rows, touched.strftime(fmt), touched.strftime(fmt), expired.strftime(fmt)),
            )
            await conn.commit()
    return time.perf_counter() - started


async def count_rows(kind: str, servers: Servers) -> tuple[int, int]:
    """(expired rows left, all rows)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    config = env.ours_config(servers, kind)
    engine = create_async_engine(config.sqlalchemy_url())
    try:
        async with engine.connect() as connection:
            expired = (
                await connection.execute(
                    text("SELECT COUNT(*) FROM chicory_task_results WHERE task_id LIKE 'expired-%'")
                )
            ).scalar_one()
            total = (
                await connection.execute(text("SELECT COUNT(*) FROM chicory_task_results"))
            ).scalar_one()
    finally:
        await engine.dispose()
    return int(expired), int(total)


# -- the stores beside it ---------------------------------------------------------------------


async def store_every(
    backend: Any, interval: float, stop: asyncio.Event | float, prefix: str
) -> list[tuple[float, float]]:
    """Store one result every ``interval`` s until ``stop`` (an event, or seconds);
    (wall-clock start, latency) of each."""
    from chicory_backends.types import TaskResult, TaskState

    latencies: list[tuple[float, float]] = []
    deadline = time.perf_counter() + stop if isinstance(stop, float) else None
    tick = time.perf_counter()
    n = 0
    while True:
        if isinstance(stop, asyncio.Event) and stop.is_set():
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        n += 1
        task_id = f"{prefix}-{n}"
        result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"value": n})
        wall = time.time()
        started = time.perf_counter()
        await backend.store_result(task_id, result)
        latencies.append((wall, time.perf_counter() - started))
        tick += interval
        await asyncio.sleep(max(0.0, tick - time.perf_counter()))
    return latencies


def _percentiles(latencies: list[float]) -> dict[str, float | int | None]:
    if not latencies:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "count": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": ordered[-1] * 1000,
    }


# -- the cleaning subprocess ------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_main(argv: list[str]) -> int:
    """``python -m bench cleanup-worker KIND`` with the config's fields as JSON on stdin."""
    from chicory_backends.config import SQL_CONFIGS
    from chicory_backends.sql.backend import DatabaseBackend

    kind = argv[0]
    fields = json.loads(sys.stdin.read())
    backend = DatabaseBackend(SQL_CONFIGS[kind](**fields))
    rss_before = _rss_kib()
    wall_start = time.time()
    started = time.perf_counter()
    deleted = asyncio.run(backend.cleanup_old_results(86400))
    elapsed = time.perf_counter() - started
    wall_end = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "deleted": deleted,
                "seconds": elapsed,
                "wall_start": wall_start,
                "wall_end": wall_end,
                "rss_before_kib": rss_before,
                "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }
        )
    )
    return 0


async def _run_worker(kind: str, fields: dict[str, Any], cwd: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "cleanup-worker", kind,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd,
    )  # fmt: skip
    out, err = await process.communicate(json.dumps(fields).encode())
    if process.returncode != 0:
        raise RuntimeError(f"cleanup worker failed ({process.returncode}): {err.decode()[-800:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- one backend ------------------------------------------------------------------------------


async def run_kind(kind: str, servers: Servers, rows: int, interval: float) -> dict[str, Any]:
    from chicory_backends.sql.backend import DatabaseBackend

    log(f"== {LABELS[kind]}: {rows:,} expired rows")
    await env.migrate_ours(servers, kind)
    load_seconds = await insert_expired(kind, servers, rows)
    log(f"   loaded in {load_seconds:.1f} s")
    config = env.ours_config(servers, kind)
    fields: dict[str, Any]
    if kind == "sqlite":
        fields = {"file_path": str(servers.sqlite_path(env.OURS_DATABASE))}
    else:
        assert config.url is not None
        fields = {"url": config.url.get_secret_value()}
    backend = DatabaseBackend(config)
    await backend.connect()
    try:
        idle = await store_every(backend, interval, BASELINE_SECONDS, "idle")
        stop = asyncio.Event()
        storing = asyncio.create_task(store_every(backend, interval, stop, "busy"))
        try:
            worker = await _run_worker(kind, fields, _PROJECT_DIR)
        finally:
            stop.set()
            busy = await storing
    finally:
        await backend.disconnect()
    left, total = await count_rows(kind, servers)
    stored = len(idle) + len(busy)
    # Only the stores that started while cleanup_old_results ran (not during the
    # subprocess's interpreter start-up).
    during = [lat for wall, lat in busy if worker["wall_start"] <= wall <= worker["wall_end"]]
    section = {
        "kind": kind,
        "label": LABELS[kind],
        "rows": rows,
        "load_seconds": load_seconds,
        "batch_size": config.cleanup_batch_size,
        "deleted": worker["deleted"],
        "cleanup_seconds": worker["seconds"],
        "rows_per_second": worker["deleted"] / worker["seconds"] if worker["seconds"] else None,
        "cleanup_cpu_seconds": worker["cpu_seconds"],
        "rss_before_mib": worker["rss_before_kib"] / 1024,
        "peak_rss_mib": worker["peak_rss_kib"] / 1024,
        "stores_idle": _percentiles([lat for _, lat in idle]),
        "stores_during_cleanup": _percentiles(during),
        "expired_left": left,
        "rows_left": total,
        "stored_kept": total - left == stored,
    }
    busy_stats = section["stores_during_cleanup"]
    log(
        f"   deleted {worker['deleted']:,} in {worker['seconds']:.1f} s "
        f"({section['rows_per_second']:,.0f} rows/s); {busy_stats['count']} stores during: "
        f"p50 {_ms(busy_stats['p50_ms'])} ms, p99 {_ms(busy_stats['p99_ms'])} ms; "
        f"peak RSS {section['peak_rss_mib']:.0f} MiB"
    )
    return section


async def run(kinds: list[str], rows: int | None, interval: float, keep: bool) -> dict[str, Any]:
    servers = Servers.from_env()
    started = time.perf_counter()
    sections = []
    try:
        for kind in kinds:
            count = rows if rows is not None else DEFAULT_ROWS[kind]
            try:
                sections.append(await run_kind(kind, servers, count, interval))
            finally:
                if not keep and kind != "sqlite":
                    await env.recreate_database(servers, kind, env.OURS_DATABASE, create=False)
    finally:
        servers.remove_sqlite_dir()
    return {
        "machine": env.machine(),
        "interval_s": interval,
        "sections": sections,
        "elapsed_s": time.perf_counter() - started,
    }


# -- report -----------------------------------------------------------------------------------


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        "# chicory-backends cleanup benchmark",
        "",
        f"- date: {machine['date']}",
        f"- machine: nproc {machine['nproc']}, Python {machine['python']}, {machine['platform']}",
        f"- versions: {versions}",
        f"- method: N expired rows loaded by one bulk INSERT .. SELECT; a subprocess that only "
        "cleans calls `DatabaseBackend(config).cleanup_old_results(86400)` on a backend never "
        f"connected (the cron line) while this process stores a result every "
        f"{result['interval_s'] * 1000:g} ms. rows/s is timed in the subprocess around the "
        "call alone. Peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` in that subprocess; "
        "'RSS before' is its VmRSS just before the call (after imports).",
        f"- whole run: {result['elapsed_s']:.0f} s",
        "",
        "| backend | expired rows | load (s) | deleted | cleanup (s) | rows/s "
        "| stores during cleanup: n, p50 / p99 / max (ms) "
        "| same stores, idle table: p50 / p99 (ms) "
        "| RSS before (MiB) | peak RSS (MiB) | expired left |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for s in result["sections"]:
        busy, idle = s["stores_during_cleanup"], s["stores_idle"]
        lines.append(
            f"| {s['label']} | {s['rows']:,} | {s['load_seconds']:.1f} | {s['deleted']:,} "
            f"| {s['cleanup_seconds']:.1f} | {s['rows_per_second']:,.0f} "
            f"| {busy['count']}, {_ms(busy['p50_ms'])} / {_ms(busy['p99_ms'])} / "
            f"{_ms(busy['max_ms'])} | {_ms(idle['p50_ms'])} / {_ms(idle['p99_ms'])} "
            f"| {s['rss_before_mib']:.0f} | {s['peak_rss_mib']:.0f} | {s['expired_left']:,} |"
        )
    lines += [
        "",
        "Batches of `cleanup_batch_size` rows (default 5000), each its own statement; the "
        "results stored during the cleanup were all kept "
        f"({'yes' if all(s['stored_kept'] for s in result['sections']) else '**NO**'}).",
        "",
    ]
    return "\n".join(lines)


def write(result: dict[str, Any], out_dir: Path) -> str:
    text = markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cleanup.md").write_text(text)
    (out_dir / "cleanup.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return text

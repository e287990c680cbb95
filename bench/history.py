"""``python -m bench history``: what the task history costs and how fast it answers.

Two parts, per SQL backend (PostgreSQL and MariaDB by default; SQLite with --only):

- **Writes, before and after.** ``store_result`` (one caller, and bursts of 32) by the
  library as it was before the history columns (``--baseline``, a commit checked out
  with ``git worktree`` into a temporary folder, on its own schema) and as it is now,
  with and without TaskDetails, each in its own subprocess, alternated round by round so
  that both see the same machine. Reports median ops/s and client CPU per call.
- **Queries over a big table.** ``--rows`` tasks (default 1,000,000) loaded in bulk over
  the last 24 hours (20 names, 8 workers, 90% SUCCESS / 8% FAILURE / 2% others), then
  p50 / p99 of ``list_tasks`` pages (unfiltered, by name, by state and name, by worker, a
  page 20 cursors deep), ``get_task``, and the median of ``task_summary`` over the day.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench import env
from bench.env import Servers

DATABASE = "chicory_bench_history"
WRITE_DATABASES = {"before": "chicory_bench_hist_before", "after": "chicory_bench_hist_after"}
DEFAULT_BASELINE = "5984496"  # main before issue 13
NAMES = [f"app.task_{number:02d}" for number in range(20)]
WORKERS = [f"host-{number}-4242-abcd{number:04d}" for number in range(8)]
ROOT = Path(__file__).resolve().parent.parent


# -- writes: one subprocess per variant and round ---------------------------------------


WRITER = r"""
import asyncio, json, sys, time, uuid
from pydantic import SecretStr
from chicory_backends import TaskResult, TaskState
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.config import (
    MySQLBackendConfig, PostgresBackendConfig, SQLiteBackendConfig,
)

kind, url, details = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
seconds, concurrency = float(sys.argv[4]), int(sys.argv[5])

def config():
    if kind == "sqlite":
        return SQLiteBackendConfig(file_path=url, auto_migrate=True)
    cls = PostgresBackendConfig if kind == "postgres" else MySQLBackendConfig
    return cls(url=SecretStr(url), auto_migrate=True, pool_size=10)

async def main():
    backend = DatabaseBackend(config())
    await backend.connect()
    extra = ()
    if details:
        from chicory_backends.types import TaskDetails
        extra = (TaskDetails(name="app.send_invoice", queue="default",
                             worker_id="host-1-42-abcdef12", attempt=1),)
    prefix = uuid.uuid4().hex[:8]
    counter = 0

    async def one():
        nonlocal counter
        counter += 1
        task_id = f"w-{prefix}-{counter}"
        result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"v": counter})
        await backend.store_result(task_id, result, *extra)

    for _ in range(50):
        await one()
    done = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        await asyncio.gather(*(one() for _ in range(concurrency)))
        done += concurrency
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await backend.disconnect()
    print(json.dumps({"ops": done / wall, "cpu_us": cpu / done * 1e6}))

asyncio.run(main())
"""


def _worktree(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="chicory-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


def _remove_worktree(folder: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
        check=False, capture_output=True,
    )  # fmt: skip


def _write_round(
    code: Path, kind: str, url: str, details: bool, seconds: float, concurrency: int
) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, kind, url, "1" if details else "0", str(seconds),
         str(concurrency)],
        check=True, capture_output=True, text=True, cwd=str(code),
        env={**os.environ, "PYTHONPATH": str(code)},
    )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def _fresh(servers: Servers, kind: str, name: str) -> str:
    if kind == "sqlite":
        path = servers.sqlite_path(name)
        env.remove_sqlite_files(path)
        return str(path)
    await env.recreate_database(servers, kind, name)
    return env.plain_url(servers.database_url(kind, name))


async def writes(
    servers: Servers, kind: str, baseline: Path, runs: int, seconds: float
) -> dict[str, Any]:
    variants = {
        "before (baseline)": (baseline, "before", False),
        "after, no details": (ROOT, "after", False),
        "after, with details": (ROOT, "after", True),
    }
    urls = {db: await _fresh(servers, kind, name) for db, name in WRITE_DATABASES.items()}
    figures: dict[str, dict[int, list[dict[str, float]]]] = {v: {1: [], 32: []} for v in variants}
    for round_number in range(runs):
        for concurrency in (1, 32):
            order = list(variants.items())
            if round_number % 2:
                order.reverse()
            for label, (code, db, details) in order:
                figures[label][concurrency].append(
                    _write_round(code, kind, urls[db], details, seconds, concurrency)
                )
    result: dict[str, Any] = {}
    for label, by_concurrency in figures.items():
        result[label] = {
            str(c): {
                "ops": statistics.median(r["ops"] for r in rounds),
                "cpu_us": statistics.median(r["cpu_us"] for r in rounds),
            }
            for c, rounds in by_concurrency.items()
        }
    if kind != "sqlite":
        for name in WRITE_DATABASES.values():
            await env.recreate_database(servers, kind, name, create=False)
    return result


# -- queries over a big table ---------------------------------------------------------------


async def load(servers: Servers, kind: str, rows: int) -> float:
    """``rows`` finished tasks over the last day, in bulk (not through the API)."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    names = "ARRAY[" + ", ".join(f"'{n}'" for n in NAMES) + "]"
    workers = "ARRAY[" + ", ".join(f"'{w}'" for w in WORKERS) + "]"
    if kind == "postgres":
        import asyncpg

        url = servers.database_url("postgres", DATABASE).set(drivername="postgresql")
        conn = await asyncpg.connect(env.plain_url(url))
        try:
            await conn.execute("SET session_replication_role = replica")  # no NOTIFY trigger
            await conn.execute(
                f"""
                INSERT INTO chicory_task_results (task_id, state, result, error, traceback,
                    created_at, updated_at, expires_at, name, queue, worker_id, attempts,
                    enqueued_at, started_at, finished_at)
                SELECT 'hist-' || g, s.state, '{{"v": 1}}'::jsonb,
                    CASE WHEN s.state = 'FAILURE' THEN 'ValueError: boom' END, NULL,
                    t.created, t.created + interval '0.2 s', NULL,
                    ({names})[1 + g % 20], 'default', ({workers})[1 + g % 8],
                    1 + (g % 50 = 0)::int, t.created, t.created + interval '0.01 s',
                    t.created + interval '0.01 s' + (g % 997) * interval '1 ms'
                FROM generate_series(1, $1) g
                CROSS JOIN LATERAL (SELECT $2::timestamptz - (g * 86.4 / $1) * interval
                    '1000 ms' AS created) t
                CROSS JOIN LATERAL (SELECT CASE WHEN g % 100 < 90 THEN 'SUCCESS'
                    WHEN g % 100 < 98 THEN 'FAILURE' WHEN g % 100 < 99 THEN 'RETRY'
                    ELSE 'DEAD_LETTERED' END AS state) s
                """,
                rows, now,
            )  # fmt: skip
            await conn.execute("ANALYZE chicory_task_results")
        finally:
            await conn.close()
    elif kind == "mysql":
        import aiomysql

        url = servers.database_url("mysql", DATABASE)
        conn = await aiomysql.connect(
            host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
            password=url.password or "", db=DATABASE, autocommit=True,
        )  # fmt: skip
        names_sql = ", ".join(f"'{n}'" for n in NAMES)
        workers_sql = ", ".join(f"'{w}'" for w in WORKERS)
        try:
            async with conn.cursor() as cur:
                for first in range(1, rows + 1, 250_000):
                    last = min(first + 249_999, rows)
                    await cur.execute(
                        f"""
                        INSERT INTO chicory_task_results (task_id, state, result, error,
                            traceback, created_at, updated_at, expires_at, name, queue,
                            worker_id, attempts, enqueued_at, started_at, finished_at)
                        SELECT CONCAT('hist-', seq), st,  '{{"v": 1}}',
                            IF(st = 'FAILURE', 'ValueError: boom', NULL), NULL,
                            c, c + INTERVAL 200000 MICROSECOND, NULL,
                            ELT(1 + MOD(seq, 20), {names_sql}), 'default',
                            ELT(1 + MOD(seq, 8), {workers_sql}), 1 + (MOD(seq, 50) = 0), c,
                            c + INTERVAL 10000 MICROSECOND,
                            c + INTERVAL (10000 + (MOD(seq, 997)) * 1000) MICROSECOND
                        FROM (SELECT seq, %s - INTERVAL FLOOR(seq * 86400000000 / %s)
                                MICROSECOND AS c,
                              CASE WHEN MOD(seq, 100) < 90 THEN 'SUCCESS'
                                WHEN MOD(seq, 100) < 98 THEN 'FAILURE'
                                WHEN MOD(seq, 100) < 99 THEN 'RETRY'
                                ELSE 'DEAD_LETTERED' END AS st
                              FROM seq_{first}_to_{last}) g
                        """,
                        (now.replace(tzinfo=None), rows),
                    )  # fmt: skip
                await cur.execute("ANALYZE TABLE chicory_task_results")
                await cur.fetchall()
        finally:
            conn.close()
    else:
        raise SystemExit("the query part loads PostgreSQL and MariaDB only")
    return time.perf_counter() - started


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


async def queries(servers: Servers, kind: str, rows: int, calls: int) -> dict[str, Any]:
    from chicory_backends.sql.backend import DatabaseBackend

    await env.migrate_database(servers, kind, DATABASE)
    loaded = await load(servers, kind, rows)
    config = env.ours_config(servers, kind).model_copy(
        update={"url": SecretStr(env.plain_url(servers.database_url(kind, DATABASE)))}
    )
    backend = DatabaseBackend(config)
    await backend.connect()
    try:
        deep = None
        for _ in range(20):
            page = await backend.list_tasks(name=NAMES[7], cursor=deep)
            deep = page.next_cursor
        cases: dict[str, Any] = {
            "list_tasks() first page": lambda: backend.list_tasks(),
            "list_tasks(name)": lambda: backend.list_tasks(name=NAMES[3]),
            # NAMES[12]: a fifth of its tasks fail; NAMES[3] never does, so that call walks
            # all of the name's index entries for nothing (the worst case of two filters).
            "list_tasks(state=FAILURE, name)": lambda: backend.list_tasks(
                state="FAILURE", name=NAMES[12]
            ),
            "list_tasks(state=FAILURE, name), no match": lambda: backend.list_tasks(
                state="FAILURE", name=NAMES[3]
            ),
            "list_tasks(worker_id)": lambda: backend.list_tasks(worker_id=WORKERS[2]),
            "list_tasks(name), page 21": lambda: backend.list_tasks(name=NAMES[7], cursor=deep),
            "get_task": lambda: backend.get_task("hist-123456"),
        }
        result: dict[str, Any] = {"rows": rows, "load_seconds": round(loaded, 1)}
        cases.update(_dashboard_pages(backend))
        # The no-match walk takes a second or more on MariaDB: fewer calls of it.
        few = {"list_tasks(state=FAILURE, name), no match": max(1, calls // 10)}
        for label, call in cases.items():
            samples = []
            for _ in range(few.get(label, calls)):
                started = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - started)
            result[label] = _ms(samples)
        since = datetime.now(UTC) - timedelta(days=1)
        summary_times = []
        for _ in range(3):
            started = time.perf_counter()
            summaries = await backend.task_summary(since=since)
            summary_times.append(time.perf_counter() - started)
        result["task_summary(last day)"] = {
            "median_ms": round(statistics.median(summary_times) * 1000, 1),
            "names": len(summaries),
            "tasks": sum(s.total for s in summaries),
        }
    finally:
        await backend.disconnect()
    await env.recreate_database(servers, kind, DATABASE, create=False)
    return result


def _dashboard_pages(backend: Any) -> dict[str, Any]:
    """GETs of the dashboard's pages over the big table, in this process (httpx's ASGI
    transport: the page's own work, no socket); none without the web extra."""
    try:
        import httpx

        from chicory_backends.web import create_app
    except ImportError:
        return {}
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(backend), client=("127.0.0.1", 1)),
        base_url="http://127.0.0.1",
    )

    def page(path: str) -> Any:
        async def get() -> None:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.status_code)

        return get

    return {
        "dashboard GET /tasks": page("/tasks"),
        "dashboard GET /tasks?state=FAILURE&name=…": page(f"/tasks?state=FAILURE&name={NAMES[12]}"),
        "dashboard GET /task?id=…": page("/task?id=hist-123456"),
    }


# -- report ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Task history: write cost and query latency",
        "",
        f"Run {result['when']} on {result['machine']}; `python -m bench history`. "
        f"Baseline: commit {result['baseline']} (before the history columns).",
        "",
        "## store_result before and after the history columns (median of "
        f"{result['runs']} alternated rounds)",
        "",
        "| backend | variant | ops/s c=1 | CPU µs/call c=1 | ops/s c=32 | CPU µs/call c=32 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, variants in result["writes"].items():
        base = variants["before (baseline)"]
        for label, figures in variants.items():
            one, burst = figures["1"], figures["32"]
            ratio = ""
            if not label.startswith("before"):
                ratio = f" ({one['ops'] / base['1']['ops']:.2f}x, "
                ratio += f"{burst['ops'] / base['32']['ops']:.2f}x)"
            lines.append(
                f"| {kind} | {label}{ratio} | {one['ops']:,.0f} | {one['cpu_us']:.0f} | "
                f"{burst['ops']:,.0f} | {burst['cpu_us']:.0f} |"
            )
    lines += ["", f"## Queries over {result['rows']:,} stored tasks", ""]
    for kind, figures in result["queries"].items():
        lines += [f"### {kind} (loaded in {figures['load_seconds']} s)", "",
                  "| call | p50 ms | p99 ms |", "| --- | ---: | ---: |"]  # fmt: skip
        for label, value in figures.items():
            if isinstance(value, dict) and "p50_ms" in value:
                lines.append(f"| {label} | {value['p50_ms']} | {value['p99_ms']} |")
        summary = figures["task_summary(last day)"]
        lines += [
            "",
            f"task_summary over the last day: {summary['median_ms']} ms (median of 3), "
            f"{summary['names']} names, {summary['tasks']:,} tasks.",
            "",
        ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    servers = Servers.from_env()
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{env.machine()['nproc']} cores, Python {env.machine()['python']}",
        "baseline": args.baseline,
        "runs": args.runs,
        "rows": args.rows,
        "writes": {},
        "queries": {},
    }
    baseline = _worktree(args.baseline)
    try:
        for kind in kinds:
            env.log(f"history writes: {kind}")
            result["writes"][kind] = await writes(servers, kind, baseline, args.runs, args.seconds)
    finally:
        _remove_worktree(baseline)
        servers.remove_sqlite_dir()
    for kind in kinds:
        if kind != "sqlite" and args.rows:
            env.log(f"history queries: {kind}, {args.rows:,} rows")
            result["queries"][kind] = await queries(servers, kind, args.rows, args.calls)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench history", description=__doc__)
    parser.add_argument("--only", default="postgres,mysql", help="postgres,mysql,sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000, help="tasks for the query part")
    parser.add_argument("--calls", type=int, default=200, help="calls per query figure")
    parser.add_argument("--runs", type=int, default=5, help="alternated write rounds")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per write round")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit before history")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.md").write_text(text, encoding="utf-8")
    (args.out / "history.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text)
    return 0

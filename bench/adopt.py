"""``python -m bench adopt``: adopting Chicory 0.1.0's own tables in place, under live load.

Per SQL backend, in a database of its own (``chicory_bench_adopt``, dropped at the end):

1. **Seed.** Chicory's own ``DatabaseBackend.connect()`` makes its tables
   (``Base.metadata.create_all``); N rows (1,000,000 on PostgreSQL and MariaDB, 100,000 on
   SQLite) are then bulk-loaded in Chicory's exact format: ``result_json`` is
   ``chicory.types.TaskResult(...).model_dump_json()`` for a mix of states (70% SUCCESS
   with ints, floats, bools, None, strings, dicts and lists; FAILURE and DEAD_LETTERED with
   an error and a traceback; PENDING, STARTED, RETRY as ``set_state`` leaves them), 100 B to
   1 KB a document, created/updated over the last day. PostgreSQL loads by COPY (asyncpg
   ``copy_records_to_table``), MariaDB and SQLite by multi-row INSERT batches through
   SQLAlchemy Core on Chicory's own table object (its column types convert the values, as
   its ORM does), then VACUUM ANALYZE / ANALYZE TABLE. Task ids look like uuid4 but start
   with the row number in hex, so the load is in primary-key order and a reader can name
   any seeded row. Three heartbeats come from Chicory's ``store_heartbeat``. A sample of
   rows is read back through Chicory's own ``get_result`` and must equal what was written:
   that proves the format. ``chicory-backends migrate --check`` then records the plan and
   its estimated time.
2. **Live load** through Chicory's own ``DatabaseBackend`` (the workers still on the old
   version during a switch), for the whole measurement: one writer storing a new result
   (uuid4 id, SUCCESS) every ``--interval`` (5 ms; paced, no catch-up burst after a stall)
   and two readers on a backend of their own, each reading a random seeded task id every
   ``--read-interval`` (5 ms). Every call's start, end and any exception is recorded. After
   a 1 s warm-up (not counted): 10 s idle, then the adoption as users run it: the CLI
   ``chicory-backends migrate --url URL`` as a subprocess, its per-revision progress lines
   (stderr) timestamped as they arrive, then 5 s more.
3. **Reported:** adoption wall time (the CLI process, start to exit) and the sum of the
   revisions' own durations; rows/s (rows / CLI wall time); the longest write stall (the
   largest gap between two consecutive successful writes that overlaps the adoption) and
   the longest single write (failed ones included: a write that waits, then raises);
   write p50/p99 idle vs during the adoption (writes whose span overlaps it) and the
   ratio; read p99 and longest; every exception raised by Chicory's
   backend; after the adoption, the sample read through OUR backend compared with what
   Chicory's ``get_result`` returned before (state, value and its JSON type, error,
   traceback), every result Chicory's writer stored during the run read through ours, and
   Chicory's heartbeats in ours ``get_active_workers``. Server-side: PostgreSQL
   ``pg_stat_database`` deltas over the adoption (xact_commit, sessions) and a sampler of
   ``pg_stat_activity`` every 0.2 s (sessions waiting on a lock, and the DDL running
   meanwhile); MariaDB ``SHOW GLOBAL STATUS`` deltas (Com_alter_table, Connections: global
   counters, other clients of the server count too) and ``information_schema.PROCESSLIST``
   the same way. Targets from issue 20 are printed beside the figures, never asserted: no
   stall over 1 s, write p99 during adoption at most 3x idle, at least 100k rows/s on
   PostgreSQL.

Writes bench/results/adopt.md and adopt.json. 2.5 to 4.5 minutes at full size on 2 shared cores.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import env
from bench.env import LABELS, Servers, log

DEFAULT_ROWS = {"postgres": 1_000_000, "mysql": 1_000_000, "sqlite": 100_000}
DATABASE = "chicory_bench_adopt"
BATCH_ROWS = {"postgres": 25_000, "mysql": 5_000, "sqlite": 10_000}
HEARTBEATS = 3
MONITOR_INTERVAL = 0.2
# Issue 20's targets: printed beside the figures as met / not met, never asserted.
TARGET_STALL_S = 1.0
TARGET_P99_RATIO = 3.0
TARGET_PG_ROWS_PER_S = 100_000
PROGRESS = re.compile(r"migrate: applied (\w+): (.*) \((\d+(?:\.\d+)?)s\)\s*$")


@dataclass
class Settings:
    kinds: list[str]
    rows: int | None = None  # None: DEFAULT_ROWS per backend
    idle: float = 10.0
    after: float = 5.0
    warmup: float = 1.0
    interval: float = 0.005
    read_interval: float = 0.005
    readers: int = 2
    sample: int = 200
    keep: bool = False
    database: str = DATABASE


# -- Chicory's rows ---------------------------------------------------------------------------

_WORDS = (
    "order", "invoice", "customer", "shipment", "parcel", "warehouse", "refund", "payment",
    "ledger", "account", "report", "export", "import", "batch", "window", "quota", "region",
    "replica", "cursor", "session", "token", "digest", "archive",
)  # fmt: skip
_STATES = (
    ("SUCCESS", 70), ("FAILURE", 10), ("PENDING", 5), ("STARTED", 5), ("RETRY", 5),
    ("DEAD_LETTERED", 5),
)  # fmt: skip
_STATE_OF = [state for state, weight in _STATES for _ in range(weight)]


def _mix(i: int, salt: int) -> int:
    """A cheap, deterministic 32-bit hash of the row number."""
    x = (i * 0x9E3779B1 + salt * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return x ^ (x >> 12)


def task_id_for(i: int) -> str:
    """The seeded row ``i``'s id: a uuid4 whose first 8 hex digits are ``i`` (so ids sort in
    row order and the load is in primary-key order)."""
    low = (_mix(i, 1) << 64) | (_mix(i, 2) << 32) | _mix(i, 3)
    return str(uuid.UUID(int=(i << 96) | low, version=4))


def _words(i: int, length: int) -> str:
    out: list[str] = []
    size = 0
    n = 0
    while size < length:
        word = _WORDS[_mix(i, 10 + n) % len(_WORDS)]
        out.append(word)
        size += len(word) + 1
        n += 1
    return " ".join(out)[:length]


def _traceback(i: int, length: int) -> str:
    frames: list[str] = []
    n = 0
    while sum(len(f) for f in frames) < length:
        frames.append(
            f'  File "/app/tasks/{_WORDS[_mix(i, 20 + n) % len(_WORDS)]}.py", line '
            f"{_mix(i, 40 + n) % 400 + 1}, in handle\n    result = process(payload)\n"
        )
        n += 1
    return "Traceback (most recent call last):\n" + "".join(frames) + "ValueError: bad input"


def _value(i: int) -> Any:
    h = _mix(i, 5)
    kind = h % 8
    if kind == 0:
        return h
    if kind == 1:
        return h / 7
    if kind == 2:
        return bool(h & 16)
    if kind == 3:
        return None
    if kind == 4:
        return _words(i, 20 + h % 700)
    if kind == 5:
        items = [
            {"sku": f"SKU-{_mix(i, 60 + n) % 100000:05d}", "qty": _mix(i, 80 + n) % 9 + 1}
            for n in range(h % 12)
        ]
        return {"customer": h % 50000, "items": items, "total": (h % 100000) / 100}
    if kind == 6:
        return [_mix(i, 100 + n) % 1000 for n in range(h % 80)]
    return str(h % 1000)  # a string that looks like a number


def result_for(i: int) -> Any:
    """Chicory's TaskResult for seeded row ``i`` (a chicory.types.TaskResult)."""
    from chicory.types import TaskResult, TaskState

    task_id = task_id_for(i)
    state = _STATE_OF[_mix(i, 4) % 100]
    if state == "SUCCESS":
        return TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=_value(i))
    if state in ("FAILURE", "DEAD_LETTERED"):
        length = 150 + _mix(i, 6) % 650
        return TaskResult(
            task_id=task_id,
            state=TaskState(state),
            error=f"ValueError: bad input for {_WORDS[i % len(_WORDS)]} {i}",
            traceback=_traceback(i, length),
        )
    return TaskResult(task_id=task_id, state=TaskState(state))  # what set_state leaves


def rows(start: int, stop: int, count: int, base: datetime) -> list[tuple[Any, ...]]:
    """Seeded rows ``start``..``stop`` as Chicory's backend writes them: (task_id, state,
    result_json, created_at, updated_at), created over the day after ``base``."""
    out = []
    for i in range(start, stop):
        result = result_for(i)
        created = base + timedelta(seconds=86400 * i / count)
        updated = created if result.state == "PENDING" else created + timedelta(
            milliseconds=_mix(i, 7) % 30000
        )  # fmt: skip
        out.append((result.task_id, result.state.value, result.model_dump_json(), created, updated))
    return out


# -- configs and the seed -----------------------------------------------------------------------


@dataclass
class Target:
    """One bench database: its URL as the CLI takes it, and both backends' configs."""

    kind: str
    url: str  # sqlalchemy URL, password included (the CLI's --url)
    sqlite_path: Path | None = None

    def chicory_config(self) -> Any:
        from chicory.config import MySQLBackendConfig, PostgresBackendConfig, SQLiteBackendConfig

        classes = {
            "postgres": PostgresBackendConfig,
            "mysql": MySQLBackendConfig,
            "sqlite": SQLiteBackendConfig,
        }
        return classes[self.kind](url=self.url)

    def chicory_backend(self) -> Any:
        from chicory.backend.database import DatabaseBackend

        return DatabaseBackend(self.chicory_config())

    def ours(self) -> Any:
        from pydantic import SecretStr

        from chicory_backends.config import (
            MySQLBackendConfig,
            PostgresBackendConfig,
            SQLiteBackendConfig,
        )
        from chicory_backends.sql.backend import DatabaseBackend

        if self.kind == "sqlite":
            assert self.sqlite_path is not None
            return DatabaseBackend(SQLiteBackendConfig(file_path=str(self.sqlite_path)))
        config_class = PostgresBackendConfig if self.kind == "postgres" else MySQLBackendConfig
        return DatabaseBackend(config_class(url=SecretStr(self.url)))


async def make_target(servers: Servers, kind: str, database: str) -> Target:
    if kind == "sqlite":
        path = servers.sqlite_path(database)
        env.remove_sqlite_files(path)
        return Target(kind, f"sqlite+aiosqlite:///{path}", path)
    await env.recreate_database(servers, kind, database)
    return Target(kind, env.plain_url(servers.database_url(kind, database)))


async def drop_target(servers: Servers, target: Target, database: str) -> None:
    if target.kind == "sqlite":
        if target.sqlite_path is not None:
            env.remove_sqlite_files(target.sqlite_path)
    else:
        await env.recreate_database(servers, target.kind, database, create=False)


def _batches(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


async def _load_postgres(target: Target, count: int, base: datetime) -> None:
    import asyncpg
    from sqlalchemy import make_url

    url = make_url(target.url).set(drivername="postgresql")
    conn = await asyncpg.connect(env.plain_url(url))
    try:
        columns = ["task_id", "state", "result_json", "created_at", "updated_at"]
        for start, stop in _batches(count, BATCH_ROWS["postgres"]):
            await conn.copy_records_to_table(
                "chicory_task_results", records=rows(start, stop, count, base), columns=columns
            )
        await conn.execute("VACUUM (ANALYZE) chicory_task_results")
    finally:
        await conn.close()


async def _load_sqlalchemy(target: Target, count: int, base: datetime) -> None:
    """Multi-row INSERTs (aiomysql's executemany; sqlite3's) through Chicory's own table
    object, whose column types convert the values exactly as its ORM does."""
    from chicory.backend.models import TaskResultModel
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    table: Any = TaskResultModel.__table__
    keys = ("task_id", "state", "result_json", "created_at", "updated_at")
    engine = create_async_engine(target.url)
    try:
        for start, stop in _batches(count, BATCH_ROWS[target.kind]):
            batch = [dict(zip(keys, row, strict=True)) for row in rows(start, stop, count, base)]
            async with engine.begin() as connection:
                await connection.execute(table.insert(), batch)
        async with engine.begin() as connection:
            statement = (
                "ANALYZE TABLE chicory_task_results" if target.kind == "mysql" else "ANALYZE"
            )
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def seed(target: Target, count: int, sample_size: int) -> dict[str, Any]:
    """Chicory's tables, N rows, heartbeats; the sample as Chicory's get_result reads it."""
    from chicory.types import WorkerStats

    started = time.perf_counter()
    chicory = target.chicory_backend()
    await chicory.connect()  # Base.metadata.create_all: Chicory's own tables and indexes
    try:
        base = datetime.now(UTC) - timedelta(days=1, minutes=5)
        if target.kind == "postgres":
            await _load_postgres(target, count, base)
        else:
            await _load_sqlalchemy(target, count, base)
        load_seconds = time.perf_counter() - started
        for n in range(HEARTBEATS):
            worker_id = f"chicory-bench-worker-{n}"
            stats = WorkerStats(
                worker_id=worker_id, hostname="bench", pid=1000 + n, queue="default",
                concurrency=32, tasks_processed=n * 100, started_at=datetime.now(UTC),
            )  # fmt: skip
            await chicory.store_heartbeat(worker_id, stats, ttl=3600)
        rng = random.Random(20)  # noqa: S311 (a reproducible sample, not a secret)
        picks = rng.sample(range(count), min(sample_size, count))
        sample: dict[str, Any] = {}
        wrong = []
        for i in picks:
            expected = result_for(i)
            got = await chicory.get_result(expected.task_id)
            if got is None or got.model_dump(mode="json") != json.loads(expected.model_dump_json()):
                wrong.append(expected.task_id)
            sample[expected.task_id] = got
    finally:
        await chicory.disconnect()
    sizes = [len(result_for(i).model_dump_json()) for i in picks]
    return {
        "seconds": load_seconds,
        "sample": sample,
        "sample_wrong": wrong,
        "doc_bytes": {
            "mean": statistics.mean(sizes) if sizes else None,
            "min": min(sizes, default=None),
            "max": max(sizes, default=None),
        },
    }


# -- the live load (Chicory's own backend) --------------------------------------------------------


@dataclass
class Call:
    start: float  # perf_counter
    end: float
    ok: bool


@dataclass
class Load:
    """Chicory's writer and readers, recording every call."""

    target: Target
    count: int
    settings: Settings
    writes: list[Call] = field(default_factory=list)
    reads: list[Call] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)  # task id -> value, stored OK
    missing_reads: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def _error(self, op: str, start: float, end: float, error: BaseException) -> None:
        self.errors.append(
            {"op": op, "at": start, "seconds": end - start, "error": env.describe(error)}
        )

    async def _writer(self, backend: Any) -> None:
        from chicory.types import TaskResult, TaskState

        n = 0
        tick = time.perf_counter()
        while not self.stop.is_set():
            n += 1
            task_id = str(uuid.uuid4())
            result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"n": n})
            start = time.perf_counter()
            failure: Exception | None = None
            try:
                await backend.store_result(task_id, result)
            except Exception as error:
                failure = error
            end = time.perf_counter()
            ok = failure is None
            if failure is not None:
                self._error("write", start, end, failure)
            self.writes.append(Call(start, end, ok))
            if ok:
                self.written[task_id] = n
            tick = max(tick + self.settings.interval, end)  # paced; no burst after a stall
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))

    async def _reader(self, backend: Any, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 (not a secret)
        tick = time.perf_counter()
        while not self.stop.is_set():
            task_id = task_id_for(rng.randrange(self.count))
            start = time.perf_counter()
            failure: Exception | None = None
            try:
                if await backend.get_result(task_id) is None:
                    self.missing_reads += 1
            except Exception as error:
                failure = error
            end = time.perf_counter()
            ok = failure is None
            if failure is not None:
                self._error("read", start, end, failure)
            self.reads.append(Call(start, end, ok))
            tick = max(tick + self.settings.read_interval, end)
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))

    async def run(self) -> None:
        writer_backend = self.target.chicory_backend()  # the worker
        reader_backend = self.target.chicory_backend()  # a client process
        await writer_backend.connect()
        await reader_backend.connect()
        try:
            tasks = [asyncio.create_task(self._writer(writer_backend))]
            tasks += [
                asyncio.create_task(self._reader(reader_backend, 100 + n))
                for n in range(self.settings.readers)
            ]
            await asyncio.gather(*tasks)
        finally:
            await writer_backend.disconnect()
            await reader_backend.disconnect()


# -- the adoption: the CLI, as users run it --------------------------------------------------------


def cli_path() -> str:
    beside = Path(sys.executable).parent / "chicory-backends"
    if beside.exists():
        return str(beside)
    found = shutil.which("chicory-backends")
    if found is None:
        raise RuntimeError(
            "chicory-backends is not installed beside this Python (pip install -e .)"
        )
    return found


def _cli_env() -> dict[str, str]:
    """The environment without CHICORY_BACKEND_* (only --url names the database)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}


async def run_cli(url: str, *extra: str, cwd: str) -> dict[str, Any]:
    """``chicory-backends migrate --url URL``: wall time, exit code, progress lines with
    the time each arrived (perf_counter)."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        cli_path(), "migrate", "--url", url, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_cli_env(), cwd=cwd,
    )  # fmt: skip
    lines: list[tuple[float, str]] = []

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append((time.perf_counter(), line))
            if PROGRESS.match(line):
                log(f"   {line}")

    reading = asyncio.create_task(read_stderr())
    assert process.stdout is not None
    stdout = (await process.stdout.read()).decode(errors="replace")
    await reading
    code = await process.wait()
    ended = time.perf_counter()
    steps = []
    for at, line in lines:
        if match := PROGRESS.match(line):
            steps.append(
                {
                    "revision": match.group(1),
                    "doc": match.group(2),
                    "seconds": float(match.group(3)),
                    "at_s": at - started,  # when the line arrived, from the CLI's start
                }
            )
    return {
        "command": ["chicory-backends", "migrate", "--url", "<url>", *extra],
        "exit_code": code,
        "started": started,
        "ended": ended,
        "wall_s": ended - started,
        "steps": steps,
        "stdout": stdout.strip(),
        "stderr": [line for _, line in lines],
    }


# -- server-side facts ----------------------------------------------------------------------------


class Monitor:
    """Cheap server-side facts: counters before/after, and a sampler of the sessions on the
    bench database (how many wait on a lock, which DDL runs meanwhile)."""

    def __init__(self, kind: str, servers: Servers, database: str) -> None:
        self.kind = kind
        self.servers = servers
        self.database = database
        self.samples: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self._conn: Any = None

    async def open(self) -> None:
        if self.kind == "postgres":
            import asyncpg

            url = self.servers.database_url("postgres", "postgres").set(drivername="postgresql")
            self._conn = await asyncpg.connect(env.plain_url(url))
        elif self.kind == "mysql":
            import aiomysql

            url = self.servers.admin_url("mysql")
            self._conn = await aiomysql.connect(
                host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                password=url.password or "", autocommit=True,
            )  # fmt: skip

    async def close(self) -> None:
        if self._conn is None:
            return
        if self.kind == "postgres":
            await self._conn.close()
        else:
            self._conn.close()
        self._conn = None

    async def counters(self) -> dict[str, int]:
        if self.kind == "postgres":
            await self._conn.execute("SELECT pg_stat_clear_snapshot()")
            row = await self._conn.fetchrow(
                "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database "
                "WHERE datname = $1",
                self.database,
            )
            return {key: int(row[key]) for key in ("xact_commit", "xact_rollback", "sessions")}
        if self.kind == "mysql":
            names = ("Com_alter_table", "Com_create_index", "Connections", "Com_commit")
            async with self._conn.cursor() as cur:
                await cur.execute(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN "
                    f"({', '.join(repr(n) for n in names)})"
                )
                return {str(name): int(value) for name, value in await cur.fetchall()}
        return {}

    async def _sample(self) -> dict[str, Any]:
        if self.kind == "postgres":
            rows = await self._conn.fetch(
                "SELECT pid, state, wait_event_type, left(query, 160) AS query FROM "
                "pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.database,
            )
            waiting = sum(1 for r in rows if r["wait_event_type"] == "Lock")
            ddl = [
                r["query"]
                for r in rows
                if r["state"] == "active"
                and r["wait_event_type"] != "Lock"
                and re.match(r"\s*(ALTER|CREATE|DROP)\b", r["query"] or "", re.I)
            ]
            return {"sessions": len(rows), "waiting": waiting, "ddl": ddl[0] if ddl else None}
        async with self._conn.cursor() as cur:
            await cur.execute(
                "SELECT STATE, LEFT(INFO, 160) FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID <> CONNECTION_ID()",
                (self.database,),
            )
            found = await cur.fetchall()
        waiting = sum(1 for state, _ in found if state and "lock" in state.lower())
        ddl = [
            (info, state)
            for state, info in found
            if info
            and re.match(r"\s*(ALTER|CREATE|DROP)\b", info, re.I)
            and "lock" not in (state or "").lower()
        ]
        return {
            "sessions": len(found),
            "waiting": waiting,
            "ddl": ddl[0][0] if ddl else None,
            "ddl_state": ddl[0][1] if ddl else None,
        }

    async def sample_until_stopped(self) -> None:
        if self._conn is None:
            return
        while not self.stop.is_set():
            at = time.perf_counter()
            try:
                found = await self._sample()
            except Exception as error:  # a sampler failure must not stop the bench
                found = {"error": env.describe(error)}
            found["at"] = at
            self.samples.append(found)
            await asyncio.sleep(MONITOR_INTERVAL)


def summarize_samples(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Over the adoption: peak sessions and lock waiters, and each DDL seen running with
    the time span it was seen and the most sessions waiting meanwhile."""
    during = [s for s in samples if start <= s["at"] <= end and "error" not in s]
    statements: dict[str, dict[str, Any]] = {}
    for s in during:
        if s["ddl"] is None:
            continue
        entry = statements.setdefault(
            s["ddl"], {"ddl": s["ddl"], "first_s": s["at"] - start, "max_waiting": 0}
        )
        entry["last_s"] = s["at"] - start
        entry["max_waiting"] = max(entry["max_waiting"], s["waiting"])
        if s.get("ddl_state") and s["ddl_state"] not in entry.setdefault("states", []):
            entry["states"].append(s["ddl_state"])  # MariaDB's stage of the statement
    waits = [s["at"] - start for s in during if s["waiting"]]
    return {
        "samples": len(during),
        "peak_sessions": max((s["sessions"] for s in during), default=None),
        "peak_waiting": max((s["waiting"] for s in during), default=None),
        "waiting_first_s": min(waits, default=None),
        "waiting_last_s": max(waits, default=None),
        "ddl_seen": list(statements.values()),
    }


# -- analysis --------------------------------------------------------------------------------------


def percentiles(latencies: list[float]) -> dict[str, Any]:
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


def phase_stats(calls: list[Call], start: float, end: float) -> dict[str, Any]:
    """Calls whose span overlaps [start, end]; latency percentiles and failures."""
    chosen = [c for c in calls if c.start <= end and c.end >= start]
    stats = percentiles([c.end - c.start for c in chosen if c.ok])
    stats["failed"] = sum(1 for c in chosen if not c.ok)
    # The longest call, failed ones included (a write that waited, then raised).
    longest = max((c.end - c.start for c in chosen), default=None)
    stats["longest_ms"] = None if longest is None else longest * 1000
    return stats


def longest_gap(calls: list[Call], start: float, end: float) -> dict[str, Any]:
    """The largest gap between consecutive successful completions that overlaps [start,
    end] (the write stall), with its position relative to ``start``."""
    ends = sorted(c.end for c in calls if c.ok)
    best: tuple[float, float, float] | None = None
    for before, after in itertools.pairwise(ends):
        if after < start or before > end:
            continue
        if best is None or after - before > best[0]:
            best = (after - before, before, after)
    if best is None:  # no write completed across the window at all
        return {"gap_ms": None, "from_s": None, "to_s": None}
    return {"gap_ms": best[0] * 1000, "from_s": best[1] - start, "to_s": best[2] - start}


def revisions_during(steps: list[dict[str, Any]], frm: float, to: float) -> list[str]:
    """The revisions whose run (between two progress lines) overlaps [frm, to], seconds
    from the CLI's start."""
    found = []
    previous = 0.0
    for step in steps:
        if step["at_s"] >= frm and previous <= to:
            found.append(step["revision"])
        previous = step["at_s"]
    return found


def _same(ours: Any, theirs: Any) -> bool:
    if ours is None or theirs is None:
        return ours is theirs
    return bool(
        ours.state.value == theirs.state.value
        and json.dumps(ours.result, sort_keys=True) == json.dumps(theirs.result, sort_keys=True)
        and ours.result == theirs.result
        and ours.error == theirs.error
        and ours.traceback == theirs.traceback
    )


async def check_after(
    target: Target, before: dict[str, Any], written: dict[str, int]
) -> dict[str, Any]:
    """OUR backend on the adopted database: the sample equals Chicory's reading before,
    every result Chicory's writer stored is there; Chicory's reader still agrees."""
    ours = target.ours()
    await ours.connect()
    try:
        wrong = [
            task_id for task_id, theirs in before.items()
            if not _same(await ours.get_result(task_id), theirs)
        ]  # fmt: skip
        ids = list(written)
        found: dict[str, Any] = {}
        for start in range(0, len(ids), 500):
            found.update(await ours.get_results(ids[start : start + 500]))
        live_wrong = sum(
            1
            for task_id, n in written.items()
            if task_id not in found or found[task_id].result != {"n": n}
        )
        workers = {w.worker_id for w in await ours.get_active_workers()}
    finally:
        await ours.disconnect()
    chicory = target.chicory_backend()
    await chicory.connect()
    try:
        chicory_wrong = [
            task_id for task_id, theirs in before.items()
            if await chicory.get_result(task_id) != theirs
        ]  # fmt: skip
    finally:
        await chicory.disconnect()
    return {
        "sample": len(before),
        "sample_wrong": wrong[:20],
        "sample_equal": len(before) - len(wrong),
        "live_written": len(written),
        "live_wrong": live_wrong,
        "heartbeats_seen": sum(
            1 for n in range(HEARTBEATS) if f"chicory-bench-worker-{n}" in workers
        ),
        "chicory_sample_wrong": chicory_wrong[:20],
    }


# -- one backend -----------------------------------------------------------------------------------


async def run_kind(kind: str, servers: Servers, settings: Settings) -> dict[str, Any]:
    count = settings.rows if settings.rows is not None else DEFAULT_ROWS[kind]
    log(f"== {LABELS[kind]}: {count:,} Chicory rows")
    target = await make_target(servers, kind, settings.database)
    workdir = tempfile.mkdtemp(prefix="chicory-bench-adopt-")
    try:
        seeded = await seed(target, count, settings.sample)
        log(
            f"   seeded in {seeded['seconds']:.1f} s; sample through Chicory's get_result: "
            f"{len(seeded['sample']) - len(seeded['sample_wrong'])}/{len(seeded['sample'])} equal"
        )
        check = await run_cli(target.url, "--check", cwd=workdir)
        return await _measure(kind, servers, settings, target, count, seeded, check, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not settings.keep:
            await drop_target(servers, target, settings.database)


async def _measure(
    kind: str,
    servers: Servers,
    settings: Settings,
    target: Target,
    count: int,
    seeded: dict[str, Any],
    check: dict[str, Any],
    workdir: str,
) -> dict[str, Any]:
    load = Load(target, count, settings)
    monitor = Monitor(kind, servers, settings.database)
    await monitor.open()
    loading = asyncio.create_task(load.run())
    sampling = asyncio.create_task(monitor.sample_until_stopped())
    try:
        await asyncio.sleep(settings.warmup)
        idle_start = time.perf_counter()
        await asyncio.sleep(settings.idle)
        counters_before = await monitor.counters()
        cli = await run_cli(target.url, cwd=workdir)
        counters_after = await monitor.counters()
        await asyncio.sleep(settings.after)
        after_end = time.perf_counter()
    finally:
        load.stop.set()
        monitor.stop.set()
        await loading
        await sampling
        await monitor.close()
    if cli["exit_code"] != 0:
        log(f"   migrate FAILED ({cli['exit_code']}): {' | '.join(cli['stderr'][-5:])}")
    start, end = cli["started"], cli["ended"]
    write_gap = longest_gap(load.writes, start, end)
    gap_revisions = (
        revisions_during(cli["steps"], write_gap["from_s"], write_gap["to_s"])
        if write_gap["gap_ms"] is not None
        else []
    )
    writes = {
        "idle": phase_stats(load.writes, idle_start, start - 1e-9),
        "during": phase_stats(load.writes, start, end),
        "after": phase_stats(load.writes, end + 1e-9, after_end),
    }
    reads = {
        "idle": phase_stats(load.reads, idle_start, start - 1e-9),
        "during": phase_stats(load.reads, start, end),
        "after": phase_stats(load.reads, end + 1e-9, after_end),
    }
    errors = [{**e, "at_s": e["at"] - start} for e in load.errors]
    for e in errors:
        del e["at"]
    after = (
        await check_after(target, seeded["sample"], load.written) if cli["exit_code"] == 0 else {}
    )
    idle_p99, busy_p99 = writes["idle"]["p99_ms"], writes["during"]["p99_ms"]
    ratio = busy_p99 / idle_p99 if idle_p99 and busy_p99 is not None else None
    ddl_seconds = sum(step["seconds"] for step in cli["steps"])
    rows_per_s = count / cli["wall_s"] if cli["wall_s"] else None
    stall_s = (write_gap["gap_ms"] or 0) / 1000
    targets = {
        "stall_le_1s": stall_s <= TARGET_STALL_S and writes["during"]["longest_ms"] is not None
        and writes["during"]["longest_ms"] <= TARGET_STALL_S * 1000,
        "p99_le_3x_idle": ratio is not None and ratio <= TARGET_P99_RATIO,
        "rows_per_s_ge_100k": (rows_per_s or 0) >= TARGET_PG_ROWS_PER_S
        if kind == "postgres" else None,
    }  # fmt: skip
    section = {
        "kind": kind,
        "label": LABELS[kind],
        "rows": count,
        "heartbeats": HEARTBEATS,
        "seed_seconds": seeded["seconds"],
        "doc_bytes": seeded["doc_bytes"],
        "seed_sample": len(seeded["sample"]),
        "seed_sample_wrong": seeded["sample_wrong"][:20],
        "check": {
            "exit_code": check["exit_code"],
            "output": check["stdout"],
            "estimated_s": _estimate(check["stdout"]),
        },
        "cli": {k: v for k, v in cli.items() if k not in ("started", "ended")},
        "adoption_wall_s": cli["wall_s"],
        "adoption_ddl_s": ddl_seconds,
        "rows_per_s": rows_per_s,
        "rows_per_s_ddl": count / ddl_seconds if ddl_seconds else None,
        "write_stall": {**write_gap, "revisions": gap_revisions},
        "writes": writes,
        "reads": reads,
        "write_rate_idle_per_s": writes["idle"]["count"] / settings.idle,
        "p99_ratio": ratio,
        "missing_reads": load.missing_reads,
        "errors": errors,
        "read_errors_during": reads["during"]["failed"],
        "write_errors_during": writes["during"]["failed"],
        "after": after,
        "server": {
            "before": counters_before,
            "after": counters_after,
            "delta": {k: counters_after[k] - v for k, v in counters_before.items()},
            "sessions": summarize_samples(monitor.samples, start, end),
        },
        "targets": targets,
    }
    _log_section(section)
    return section


def _estimate(text: str) -> float | None:
    match = re.search(r"estimated time: about (\d+(?:\.\d+)?)s", text)
    return float(match.group(1)) if match else None


def _log_section(s: dict[str, Any]) -> None:
    w = s["writes"]
    log(
        f"   adoption {s['adoption_wall_s']:.1f} s wall ({s['adoption_ddl_s']:.1f} s of "
        f"revisions), {_n(s['rows_per_s'])} rows/s; longest write gap "
        f"{_ms(s['write_stall']['gap_ms'])} ms (revisions "
        f"{', '.join(s['write_stall']['revisions'])}); write p99 idle "
        f"{_ms(w['idle']['p99_ms'])} / during {_ms(w['during']['p99_ms'])} ms; "
        f"errors: {s['read_errors_during']} read, {s['write_errors_during']} write"
    )
    for error in s["errors"]:
        log(
            f"   ! {error['op']} at {error['at_s']:+.2f} s, raised after "
            f"{error['seconds'] * 1000:,.0f} ms: {error['error']}"
        )


async def run(settings: Settings, servers: Servers | None = None) -> dict[str, Any]:
    servers = servers or Servers.from_env()
    started = time.perf_counter()
    load_before = os.getloadavg()
    sections = []
    try:
        for kind in settings.kinds:
            try:
                sections.append(await run_kind(kind, servers, settings))
            except Exception as error:
                log(f"   {LABELS[kind]} failed: {env.describe(error)}")
                sections.append({"kind": kind, "label": LABELS[kind], "error": env.describe(error)})
    finally:
        servers.remove_sqlite_dir()
    return {
        "machine": env.machine(),
        "settings": {
            "idle_s": settings.idle,
            "after_s": settings.after,
            "warmup_s": settings.warmup,
            "write_interval_s": settings.interval,
            "read_interval_s": settings.read_interval,
            "readers": settings.readers,
            "sample": settings.sample,
        },
        "targets": {
            "stall_s": TARGET_STALL_S,
            "p99_ratio": TARGET_P99_RATIO,
            "postgres_rows_per_s": TARGET_PG_ROWS_PER_S,
        },
        "sections": sections,
        "elapsed_s": time.perf_counter() - started,
        # The machine is shared: its 1-minute load average at the start and the end.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


# -- report ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("met" if value else "**not met**")


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    st = result["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    ok = [s for s in result["sections"] if "error" not in s]
    lines = [
        "# chicory-backends: adopting Chicory 0.1.0's own tables under live load",
        "",
        f"- date: {machine['date']}",
        f"- machine: nproc {machine['nproc']}, Python {machine['python']}, {machine['platform']}",
        f"- versions: {versions}",
        "- method: Chicory's own `DatabaseBackend.connect()` makes its tables; rows bulk-loaded "
        "in its exact format (COPY on PostgreSQL, multi-row INSERTs elsewhere), sample checked "
        "through Chicory's `get_result`. Live load through Chicory's own backend: 1 writer "
        f"(`store_result`, one every {st['write_interval_s'] * 1000:g} ms, paced) and "
        f"{st['readers']} readers (`get_result` of a random seeded id, one every "
        f"{st['read_interval_s'] * 1000:g} ms each). {st['idle_s']:g} s idle, then "
        f"`chicory-backends migrate --url URL` as a subprocess, then {st['after_s']:g} s. "
        "Adoption = the CLI process, start to exit (interpreter start included); 'revisions' = "
        "the sum of the durations the CLI prints per revision. Stall = the largest gap between "
        "two consecutive successful writes overlapping the adoption. Writes 'during' = those "
        "whose span overlaps the adoption.",
        f"- whole run: {result['elapsed_s']:.0f} s; 1-minute load average at start / end: "
        f"{' / '.join(str(x) for x in result.get('load_average', []))} (a shared machine)",
        "",
        "| backend | rows | adoption wall (s) | revisions (s) | rows/s | longest write gap (ms) "
        "| longest write, failed incl. (ms) | write p50 / p99 idle (ms) "
        "| write p50 / p99 during (ms) | p99 ratio | writes during "
        "| read p99 / longest during (ms) | errors during: read / write "
        "| sample via ours = Chicory's before | live writes read via ours |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | --- "
        "| --- | --- |",
    ]
    for s in ok:
        w, r, a = s["writes"], s["reads"], s["after"]
        sample = f"{a['sample_equal']}/{a['sample']}" if a else "-"
        live = f"{a['live_written'] - a['live_wrong']}/{a['live_written']}" if a else "-"
        ratio = "-" if s["p99_ratio"] is None else f"{s['p99_ratio']:.1f}x"
        lines.append(
            f"| {s['label']} | {s['rows']:,} | {s['adoption_wall_s']:.1f} "
            f"| {s['adoption_ddl_s']:.1f} | {_n(s['rows_per_s'])} "
            f"| {_ms(s['write_stall']['gap_ms'])} | {_ms(w['during']['longest_ms'])} "
            f"| {_ms(w['idle']['p50_ms'])} / {_ms(w['idle']['p99_ms'])} "
            f"| {_ms(w['during']['p50_ms'])} / {_ms(w['during']['p99_ms'])} "
            f"| {ratio} "
            f"| {w['during']['count']} "
            f"| {_ms(r['during']['p99_ms'])} / {_ms(r['during']['longest_ms'])} "
            f"| {s['read_errors_during']} / {s['write_errors_during']} | {sample} | {live} |"
        )
    lines += [
        "",
        f"Targets (issue 20; printed, not asserted): no stall over {TARGET_STALL_S:g} s, write "
        f"p99 during adoption at most {TARGET_P99_RATIO:g}x idle, at least "
        f"{TARGET_PG_ROWS_PER_S:,} rows/s on PostgreSQL.",
        "",
        "| backend | stall <= 1 s | p99 <= 3x idle | >= 100k rows/s |",
        "| --- | --- | --- | --- |",
    ]
    for s in ok:
        t = s["targets"]
        lines.append(
            f"| {s['label']} | {_met(t['stall_le_1s'])} | {_met(t['p99_le_3x_idle'])} "
            f"| {_met(t['rows_per_s_ge_100k'])} |"
        )
    revisions = sorted({step["revision"] for s in ok for step in s["cli"]["steps"]})
    lines += [
        "",
        "Per revision, as the CLI prints it (s), and where the longest write gap fell "
        "(seconds from the CLI's start):",
        "",
        "| backend | " + " | ".join(revisions) + " | longest write gap | `migrate --check` "
        "estimate (s) |",
        "| --- | " + " | ".join("---:" for _ in revisions) + " | --- | ---: |",
    ]
    for s in ok:
        by_rev = {step["revision"]: step["seconds"] for step in s["cli"]["steps"]}
        gap = s["write_stall"]
        where = (
            f"{gap['from_s']:+.2f} .. {gap['to_s']:+.2f} s ({', '.join(gap['revisions'])})"
            if gap["gap_ms"] is not None
            else "-"
        )
        lines.append(
            f"| {s['label']} | "
            + " | ".join(f"{by_rev[r]:.1f}" if r in by_rev else "-" for r in revisions)
            + f" | {where} | {_ms(s['check']['estimated_s'])} |"
        )
    lines += ["", "Server side over the adoption:", ""]
    for s in ok:
        sessions = s["server"]["sessions"]
        delta = ", ".join(f"{k} {v:+,}" for k, v in s["server"]["delta"].items()) or "-"
        lines.append(
            f"- {s['label']}: {delta}; sessions on the database: peak "
            f"{sessions['peak_sessions'] if sessions['peak_sessions'] is not None else '-'}, "
            f"peak waiting on a lock {sessions['peak_waiting'] if sessions['peak_waiting'] is not None else '-'}"  # noqa: E501
        )
        for ddl in sessions["ddl_seen"][:8]:
            lines.append(
                f"  - `{ddl['ddl'].strip()[:110]}` seen {ddl['first_s']:+.1f} .. "
                f"{ddl['last_s']:+.1f} s, {ddl['max_waiting']} waiting"
                + (f" ({'; '.join(ddl['states'])})" if ddl.get("states") else "")
            )
    lines += ["", "Exceptions from Chicory's backend (all phases):", ""]
    any_error = False
    for s in ok:
        for e in s["errors"][:20]:
            any_error = True
            lines.append(
                f"- {s['label']} {e['op']} started {e['at_s']:+.2f} s from the CLI's start, "
                f"raised after {e['seconds'] * 1000:,.0f} ms: `{e['error']}`"
            )
    if not any_error:
        lines.append("- none")
    for s in result["sections"]:
        if "error" in s:
            lines.append(f"- {s['label']}: the run failed: `{s['error']}`")
    lines.append("")
    return "\n".join(lines)


def write(result: dict[str, Any], out_dir: Path) -> str:
    text = markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "adopt.md").write_text(text)
    (out_dir / "adopt.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return text

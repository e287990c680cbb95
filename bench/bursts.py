"""``python -m bench bursts``: store_result in bursts of 32, on long-lived and fresh objects.

A Chicory worker at concurrency 32 sends its backend bursts of up to 32 calls; a short
script (or one process per task) instead opens a backend, stores and closes it. Per
backend, ours / Chicory 0.1.0 / the raw driver (the implementations of bench/impls.py,
with the pools of the steady benchmark) take turns round by round; a round repeats
batches of 32 ``store_result`` calls (new ids) for ``duration`` seconds:

- long-lived, c=32: one connected object; each batch is ``asyncio.gather`` of 32 calls;
- long-lived, c=1: the same 32 calls, one after another;
- fresh, c=32 / c=1: every batch on a new object: create, connect, 32 calls, disconnect.

A figure is the median of the rounds' calls per second. Sessions per 1,000 calls are
summed over the timed rounds, from the servers' counters (bench/sessions.py; on
PostgreSQL per database, and each implementation has its own database) and from the
client-side count of connections (bench/connects.py). Each cell ends by reading back
the last batch stored and checking its values.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench import connects, env, sessions
from bench.env import LABELS, Servers, describe, log
from bench.impls import (
    Impl,
    OursImpl,
    RawMySQL,
    RawPostgres,
    RawRedis,
    RawSQLite,
    chicory_redis,
    chicory_sql,
)

ROLES = ("ours", "chicory", "raw")
ROLE_TITLES = {"ours": "ours", "chicory": "Chicory 0.1.0", "raw": "raw driver"}
BATCH = 32
MODES = (("long", 32), ("long", 1), ("fresh", 32), ("fresh", 1))
MODE_LABELS = {
    ("long", 32): "long-lived, gather(32)",
    ("long", 1): "long-lived, 32 one at a time",
    ("fresh", 32): "fresh per batch, gather(32)",
    ("fresh", 1): "fresh per batch, 32 one at a time",
}


@dataclass
class Settings:
    kinds: list[str] = field(default_factory=lambda: list(env.KINDS))
    runs: int = 3
    duration: float = 0.5
    warmup: float = 0.2
    keep: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(3))


@dataclass
class Subject:
    """One implementation on one backend: how to make one, and where it stores."""

    role: str
    kind: str
    make_impl: Callable[[], Impl]
    database: str | None = None  # its own PostgreSQL / MariaDB database
    sqlite_path: Path | None = None
    redis_db: int | None = None
    key_prefix: str | None = None
    long: Impl | None = None
    made: int = 0

    def make(self, tag: str) -> Impl:
        """A new object with ids of its own (fresh objects must not reuse earlier ids)."""
        self.made += 1
        impl = self.make_impl()
        impl.id_prefix = f"burst-{tag}-{self.role}-{self.made}"
        return impl

    def connects(self, counts: dict[str, int], servers: Servers) -> int:
        name = self.sqlite_path.name if self.sqlite_path else None
        return sessions.backend_connects(
            counts, self.kind, servers, sqlite_file=name, redis_db=self.redis_db
        )


def subjects(kind: str, servers: Servers, tag: str) -> dict[str, Subject]:
    """Ours, Chicory's and the raw driver on ``kind``, each storing in a place of its own."""
    names = {role: f"chicory_bench_burst_{tag}_{role}" for role in ROLES}
    if kind == "redis":
        from chicory_backends.config import RedisBackendConfig

        host, port, db = servers.redis_host, servers.redis_port, servers.redis_db
        ours = RedisBackendConfig(host=host, port=port, db=db, key_prefix=names["ours"])
        chicory_db = servers.redis_chicory_db
        return {
            "ours": Subject("ours", kind, lambda: OursImpl(ours), redis_db=db,
                            key_prefix=names["ours"]),
            "chicory": Subject("chicory", kind, lambda: chicory_redis(host, port, chicory_db),
                               redis_db=chicory_db),
            "raw": Subject("raw", kind, lambda: RawRedis(host, port, db, names["raw"]),
                           redis_db=db, key_prefix=names["raw"]),
        }  # fmt: skip
    if kind == "sqlite":
        from chicory_backends.config import SQLiteBackendConfig

        paths = {role: servers.sqlite_path(names[role]) for role in ROLES}
        config = SQLiteBackendConfig(
            file_path=str(paths["ours"]), busy_timeout_ms=env.SQLITE_BUSY_TIMEOUT_MS
        )
        return {
            "ours": Subject("ours", kind, lambda: OursImpl(config), sqlite_path=paths["ours"]),
            "chicory": Subject("chicory", kind, lambda: chicory_sql(
                "sqlite", f"sqlite+aiosqlite:///{paths['chicory']}",
                pool_size=env.SQLITE_POOL_SIZE, max_overflow=env.SQLITE_MAX_OVERFLOW,
            ), sqlite_path=paths["chicory"]),
            "raw": Subject("raw", kind, lambda: RawSQLite(
                str(paths["raw"]), env.SQLITE_POOL_SIZE + env.SQLITE_MAX_OVERFLOW,
                env.SQLITE_BUSY_TIMEOUT_MS,
            ), sqlite_path=paths["raw"]),
        }  # fmt: skip
    from chicory_backends.config import MySQLBackendConfig, PostgresBackendConfig

    urls = {role: servers.database_url(kind, names[role]) for role in ROLES}
    config_class = PostgresBackendConfig if kind == "postgres" else MySQLBackendConfig
    ours_config = config_class(
        url=SecretStr(env.plain_url(urls["ours"])),
        pool_size=env.POOL_SIZE, max_overflow=env.MAX_OVERFLOW,
    )  # fmt: skip
    size = env.POOL_SIZE + env.MAX_OVERFLOW

    def raw() -> Impl:
        url = urls["raw"]
        if kind == "postgres":
            return RawPostgres(env.plain_url(url.set(drivername="postgresql")), size)
        return RawMySQL(
            host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
            password=url.password, db=url.database or "", max_size=size,
        )  # fmt: skip

    return {
        "ours": Subject("ours", kind, lambda: OursImpl(ours_config), database=names["ours"]),
        "chicory": Subject("chicory", kind, lambda: chicory_sql(
            kind, env.plain_url(urls["chicory"]),
            pool_size=env.POOL_SIZE, max_overflow=env.MAX_OVERFLOW,
        ), database=names["chicory"]),
        "raw": Subject("raw", kind, raw, database=names["raw"]),
    }  # fmt: skip


async def prepare(subject: Subject, servers: Servers) -> None:
    """Ours and raw on a freshly migrated database; Chicory's creates its tables itself."""
    if subject.kind == "sqlite" and subject.sqlite_path is not None:
        if subject.role == "chicory":
            env.remove_sqlite_files(subject.sqlite_path)
        else:
            await env.migrate_database(servers, "sqlite", subject.sqlite_path.stem)
    elif subject.database is not None:
        if subject.role == "chicory":
            await env.recreate_database(servers, subject.kind, subject.database)
        else:
            await env.migrate_database(servers, subject.kind, subject.database)


async def remove(subject: Subject, servers: Servers, tag: str) -> None:
    if subject.database is not None:
        await env.recreate_database(servers, subject.kind, subject.database, create=False)
    elif subject.sqlite_path is not None:
        env.remove_sqlite_files(subject.sqlite_path)
    elif subject.kind == "redis":
        from redis.asyncio import Redis

        client = Redis(host=servers.redis_host, port=servers.redis_port, db=subject.redis_db or 0)
        try:
            if subject.key_prefix:
                patterns = [f"{subject.key_prefix}:*", f"{{{subject.key_prefix}:*"]
            else:  # Chicory's fixed key names, with our ids in them
                patterns = [f"chicory:{k}:burst-{tag}-*" for k in ("state", "result")]
            for pattern in patterns:
                keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()


# -- rounds ---------------------------------------------------------------------------------


async def batch(impl: Impl, concurrency: int, first: int) -> list[tuple[str, int]]:
    """32 store_result calls with new ids: gathered (c=32) or one at a time (c=1)."""
    stored = [(impl.new_id(), first + n) for n in range(BATCH)]
    if concurrency == 1:
        for task_id, value in stored:
            await impl.store(task_id, value)
    else:
        await asyncio.gather(*(impl.store(task_id, value) for task_id, value in stored))
    return stored


@dataclass
class Round:
    calls: int
    seconds: float
    last: list[tuple[str, int]]


async def one_round(
    subject: Subject, life: str, concurrency: int, duration: float, tag: str
) -> Round:
    started = time.perf_counter()
    stop = started + duration
    calls = 0
    last: list[tuple[str, int]] = []
    while True:
        if life == "long":
            assert subject.long is not None
            last = await batch(subject.long, concurrency, calls)
        else:
            impl = subject.make(tag)
            await impl.open()
            try:
                last = await batch(impl, concurrency, calls)
            finally:
                await impl.close()
        calls += BATCH
        if time.perf_counter() >= stop:
            return Round(calls, time.perf_counter() - started, last)


async def check(subject: Subject, stored: list[tuple[str, int]]) -> None:
    """The last batch reads back through the long-lived object (same storage)."""
    assert subject.long is not None
    for task_id, value in stored:
        got = await subject.long.get(task_id)
        if got != {"value": value}:
            raise RuntimeError(f"{task_id}: stored {{'value': {value}}}, read {got!r}")


# -- one backend ------------------------------------------------------------------------------


def _global_counter(kind: str) -> bool:
    """MariaDB's and Redis's counters count synchronously: readable round by round."""
    return kind in ("mysql", "redis")


async def run_kind(
    kind: str, servers: Servers, settings: Settings, counters: sessions.ServerCounters
) -> dict[str, Any]:
    log(f"== bursts {LABELS[kind]}")
    section: dict[str, Any] = {"kind": kind, "label": LABELS[kind], "cells": [], "errors": {}}
    chosen = subjects(kind, servers, settings.tag)
    live: dict[str, Subject] = {}
    try:
        for role, subject in chosen.items():
            try:
                await prepare(subject, servers)
                subject.long = subject.make(settings.tag)
                await subject.long.open()
                await check(subject, await batch(subject.long, 1, 0))
                live[role] = subject
            except Exception as error:
                section["errors"][role] = describe(error)
                log(f"   {role}: {section['errors'][role]}")
        for life, concurrency in MODES:
            section["cells"].extend(
                await _run_cell(kind, life, concurrency, live, servers, settings, counters)
            )
    finally:
        for subject in chosen.values():
            if subject.long is not None:
                try:
                    await subject.long.close()
                except Exception as error:
                    log(f"   closing {subject.role}: {describe(error)}")
            if not settings.keep:
                try:
                    await remove(subject, servers, settings.tag)
                except Exception as error:
                    log(f"   removing {subject.role}'s storage: {describe(error)}")
    return section


async def _run_cell(
    kind: str, life: str, concurrency: int, live: dict[str, Subject], servers: Servers,
    settings: Settings, counters: sessions.ServerCounters,
) -> list[dict[str, Any]]:  # fmt: skip
    cells: dict[str, dict[str, Any]] = {
        role: {
            "kind": kind, "mode": life, "concurrency": concurrency, "role": role, "runs": [],
            "calls": 0, "sessions_server": None, "sessions_client": 0, "error": None,
        }
        for role in ROLES
    }  # fmt: skip
    for role in ROLES:
        if role not in live:
            cells[role]["error"] = "not available"
    started = time.perf_counter()
    pg_before: dict[str, int | None] = {}
    last: dict[str, list[tuple[str, int]]] = {}
    for number in range(settings.runs + 1):  # round 0 warms up and is not counted
        if number == 1 and kind == "postgres":
            for role, subject in live.items():
                pg_before[role] = await counters.settled_postgres(subject.database or "")
        for role, subject in live.items():
            cell = cells[role]
            if cell["error"]:
                continue
            duration = settings.duration if number else settings.warmup
            server_before = await counters.read(kind) if _global_counter(kind) else None
            client_before = connects.snapshot()
            try:
                done = await one_round(subject, life, concurrency, duration, settings.tag)
            except Exception as error:
                cell["error"] = f"error: {describe(error)}"
                log(f"   {MODE_LABELS[(life, concurrency)]} {role}: {cell['error']}")
                continue
            if not number:
                continue
            last[role] = done.last
            cell["runs"].append(done.calls / done.seconds)
            cell["calls"] += done.calls
            cell["sessions_client"] += subject.connects(
                connects.difference(connects.snapshot(), client_before), servers
            )
            if _global_counter(kind):
                counted = sessions.delta(await counters.read(kind), server_before)
                if counted is not None:
                    cell["sessions_server"] = (cell["sessions_server"] or 0) + counted
    for role, subject in live.items():
        cell = cells[role]
        if kind == "postgres" and role in pg_before:
            after = await counters.settled_postgres(subject.database or "")
            cell["sessions_server"] = sessions.delta(after, pg_before[role])
        if role in last and not cell["error"]:
            try:
                await check(subject, last[role])
            except Exception as error:
                cell["error"] = f"wrong read-back: {describe(error)}"
        cell["median"] = statistics.median(cell["runs"]) if cell["runs"] else None
        for key in ("server", "client"):
            count = cell[f"sessions_{key}"]
            cell[f"per_1k_{key}"] = (
                1000 * count / cell["calls"] if cell["calls"] and count is not None else None
            )
    medians = "  ".join(
        f"{role} {cells[role]['median']:,.0f}" for role in ROLES if cells[role].get("median")
    )
    log(
        f"   {MODE_LABELS[(life, concurrency)]:<34} {medians}  "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return list(cells.values())


async def run(settings: Settings, servers: Servers | None = None) -> dict[str, Any]:
    """Every backend of ``settings``, one after another."""
    with connects.counting():
        return await _run(settings, servers or Servers.from_env())


async def _run(settings: Settings, servers: Servers) -> dict[str, Any]:
    counters = sessions.ServerCounters(servers)
    await counters.open(set(settings.kinds))
    started = time.perf_counter()
    sections: list[dict[str, Any]] = []
    try:
        for kind in settings.kinds:
            try:
                sections.append(await run_kind(kind, servers, settings, counters))
            except Exception as error:
                log(f"   {LABELS[kind]}: {describe(error)}")
                sections.append({
                    "kind": kind, "label": LABELS[kind], "cells": [],
                    "errors": dict.fromkeys(ROLES, f"not available: {describe(error)}"),
                })  # fmt: skip
    finally:
        await counters.close()
        servers.remove_sqlite_dir()
    return {
        "machine": env.machine(),
        "settings": {
            "backends": settings.kinds,
            "runs": settings.runs,
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "batch": BATCH,
            "pool": {
                "server": f"pool_size={env.POOL_SIZE}, max_overflow={env.MAX_OVERFLOW}",
                "sqlite": f"pool_size={env.SQLITE_POOL_SIZE}, "
                f"max_overflow={env.SQLITE_MAX_OVERFLOW}",
            },
        },
        "counters": sessions.COUNTERS,
        "sections": sections,
        "elapsed_s": time.perf_counter() - started,
    }


# -- the report ---------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(top: float | None, bottom: float | None) -> str:
    return "-" if not top or not bottom else f"{top / bottom:.2f}x"


def _per_1k(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 10 or float(value).is_integer() else f"{value:.1f}"


def _text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell.get("median") is not None and not cell["error"]:
        return _num(cell["median"])
    error = cell["error"] or ""
    return "n/a" if error.startswith("not available") else ("error" if error else "-")


def table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| backend | mode | ours | Chicory 0.1.0 | raw driver | ours/Chicory | ours/raw "
        "| sessions per 1k calls (server): ours / Chicory / raw "
        "| connects per 1k calls (client-side): ours / Chicory / raw |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for section in report["sections"]:
        cells = {(c["mode"], c["concurrency"], c["role"]): c for c in section["cells"]}
        for life, concurrency in MODES:
            row = [cells.get((life, concurrency, role)) for role in ROLES]
            if not any(row):
                continue
            ours, chicory, raw = (c.get("median") if c else None for c in row)
            server = " / ".join(_per_1k(c.get("per_1k_server")) if c else "-" for c in row)
            client = " / ".join(_per_1k(c.get("per_1k_client")) if c else "-" for c in row)
            lines.append(
                f"| {section['label']} | {MODE_LABELS[(life, concurrency)]} "
                f"| {' | '.join(_text(c) for c in row)} | {_ratio(ours, chicory)} "
                f"| {_ratio(ours, raw)} | {server} | {client} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [
        "# chicory-backends bursts: store_result 32 at a time",
        "",
        f"- date: {machine['date']}; nproc {machine['nproc']} (client and servers share "
        f"them); Python {machine['python']}",
        f"- a round repeats batches of {settings['batch']} store_result calls (new ids) for "
        f"{settings['duration_s']:g} s; ours / Chicory / raw alternate round by round, "
        f"{settings['runs']} timed rounds after a {settings['warmup_s']:g} s warm-up; "
        "figures are the median calls/s. long-lived: one connected object for the whole "
        "run; fresh: create, connect, the batch, disconnect, every batch. Pools as in the "
        f"steady benchmark: {settings['pool']['server']} (SQLite "
        f"{settings['pool']['sqlite']}) for all three.",
        "- sessions per 1k calls over the timed rounds. Server counters: "
        + "; ".join(f"{LABELS[k]}: {v}" for k, v in report["counters"].items())
        + ". Client-side: connections this process opened to the backend, counted at the "
        "driver's connect call (bench/connects.py).",
        f"- whole run: {report['elapsed_s']:.0f} s",
        "",
        *table(report),
        "",
    ]
    problems = [
        f"- {s['label']} {ROLE_TITLES[c['role']]} {MODE_LABELS[(c['mode'], c['concurrency'])]}: "
        f"{c['error']}"
        for s in report["sections"]
        for c in s["cells"]
        if c["error"] and c["error"] != "not available"
    ]
    problems += [
        f"- {s['label']} {ROLE_TITLES[role]}: {why}"
        for s in report["sections"]
        for role, why in s["errors"].items()
    ]
    if problems:
        lines += ["## Not measured", "", *problems, ""]
    return "\n".join(lines)


def write(report: dict[str, Any], out_dir: Path, stem: str = "bursts") -> str:
    import json

    text = markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return text

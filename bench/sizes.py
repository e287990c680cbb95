"""``python -m bench sizes``: results of 100 B to 10 MB, written and read, side by side.

Per backend and result size, ours (chicory_backends' DatabaseBackend / RedisBackend),
Chicory 0.1.0's own backend and the raw driver (bench/impls.py) take turns round by
round (the order rotates each round), each in a storage place of its own:

- write phase: tasks for ``duration`` seconds (at least one task, or one batch), each
  ``set_state(STARTED)`` then ``store_result(SUCCESS)`` with the result, as Chicory's
  worker makes them; one caller (c=1: one task after another) or 32 in flight (c=32:
  ``asyncio.gather`` of 32 tasks, batch after batch);
- read phase: ``get_result`` of the tasks just written, cycling over them, for
  ``duration`` seconds at the same concurrency;
- untimed: the first round checks a read-back equals the result; on Redis it takes the
  memory a finished task leaves; then the rows or keys are deleted (so 10 MB rounds do
  not pile up).

A figure is the median over the rounds; ms per task is the phase's wall time over its
tasks (at c=32 the inverse of the throughput, not one task's latency). Client CPU is
``time.process_time`` of this process over the phase, per task or read. On Redis the
server's time comes from ``INFO commandstats`` deltas over each phase; commands a script
or a MULTI/EXEC ran (counted by Redis as well, inside the script's or EXEC's time) are
told from the client's own by counting, client-side, the commands this process sends.
Redis runs on a redis-server of the bench's own (persistence off, like the shared one),
so no other client's commands land in the counters; ``--redis-server shared`` uses the
server of bench/env.py (databases 10 and 9 by default) instead.

The raw driver writes one hand-written statement (SQL: our schema) or one SET (Redis: a
document with the value as nested JSON) per call, its JSON encoded by orjson and decoded
by the stdlib, as ours does: what is left between ours and raw is our own code.

The result (``payload``): compact JSON of ``{"items": [...], "note": "..."}``, a list of
small records (an int id, a SKU string, two floats, an int, a bool),
as many as fit, and the note filling the rest, so its compact JSON is exactly the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from bench import env
from bench.bursts import Subject, prepare
from bench.env import LABELS, Servers, describe, log
from bench.impls import (
    RESULT_TTL,
    Impl,
    OursImpl,
    RawMySQL,
    RawPostgres,
    RawRedis,
    RawSQLite,
    _BackendImpl,
    _sqlite_time,
    chicory_redis,
    chicory_sql,
)

SIZES = (100, 10_000, 100_000, 1_000_000, 10_000_000)
BIG = 5_000_000  # sizes from here on run ``big_rounds`` rounds and no warm-up round
WARMUP_MAX = 100_000  # sizes up to here get a warm-up round (larger follow a warm pool)
CONCURRENCY = (1, 32)
ROLES = ("ours", "chicory", "raw")
ROLE_TITLES = {"ours": "ours", "chicory": "Chicory 0.1.0", "raw": "raw driver"}
OPS = ("write", "read")
# Issue 21's targets: ours / Chicory at least this, for the write sequence and get_result.
TARGETS = {"redis": 1.5, "postgres": 2.0, "mysql": 2.0, "sqlite": 2.0}
SCRIPT_GROWTH_TARGET = 2.0  # Redis script server time at 1 MB within 2x of 100 B
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
CONTAINERS = SCRIPT_COMMANDS | {"exec"}  # their time includes the commands they ran
# Our own Redis databases (shared mode) and 7-character key prefixes (the length of
# Chicory's fixed "chicory"), so that key names weigh the same in MEMORY USAGE.
REDIS_DB = int(os.environ.get("BENCH_SIZES_REDIS_DB", "10"))
REDIS_CHICORY_DB = int(os.environ.get("BENCH_SIZES_REDIS_CHICORY_DB", "9"))


@dataclass
class Settings:
    kinds: list[str] = field(default_factory=lambda: list(env.KINDS))
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    concurrency: list[int] = field(default_factory=lambda: list(CONCURRENCY))
    rounds: int = 3
    big_rounds: int = 3  # one caller, from BIG on
    big_batch_rounds: int = 1  # 32 in flight from BIG on: each phase moves 32 x 10 MB
    duration: float = 0.15
    index_tasks: int = 1000
    redis_server: str = "private"  # "private": a redis-server of our own; "shared"
    keep: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def rounds_for(self, size: int, concurrency: int) -> int:
        if size < BIG:
            return self.rounds
        return min(self.rounds, self.big_rounds if concurrency == 1 else self.big_batch_rounds)


# -- the result -------------------------------------------------------------------------------


def _record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "sku": f"S-{i}",
        "price": round(0.99 + (i % 5000) * 0.37, 2),
        "qty": i % 97,
        "active": i % 3 != 0,
        "ratio": round((i % 997) / 7, 6),
    }


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def payload(size: int) -> dict[str, Any]:
    """The result whose compact JSON is exactly ``size`` bytes (ASCII)."""
    base = len(encode({"items": [], "note": ""}))
    if size < base:
        raise ValueError(f"a result of {size} bytes is too small (at least {base})")
    items: list[dict[str, Any]] = []
    used = base
    while True:
        record = _record(len(items) + 1)
        extra = len(encode(record)) + (1 if items else 0)
        if used + extra > size:
            break
        items.append(record)
        used += extra
    words = "lorem ipsum dolor sit amet "
    note = (words * (1 + (size - used) // len(words)))[: size - used]
    value = {"items": items, "note": note}
    assert len(encode(value)) == size
    return value


def parse_size(text: str) -> int:
    """100, 10k, 10kb, 1m, 1mb, 10000000: bytes (k = 1000)."""
    raw = text.strip().lower().removesuffix("b")
    for suffix, factor in (("k", 1000), ("m", 1_000_000)):
        if raw.endswith(suffix):
            return int(float(raw[: -len(suffix)]) * factor)
    return int(raw)


def size_label(size: int) -> str:
    for factor, unit in ((1_000_000, "MB"), (1000, "KB")):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


# -- the three implementations, storing a given value -----------------------------------------


def _json(value: Any) -> str:
    """The raw driver's JSON: orjson, as ours encodes (a dependency of the package)."""
    return orjson.dumps(value).decode()


class SizedRawPostgres(RawPostgres):
    async def store_value(self, task_id: str, value: Any) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(
            self._store, task_id, "SUCCESS", _json(value), None, None, now, now, None
        )


class SizedRawMySQL(RawMySQL):
    async def store_value(self, task_id: str, value: Any) -> None:
        now = self._now()
        args = (task_id, "SUCCESS", _json(value), None, None, now, now, None)
        async with self._cursor() as cur:
            await cur.execute(self._store, args)


class SizedRawSQLite(RawSQLite):
    async def store_value(self, task_id: str, value: Any) -> None:
        now = _sqlite_time(datetime.now(UTC))
        args = (task_id, "SUCCESS", _json(value), None, None, now, now, None)
        async with self._conn() as conn:
            await conn.execute(self._store, args)


class SizedRawRedis(RawRedis):
    """One SET .. EX of a document holding the value as nested JSON (encoded once, by
    orjson), one GET and one json.loads: the least a document with the state and the
    value costs."""

    async def set_started(self, task_id: str) -> None:
        doc = '{"state":"STARTED","result":null,"error":null,"traceback":null}'
        await self._client.set(self._key(task_id), doc, ex=RESULT_TTL)

    async def store_value(self, task_id: str, value: Any) -> None:
        doc = {"state": "SUCCESS", "result": value, "error": None, "traceback": None}
        await self._client.set(self._key(task_id), orjson.dumps(doc), ex=RESULT_TTL)

    async def get(self, task_id: str) -> Any:
        raw = await self._client.get(self._key(task_id))
        return None if raw is None else json.loads(raw)["result"]


_RAW_TYPES = (SizedRawPostgres, SizedRawMySQL, SizedRawSQLite, SizedRawRedis)


async def store_value(impl: Impl, task_id: str, value: Any) -> None:
    """store_result(task_id, SUCCESS, value) through the implementation."""
    if isinstance(impl, _BackendImpl):
        result = impl._task_result(task_id=task_id, state=impl._success, result=value)
        await impl.backend.store_result(task_id, result)
    elif isinstance(impl, _RAW_TYPES):
        await impl.store_value(task_id, value)
    else:
        raise TypeError(f"{type(impl).__name__} cannot store a given value")


async def sequence(impl: Impl, task_id: str, value: Any) -> None:
    """A task's two writes as Chicory's worker makes them."""
    await impl.set_started(task_id)
    await store_value(impl, task_id, value)


async def gathered(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """All of ``calls`` at once; the first error is raised once every call has ended."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


# -- where each implementation stores -----------------------------------------------------------


def subjects(kind: str, servers: Servers, tag: str) -> dict[str, Subject]:
    """Ours, Chicory's and the raw driver on ``kind``, each storing in a place of its own."""
    names = {role: f"chicory_bench_sizes_{tag}_{role}" for role in ROLES}
    if kind == "redis":
        from chicory_backends.config import RedisBackendConfig

        host, port, db = servers.redis_host, servers.redis_port, servers.redis_db
        prefixes = {role: f"{role[0]}{tag}" for role in ROLES}  # 7 characters
        ours = RedisBackendConfig(host=host, port=port, db=db, key_prefix=prefixes["ours"])
        chicory_db = servers.redis_chicory_db
        return {
            "ours": Subject("ours", kind, lambda: OursImpl(ours), redis_db=db,
                            key_prefix=prefixes["ours"]),
            "chicory": Subject("chicory", kind, lambda: chicory_redis(host, port, chicory_db),
                               redis_db=chicory_db, key_prefix="chicory"),
            "raw": Subject("raw", kind, lambda: SizedRawRedis(host, port, db, prefixes["raw"]),
                           redis_db=db, key_prefix=prefixes["raw"]),
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
            "raw": Subject("raw", kind, lambda: SizedRawSQLite(
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
            return SizedRawPostgres(env.plain_url(url.set(drivername="postgresql")), size)
        return SizedRawMySQL(
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


def _task_keys(subject: Subject, task_id: str) -> list[str]:
    """Every key a finished task of this implementation may leave (the index aside)."""
    prefix = subject.key_prefix or "chicory"
    keys = [f"{prefix}:result:{task_id}"]
    if subject.role != "raw":  # Chicory's state key; ours reads it and deletes it too
        keys.append(f"{prefix}:state:{task_id}")
    return keys


class Storage:
    """Side connections to each implementation's storage: deleting what a round wrote,
    and on Redis the commandstats and MEMORY USAGE."""

    def __init__(self, kind: str, servers: Servers) -> None:
        self.kind = kind
        self.servers = servers
        self._engines: dict[str, Any] = {}
        self._clients: dict[int, Any] = {}

    def _engine(self, subject: Subject) -> Any:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        if subject.role not in self._engines:
            if subject.sqlite_path is not None:
                url: Any = f"sqlite+aiosqlite:///{subject.sqlite_path}"
            else:
                url = self.servers.database_url(self.kind, subject.database or "")
            self._engines[subject.role] = create_async_engine(url, poolclass=NullPool)
        return self._engines[subject.role]

    def redis(self, db: int) -> Any:
        from redis.asyncio import Redis

        if db not in self._clients:
            self._clients[db] = Redis(
                host=self.servers.redis_host, port=self.servers.redis_port, db=db
            )
        return self._clients[db]

    async def clear(self, subject: Subject, task_ids: Sequence[str]) -> None:
        """Deletes what ``task_ids`` left (SQL: every row; the database is the subject's)."""
        if self.kind != "redis":
            from sqlalchemy import text

            async with self._engine(subject).begin() as connection:
                await connection.execute(text("DELETE FROM chicory_task_results"))
            return
        client = self.redis(subject.redis_db or 0)
        keys = [key for task_id in task_ids for key in _task_keys(subject, task_id)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])

    async def memory(self, subject: Subject, task_id: str) -> int:
        """MEMORY USAGE (exact: SAMPLES 0) of the keys the task left."""
        client = self.redis(subject.redis_db or 0)
        total = 0
        for key in _task_keys(subject, task_id):
            used = await client.memory_usage(key, samples=0)
            total += int(used or 0)
        return total

    async def key_memory(self, db: int, key: str) -> int:
        return int(await self.redis(db).memory_usage(key, samples=0) or 0)

    async def commandstats(self) -> dict[str, tuple[int, int]]:
        """Per command (Redis's name, lower case): calls and usec so far."""
        info = await self.redis(0).info("commandstats")
        return {
            name.removeprefix("cmdstat_").lower(): (int(stat["calls"]), int(stat["usec"]))
            for name, stat in info.items()
        }

    async def remove_prefix(self, db: int, prefix: str) -> None:
        client = self.redis(db)
        for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.dispose()
        for client in self._clients.values():
            await client.aclose()
        self._engines.clear()
        self._clients.clear()


async def remove(subject: Subject, storage: Storage, servers: Servers) -> None:
    """The subject's database, SQLite file or Redis keys, gone."""
    if subject.database is not None:
        await env.recreate_database(servers, subject.kind, subject.database, create=False)
    elif subject.sqlite_path is not None:
        env.remove_sqlite_files(subject.sqlite_path)
    elif subject.kind == "redis" and subject.key_prefix and subject.role != "chicory":
        await storage.remove_prefix(subject.redis_db or 0, subject.key_prefix)
    # Chicory's keys ("chicory:*", shared by everyone) are deleted id by id as written.


# -- Redis: the commands this process sends ----------------------------------------------------


class CommandCounter:
    """Commands this process sends to Redis, by Redis's commandstats name. Commands
    queued between MULTI and EXEC run inside EXEC and are counted apart (``queued``)."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.queued: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._original: Any = None

    @staticmethod
    def name(args: Sequence[Any]) -> str:
        words = [w.decode() if isinstance(w, bytes) else str(w) for w in args[:2]]
        head = words[0].split()
        first = head[0].lower()
        if first in ("script", "memory", "client", "config", "object", "command"):
            second = head[1] if len(head) > 1 else (words[1] if len(words) > 1 else "")
            return f"{first}|{second.lower()}"
        return first

    @contextlib.contextmanager
    def installed(self) -> Iterator[CommandCounter]:
        from redis.asyncio.connection import AbstractConnection

        original = AbstractConnection.pack_command
        counter = self

        def pack_command(connection: Any, *args: Any) -> Any:
            name = counter.name(args)
            with counter._lock:
                if name == "multi":
                    connection._bench_in_multi = True
                    counter.sent[name] += 1
                elif name in ("exec", "discard"):
                    connection._bench_in_multi = False
                    counter.sent[name] += 1
                elif getattr(connection, "_bench_in_multi", False):
                    counter.queued[name] += 1
                else:
                    counter.sent[name] += 1
            return original(connection, *args)

        AbstractConnection.pack_command = pack_command  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            AbstractConnection.pack_command = original  # type: ignore[method-assign]

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.sent)


def server_time(
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    sent: Counter[str],
    ops: int,
) -> dict[str, Any]:
    """The phase's commandstats deltas: per command calls, usec, µs per call and how many
    this process sent itself; the server µs per op of the commands sent (a script's or
    EXEC's own commands are inside its time and not added again); foreign calls (of a
    script or EXEC not sent from here: another client's)."""
    commands: dict[str, dict[str, Any]] = {}
    own_usec = 0.0
    foreign = 0
    for name, (calls, usec) in after.items():
        base_calls, base_usec = before.get(name, (0, 0))
        calls, usec = calls - base_calls, usec - base_usec
        if calls <= 0 or name in ("info", "memory|usage"):
            continue
        mine = min(sent.get(name, 0), calls)
        commands[name] = {
            "calls": calls,
            "usec": usec,
            "usec_per_call": usec / calls,
            "sent": sent.get(name, 0),
            "calls_per_op": calls / ops if ops else None,
        }
        own_usec += usec * mine / calls
        if name in CONTAINERS:
            foreign += calls - mine
    main = max(
        (n for n, c in commands.items() if c["sent"]),
        key=lambda n: commands[n]["usec"],
        default=None,
    )
    return {
        "commands": commands,
        "server_us_per_op": own_usec / ops if ops else None,
        "main": main,
        "main_usec_per_call": commands[main]["usec_per_call"] if main else None,
        "foreign_calls": foreign,
    }


# -- rounds ---------------------------------------------------------------------------------


@dataclass
class Phase:
    ops: int
    seconds: float
    cpu: float
    server: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "seconds": self.seconds,
            "ms_per_op": 1000 * self.seconds / self.ops,
            "ops_per_s": self.ops / self.seconds,
            "cpu_us_per_op": 1e6 * self.cpu / self.ops,
            "server": None
            if self.server is None
            else {k: v for k, v in self.server.items() if k != "commands"},
        }


def new_id(tag: str, role: str) -> str:
    """A uuid4-shaped id (36 characters, like Chicory's) that names the run and the role."""
    text = str(uuid.uuid4())
    return f"{tag}{role[0]}{text[7:]}"


async def timed(
    body: Callable[[], Awaitable[int]],
    duration: float,
    storage: Storage | None,
    counter: CommandCounter | None,
) -> Phase:
    """``body`` (which returns how many ops it did) repeated for ``duration`` seconds
    (at least once), with wall time, CPU and on Redis the server's commandstats."""
    gc.collect()
    before = await storage.commandstats() if storage is not None else None
    sent_before = counter.snapshot() if counter is not None else Counter[str]()
    cpu = time.process_time()
    started = time.perf_counter()
    stop = started + duration
    ops = 0
    while True:
        ops += await body()
        if time.perf_counter() >= stop:
            break
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    phase = Phase(ops, seconds, cpu)
    if storage is not None and before is not None and counter is not None:
        after = await storage.commandstats()
        sent = counter.snapshot()
        sent.subtract(sent_before)
        phase.server = server_time(before, after, sent, ops)
    return phase


async def write_phase(
    impl: Impl, value: Any, concurrency: int, duration: float, tag: str, role: str,
    written: list[str], storage: Storage | None, counter: CommandCounter | None,
) -> Phase:  # fmt: skip
    async def body() -> int:
        ids = [new_id(tag, role) for _ in range(concurrency)]
        written.extend(ids)  # before the writes: a failed round still cleans up
        if concurrency == 1:
            await sequence(impl, ids[0], value)
        else:
            await gathered([sequence(impl, task_id, value) for task_id in ids])
        return concurrency

    return await timed(body, duration, storage, counter)


async def read_phase(
    impl: Impl, task_ids: Sequence[str], concurrency: int, duration: float,
    storage: Storage | None, counter: CommandCounter | None,
) -> Phase:  # fmt: skip
    position = 0

    async def body() -> int:
        nonlocal position
        chosen = [task_ids[(position + n) % len(task_ids)] for n in range(concurrency)]
        position += concurrency
        if concurrency == 1:
            found = [await impl.get(chosen[0])]
        else:
            found = await gathered([impl.get(task_id) for task_id in chosen])
        if any(value is None for value in found):
            raise RuntimeError("get_result found no result for a task just written")
        return concurrency

    return await timed(body, duration, storage, counter)


# -- one backend ------------------------------------------------------------------------------


def _new_cell(kind: str, size: int, concurrency: int, role: str) -> dict[str, Any]:
    return {
        "kind": kind, "size": size, "concurrency": concurrency, "role": role,
        "write": [], "read": [], "error": None, "memory_bytes": None,
    }  # fmt: skip


def _median(phases: list[dict[str, Any]], key: str) -> float | None:
    values = [p[key] for p in phases if p.get(key) is not None]
    return statistics.median(values) if values else None


def add_commands(cell: dict[str, Any], op: str, phase: Phase) -> None:
    """The phase's Redis commands summed into the cell's (per round they would be bulky)."""
    if phase.server is None:
        return
    total = cell.setdefault(f"{op}_commands", {"ops": 0, "commands": {}})
    total["ops"] += phase.ops
    for name, stat in phase.server["commands"].items():
        mine = total["commands"].setdefault(name, {"calls": 0, "usec": 0, "sent": 0})
        for key in ("calls", "usec", "sent"):
            mine[key] += stat[key]
        mine["usec_per_call"] = mine["usec"] / mine["calls"]
        mine["calls_per_op"] = mine["calls"] / total["ops"]


def summarize(cell: dict[str, Any]) -> None:
    """Medians of the rounds, per phase."""
    for op in OPS:
        phases = cell[op]
        server = [p["server"] for p in phases if p.get("server")]
        cell[f"{op}_median"] = {
            "ms_per_op": _median(phases, "ms_per_op"),
            "ops_per_s": _median(phases, "ops_per_s"),
            "cpu_us_per_op": _median(phases, "cpu_us_per_op"),
            "server_us_per_op": _median(server, "server_us_per_op"),
            "main": server[-1]["main"] if server else None,
            "main_usec_per_call": _median(server, "main_usec_per_call"),
            "foreign_calls": sum(s["foreign_calls"] for s in server),
        }
        if op == "write" and cell[f"{op}_median"]["ops_per_s"] is not None:
            cell[f"{op}_median"]["calls_per_s"] = 2 * cell[f"{op}_median"]["ops_per_s"]


async def index_share(
    subject: Subject, impl: Impl, storage: Storage, tag: str, tasks: int
) -> dict[str, Any]:
    """MEMORY USAGE growth of ours' history index per finished task, over ``tasks``
    tasks after as many (at least 256) to warm it past the small-set encoding."""
    key = f"{subject.key_prefix}:history"
    db = subject.redis_db or 0
    written: list[str] = []
    value = {"value": 1}

    async def tasks_of(count: int) -> None:
        for start in range(0, count, 32):
            ids = [new_id(tag, "ours") for _ in range(min(32, count - start))]
            written.extend(ids)
            await gathered([sequence(impl, task_id, value) for task_id in ids])

    try:
        await tasks_of(max(tasks, 256))  # past Redis's small sorted-set encoding (128)
        before = await storage.key_memory(db, key)
        await tasks_of(tasks)
        after = await storage.key_memory(db, key)
        entries = int(await storage.redis(db).zcard(key))
    finally:
        await storage.clear(subject, written)
    return {
        "tasks": tasks,
        "before_bytes": before,
        "after_bytes": after,
        "entries": entries,
        "bytes_per_task": (after - before) / tasks,
    }


async def run_kind(
    kind: str, servers: Servers, settings: Settings, counter: CommandCounter
) -> dict[str, Any]:
    log(f"== sizes {LABELS[kind]}")
    section: dict[str, Any] = {"kind": kind, "label": LABELS[kind], "cells": [], "errors": {}}
    chosen = subjects(kind, servers, settings.tag)
    storage = Storage(kind, servers)
    impls: dict[str, Impl] = {}
    redis = kind == "redis"
    try:
        for role, subject in chosen.items():
            try:
                await prepare(subject, servers)
                impl = subject.make_impl()
                await impl.open()
                impls[role] = impl
                section.setdefault("descriptions", {})[role] = impl.description
            except Exception as error:
                section["errors"][role] = describe(error)
                log(f"   {role}: {section['errors'][role]}")
        if redis and "ours" in impls:
            try:
                section["index"] = await index_share(
                    chosen["ours"], impls["ours"], storage, settings.tag, settings.index_tasks
                )
                log(f"   history index: {section['index']['bytes_per_task']:.0f} B per task")
            except Exception as error:
                section["index"] = {"error": describe(error)}
                log(f"   history index: {describe(error)}")
        failed: dict[str, int] = {}  # role -> the smallest size it failed at (larger too)
        for concurrency in settings.concurrency:
            for size in settings.sizes:
                cells = await _run_cell(
                    kind, size, concurrency, chosen, impls, storage, settings,
                    counter if redis else None, failed,
                )  # fmt: skip
                section["cells"].extend(cells)
    finally:
        for role, impl in impls.items():
            try:
                await impl.close()
            except Exception as error:
                log(f"   closing {role}: {describe(error)}")
        if not settings.keep:
            for subject in chosen.values():
                try:
                    await remove(subject, storage, servers)
                except Exception as error:
                    log(f"   removing {subject.role}'s storage: {describe(error)}")
        await storage.close()
    return section


async def _run_cell(
    kind: str, size: int, concurrency: int, chosen: dict[str, Subject],
    impls: dict[str, Impl], storage: Storage, settings: Settings,
    counter: CommandCounter | None, failed: dict[str, int],
) -> list[dict[str, Any]]:  # fmt: skip
    value = payload(size)
    cells = {role: _new_cell(kind, size, concurrency, role) for role in ROLES}
    for role in ROLES:
        if role not in impls:
            cells[role]["error"] = "not available"
        elif role in failed and size > failed[role]:
            cells[role]["error"] = f"fails: not tried, as it failed at {size_label(failed[role])}"
    started = time.perf_counter()
    rounds = settings.rounds_for(size, concurrency)
    warmup = size <= WARMUP_MAX
    redis_side = storage if counter is not None else None
    for number in range(0 if warmup else 1, rounds + 1):  # round 0 warms up, not counted
        live = [r for r in ROLES if not cells[r]["error"]]
        shift = number % len(live) if live else 0
        for role in live[shift:] + live[:shift]:
            cell, impl, subject = cells[role], impls[role], chosen[role]
            written: list[str] = []
            try:
                write = await write_phase(
                    impl, value, concurrency, settings.duration if number else 0.0,
                    settings.tag, role, written, redis_side, counter,
                )  # fmt: skip
                read = await read_phase(
                    impl, written, concurrency, settings.duration if number else 0.0,
                    redis_side, counter,
                )  # fmt: skip
                if number == 1:
                    got = await impl.get(written[-1])
                    if got != value:
                        raise RuntimeError(f"read back {size_label(size)} differs from the result")
                    if redis_side is not None and concurrency == 1:
                        cell["memory_bytes"] = await storage.memory(subject, written[0])
                if number:
                    for op, phase in (("write", write), ("read", read)):
                        cell[op].append(phase.as_dict())
                        add_commands(cell, op, phase)
            except Exception as error:
                cell["error"] = f"fails: {describe(error)}"
                failed[role] = min(size, failed.get(role, size))
                log(f"   {size_label(size)} c={concurrency} {role}: {cell['error']}")
            finally:
                try:
                    await storage.clear(subject, written)
                except Exception as error:
                    log(f"   deleting {role}'s rows: {describe(error)}")
    for cell in cells.values():
        summarize(cell)
    figures = "  ".join(
        f"{role} {cells[role]['write_median']['ms_per_op']:.2f}/"
        f"{cells[role]['read_median']['ms_per_op']:.2f}"
        for role in ROLES
        if cells[role]["write_median"]["ms_per_op"] is not None
    )
    log(
        f"   {size_label(size):>6} c={concurrency:<2} ms write/read: {figures}  "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return list(cells.values())


# -- Redis of our own ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def private_redis(servers: Servers) -> AsyncIterator[tuple[Servers, str]]:
    """A redis-server of the bench's own on a free port (no persistence), stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server binary on PATH (use --redis-server shared)")
    from redis.asyncio import Redis

    workdir = Path(tempfile.mkdtemp(prefix="chicory-bench-sizes-redis-"))
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--logfile", str(workdir / "server.log"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = Redis(host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    info = await client.info("server")
                    break
                except Exception:
                    if process.returncode is not None or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        where = replace(servers, redis_host="127.0.0.1", redis_port=port, redis_db=REDIS_DB,
                        redis_chicory_db=REDIS_CHICORY_DB)  # fmt: skip
        yield (
            where,
            (
                f"a redis-server {info.get('redis_version')} of the bench's own on port {port} "
                "(--save '' --appendonly no)"
            ),
        )
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def redis_servers(servers: Servers, mode: str) -> AsyncIterator[tuple[Servers, str]]:
    if mode == "private":
        async with private_redis(servers) as found:
            yield found
        return
    from redis.asyncio import Redis

    where = replace(servers, redis_db=REDIS_DB, redis_chicory_db=REDIS_CHICORY_DB)
    client = Redis(host=where.redis_host, port=where.redis_port)
    try:
        version = (await client.info("server")).get("redis_version")
    finally:
        await client.aclose()
    yield (
        where,
        (
            f"the shared Redis {version} at {where.redis_host}:{where.redis_port}, databases "
            f"{where.redis_db} and {where.redis_chicory_db}: its commandstats count every "
            "client's commands"
        ),
    )


# -- the whole run ------------------------------------------------------------------------------


async def run(settings: Settings, servers: Servers | None = None) -> dict[str, Any]:
    """Every backend of ``settings``, one after another."""
    servers = servers or Servers.from_env()
    started = time.perf_counter()
    sections: list[dict[str, Any]] = []
    redis_where: str | None = None
    counter = CommandCounter()
    try:
        for kind in settings.kinds:
            try:
                if kind == "redis":
                    async with redis_servers(servers, settings.redis_server) as (where, text):
                        redis_where = text
                        with counter.installed():
                            sections.append(await run_kind(kind, where, settings, counter))
                else:
                    sections.append(await run_kind(kind, servers, settings, counter))
            except Exception as error:
                log(f"   {LABELS[kind]}: {describe(error)}")
                sections.append({
                    "kind": kind, "label": LABELS[kind], "cells": [],
                    "errors": dict.fromkeys(ROLES, f"not available: {describe(error)}"),
                })  # fmt: skip
    finally:
        servers.remove_sqlite_dir()
    return {
        "machine": env.machine(),
        "settings": {
            "backends": settings.kinds,
            "sizes": settings.sizes,
            "concurrency": settings.concurrency,
            "rounds": settings.rounds,
            "big_rounds": settings.big_rounds,
            "big_batch_rounds": settings.big_batch_rounds,
            "big_from": BIG,
            "warmup_up_to": WARMUP_MAX,
            "duration_s": settings.duration,
            "index_tasks": settings.index_tasks,
            "redis_server": redis_where,
            "pool": {
                "server": f"pool_size={env.POOL_SIZE}, max_overflow={env.MAX_OVERFLOW}",
                "sqlite": f"pool_size={env.SQLITE_POOL_SIZE}, "
                f"max_overflow={env.SQLITE_MAX_OVERFLOW}",
            },
            "payload_example": payload(300),
        },
        "sections": sections,
        "targets": targets({"sections": sections, "settings": {"sizes": settings.sizes}}),
        "elapsed_s": time.perf_counter() - started,
    }


# -- targets ------------------------------------------------------------------------------------


def _cells(section: dict[str, Any]) -> dict[tuple[int, int, str], dict[str, Any]]:
    return {(c["size"], c["concurrency"], c["role"]): c for c in section["cells"]}


def _figure(cell: dict[str, Any] | None, op: str, key: str = "ms_per_op") -> float | None:
    if cell is None or cell["error"]:
        return None
    value: float | None = cell.get(f"{op}_median", {}).get(key)
    return value


def speedup(ours: dict[str, Any] | None, other: dict[str, Any] | None, op: str) -> float | None:
    """How many times faster ours is (the other's ms over ours); None when either is
    missing."""
    mine, theirs = _figure(ours, op), _figure(other, op)
    return None if not mine or not theirs else theirs / mine


def memory_per_task(section: dict[str, Any], cell: dict[str, Any] | None) -> float | None:
    if cell is None or cell.get("memory_bytes") is None:
        return None
    total = float(cell["memory_bytes"])
    if cell["role"] == "ours":
        share = section.get("index", {}).get("bytes_per_task")
        if share is None:
            return None
        total += share
    return total


def per_mb(
    cells: dict[tuple[int, int, str], dict[str, Any]], small: int, large: int, role: str,
    op: str, key: str,
) -> float | None:  # fmt: skip
    """(figure at ``large`` - figure at ``small``) per MB of result, at c=1."""
    a, b = (
        _figure(cells.get((small, 1, role)), op, key),
        _figure(cells.get((large, 1, role)), op, key),
    )
    if a is None or b is None or large <= small:
        return None
    return (b - a) / ((large - small) / 1e6)


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "not met")


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 21's targets beside the figures: met / not met, never asserted."""
    found: list[dict[str, Any]] = []
    sizes = sorted(report["settings"]["sizes"])
    for section in report["sections"]:
        kind = section["kind"]
        cells = _cells(section)
        want = TARGETS[kind]
        concurrencies = sorted({c["concurrency"] for c in section["cells"]})
        for concurrency in concurrencies:
            for size in sizes:
                ours = cells.get((size, concurrency, "ours"))
                chicory = cells.get((size, concurrency, "chicory"))
                for op in OPS:
                    ratio = speedup(ours, chicory, op)
                    note = ""
                    if chicory is not None and chicory["error"]:
                        note = "Chicory fails" if chicory["error"].startswith("fails") else ""
                    found.append({
                        "target": f"{op} >= {want:g}x Chicory", "kind": kind, "size": size,
                        "concurrency": concurrency, "figure": ratio, "note": note,
                        "status": _status(None if ratio is None else ratio >= want),
                    })  # fmt: skip
        if kind == "redis":
            for concurrency in concurrencies:
                small = _figure(
                    cells.get((100, concurrency, "ours")), "write", "main_usec_per_call"
                )
                large = _figure(
                    cells.get((1_000_000, concurrency, "ours")), "write", "main_usec_per_call"
                )
                growth = None if not small or large is None else large / small
                found.append({
                    "target": f"script server time at 1 MB <= {SCRIPT_GROWTH_TARGET:g}x 100 B",
                    "kind": kind, "size": 1_000_000, "concurrency": concurrency,
                    "figure": growth, "note": "",
                    "status": _status(None if growth is None else growth <= SCRIPT_GROWTH_TARGET),
                })  # fmt: skip
            for size in sizes:
                mine = memory_per_task(section, cells.get((size, 1, "ours")))
                theirs = memory_per_task(section, cells.get((size, 1, "chicory")))
                ratio = None if mine is None or not theirs else mine / theirs
                found.append({
                    "target": "memory per task <= Chicory's", "kind": kind, "size": size,
                    "concurrency": 1, "figure": ratio, "note": "",
                    "status": _status(None if ratio is None else ratio <= 1.0),
                })  # fmt: skip
        if len(sizes) > 1:
            small, large = sizes[0], sizes[-1]
            for op in OPS:
                mine = per_mb(cells, small, large, "ours", op, "ms_per_op")
                raw = per_mb(cells, small, large, "raw", op, "ms_per_op")
                ratio = None if mine is None or not raw else mine / raw
                found.append({
                    "target": f"{op} per-byte cost <= raw driver's", "kind": kind, "size": large,
                    "concurrency": 1, "figure": ratio, "note": "ms per MB, ours / raw",
                    "status": _status(None if ratio is None else ratio <= 1.0),
                })  # fmt: skip
    return found


# -- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _cell_text(cell: dict[str, Any] | None, op: str, key: str, fmt: Callable[..., str]) -> str:
    if cell is None:
        return "-"
    if cell["error"]:
        return "fails" if cell["error"].startswith("fails") else "n/a"
    return fmt(cell[f"{op}_median"][key])


def op_table(report: dict[str, Any], op: str) -> list[str]:
    rate = "tasks/s" if op == "write" else "reads/s"
    unit = "task" if op == "write" else "read"
    lines = [
        f"| backend | size | c | ms/{unit}: ours | Chicory | raw | {rate}: ours | Chicory "
        f"| raw | ours/Chicory | ours/raw | client CPU µs/{unit}: ours / Chicory / raw |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for section in report["sections"]:
        cells = _cells(section)
        for concurrency in report["settings"]["concurrency"]:
            for size in report["settings"]["sizes"]:
                row = [cells.get((size, concurrency, role)) for role in ROLES]
                if not any(row):
                    continue
                ms = " | ".join(_cell_text(c, op, "ms_per_op", _ms) for c in row)
                rates = " | ".join(_cell_text(c, op, "ops_per_s", _rate) for c in row)
                cpu = " / ".join(_cell_text(c, op, "cpu_us_per_op", _us) for c in row)
                lines.append(
                    f"| {section['label']} | {size_label(size)} | {concurrency} | {ms} | {rates} "
                    f"| {_x(speedup(row[0], row[1], op))} | {_x(speedup(row[0], row[2], op))} "
                    f"| {cpu} |"
                )
    return lines


def _server_text(cell: dict[str, Any] | None, op: str) -> str:
    if cell is None:
        return "-"
    if cell["error"]:
        return "fails" if cell["error"].startswith("fails") else "n/a"
    median = cell[f"{op}_median"]
    if median["main"] is None:
        return "-"
    return (
        f"{median['main']} {_us(median['main_usec_per_call'])} / {_us(median['server_us_per_op'])}"
    )


def redis_table(report: dict[str, Any]) -> list[str]:
    section = next((s for s in report["sections"] if s["kind"] == "redis" and s["cells"]), None)
    if section is None:
        return []
    cells = _cells(section)
    lines = [
        "| size | c | op | ours: command µs/call / server µs per op | Chicory | raw driver "
        "| client CPU µs per op: ours / Chicory / raw |",
        "| ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for concurrency in report["settings"]["concurrency"]:
        for size in report["settings"]["sizes"]:
            row = [cells.get((size, concurrency, role)) for role in ROLES]
            if not any(row):
                continue
            for op in OPS:
                cpu = " / ".join(_cell_text(c, op, "cpu_us_per_op", _us) for c in row)
                lines.append(
                    f"| {size_label(size)} | {concurrency} | {op} | "
                    + " | ".join(_server_text(c, op) for c in row)
                    + f" | {cpu} |"
                )
    index = section.get("index", {})
    lines += [
        "",
        "Memory a finished task leaves (MEMORY USAGE ... SAMPLES 0, bytes): ours = its result "
        "key + its share of the history index; Chicory = result key + state key; raw = the "
        "result key.",
        "",
        "| size | ours: result key | + index share | = ours | Chicory 0.1.0 | raw driver "
        "| ours/Chicory |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    share = index.get("bytes_per_task")
    for size in report["settings"]["sizes"]:
        ours, chicory, raw = (cells.get((size, 1, role)) for role in ROLES)
        mine = memory_per_task(section, ours)
        theirs = memory_per_task(section, chicory)
        lines.append(
            f"| {size_label(size)} | {_bytes(ours.get('memory_bytes') if ours else None)} "
            f"| {_bytes(share)} | {_bytes(mine)} | {_bytes(theirs)} "
            f"| {_bytes(raw.get('memory_bytes') if raw else None)} "
            f"| {_x(None if mine is None or not theirs else mine / theirs)} |"
        )
    if share is not None:
        lines += [
            "",
            "Index share: MEMORY USAGE of the history index grew "
            f"{index['after_bytes'] - index['before_bytes']:,} "
            f"bytes over {index['tasks']:,} finished tasks (after at least as many to warm it; "
            f"{index['entries']:,} entries at the end): {share:.1f} bytes per task.",
        ]
    return lines


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def per_mb_table(report: dict[str, Any]) -> list[str]:
    sizes = sorted(report["settings"]["sizes"])
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    lines = [
        f"Per MB of result, one caller: (figure at {size_label(large)} - figure at "
        f"{size_label(small)}) / {(large - small) / 1e6:g} MB.",
        "",
        "| backend | op | wall ms/MB: ours / Chicory / raw | client CPU ms/MB: ours / Chicory "
        "/ raw | Redis server ms/MB: ours / Chicory / raw |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for section in report["sections"]:
        cells = _cells(section)
        for op in OPS:
            wall = " / ".join(_ms(per_mb(cells, small, large, r, op, "ms_per_op")) for r in ROLES)
            cpu = " / ".join(
                _ms(_div(per_mb(cells, small, large, r, op, "cpu_us_per_op"), 1000)) for r in ROLES
            )
            server = "-"
            if section["kind"] == "redis":
                server = " / ".join(
                    _ms(_div(per_mb(cells, small, large, r, op, "server_us_per_op"), 1000))
                    for r in ROLES
                )
            lines.append(f"| {section['label']} | {op} | {wall} | {cpu} | {server} |")
    return lines


def _div(value: float | None, by: float) -> float | None:
    return None if value is None else value / by


def target_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "| target | backend | size | c | figure | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for item in report["targets"]:
        status = item["status"]
        if status == "n/a" and item["note"]:
            status = f"n/a ({item['note']})"
        elif item["note"] and item["figure"] is not None:
            status = f"{status} ({item['note']})"
        lines.append(
            f"| {item['target']} | {LABELS[item['kind']]} | {size_label(item['size'])} "
            f"| {item['concurrency']} | {_x(item['figure'])} | {status} |"
        )
    counts = Counter(item["status"] for item in report["targets"])
    lines += ["", f"{counts['met']} met, {counts['not met']} not met, {counts['n/a']} n/a."]
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    sizes = ", ".join(size_label(s) for s in settings["sizes"])
    lines = [
        "# chicory-backends sizes: results of 100 B to 10 MB, written and read",
        "",
        f"- date: {machine['date']}; nproc {machine['nproc']} (client and servers share "
        f"them); Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f'- result sizes: {sizes} (compact JSON of the value: {{"items": [records], '
        '"note": text}, as many records as fit, the note filling the rest; a record: '
        f"`{encode(settings['payload_example']['items'][0]).decode()}`)",
        "- a task: set_state(STARTED) then store_result(SUCCESS) (as Chicory's worker "
        "writes); a read: get_result. c=1: one after another; c=32: asyncio.gather of 32, "
        f"batch after batch. Per round each implementation writes for {settings['duration_s']:g} s "
        "(at least one task or batch), then reads those tasks for as long; ours / Chicory / "
        "raw take turns, the order rotating each round; medians of "
        f"{settings['rounds']} rounds (from {size_label(settings['big_from'])} on: "
        f"{settings['big_rounds']} at c=1 and {settings['big_batch_rounds']} at c=32, where "
        "a phase moves 32 results at a time), a warm-up round up to "
        f"{size_label(settings['warmup_up_to'])}. ms per task/read = the phase's wall time "
        "over its tasks (at c=32 the inverse of throughput); tasks/s counts sequences "
        "(2 calls each).",
        "- ours/Chicory and ours/raw: the other's ms over ours (above 1x: ours is faster). "
        "Client CPU: time.process_time of the bench process over the phase (for SQLite it "
        "includes SQLite itself, run in aiosqlite's thread).",
        "- raw driver: one hand-written statement (SQL: our schema, the value's JSON in the "
        "result column) or one command (Redis: SET .. EX of a document holding the value as "
        "nested JSON, encoded once) per call; JSON encoded by orjson and decoded by the "
        "stdlib, as ours does; pools as in the steady benchmark: "
        f"{settings['pool']['server']} (SQLite {settings['pool']['sqlite']}) for all three.",
        *(
            [
                f"- Redis: {settings['redis_server']}; server µs from INFO commandstats deltas "
                "over each phase. `command µs/call` is the command with the most server time "
                "among those this process sent; `server µs per op` adds every command this "
                "process sent (a script's or EXEC's inner commands are inside its time, not "
                "added again)."
            ]
            if settings["redis_server"]
            else []
        ),
        f"- whole run: {report['elapsed_s']:.0f} s",
        "",
        "## Writes: set_state(STARTED) + store_result(SUCCESS)",
        "",
        *op_table(report, "write"),
        "",
        "## Reads: get_result",
        "",
        *op_table(report, "read"),
        "",
    ]
    redis = redis_table(report)
    if redis:
        lines += ["## Redis: server time and memory", "", *redis, ""]
    per = per_mb_table(report)
    if per:
        lines += ["## Where the per-byte cost is", "", *per, ""]
    lines += ["## Issue 21's targets (reported, not asserted)", "", *target_lines(report), ""]
    problems = [
        f"- {s['label']} {size_label(c['size'])} c={c['concurrency']} "
        f"{ROLE_TITLES[c['role']]}: {c['error']}"
        for s in report["sections"]
        for c in s["cells"]
        if c["error"] and c["error"] != "not available"
    ]
    problems += [
        f"- {s['label']} {ROLE_TITLES[role]}: {why}"
        for s in report["sections"]
        for role, why in s["errors"].items()
    ]
    foreign = [
        f"- {s['label']} {size_label(c['size'])} c={c['concurrency']} {ROLE_TITLES[c['role']]} "
        f"{op}: {c[f'{op}_median']['foreign_calls']} script/EXEC calls not sent from here"
        for s in report["sections"]
        for c in s["cells"]
        for op in OPS
        if c.get(f"{op}_median", {}).get("foreign_calls")
    ]
    if problems:
        lines += ["## Not measured, or failed", "", *problems, ""]
    if foreign:
        lines += ["## Other clients in the Redis counters", "", *foreign, ""]
    return "\n".join(lines)


def rounded(value: Any) -> Any:
    """The report with floats cut to 6 significant digits (the JSON stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def write(report: dict[str, Any], out_dir: Path, stem: str = "sizes") -> str:
    text = markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    data = json.dumps(rounded(report), indent=2, default=str)
    (out_dir / f"{stem}.json").write_text(data + "\n")
    return text

"""The three implementations measured on each backend, behind one small interface.

- ``ours``: chicory_backends (``create_backend`` -> DatabaseBackend / RedisBackend).
- ``chicory``: Chicory 0.1.0's own backend (``chicory.backend.database`` / ``.redis``).
- ``raw``: the driver alone, one hand-written statement (or command) per operation,
  autocommit, writing our schema (SQL) or our document layout (Redis).

Every operation returns plain data so the runner can check the three agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

RESULT_TTL = 3600  # Redis: every implementation writes results with this TTL
HEARTBEAT_TTL = 30
WORKERS = 100
TERMINAL_SQL = "('DEAD_LETTERED', 'FAILURE', 'SUCCESS')"


def worker_id(index: int) -> str:
    return f"bench-worker-{index:03d}"


class Impl(ABC):
    """One implementation of the backend operations the bench measures."""

    role: str  # "ours" | "chicory" | "raw"
    description: str
    # Operations measured elsewhere for this implementation (shown as "=" in the table).
    same_as: ClassVar[dict[str, str]] = {}
    batch_read: ClassVar[bool] = True  # False: get_many is get_many_singly

    def __init__(self) -> None:
        self.id_prefix = "bench"  # the runner gives each implementation its own
        self._counter = 0
        self.stored: list[str] = []  # ids this implementation stored, for the reads

    def new_id(self) -> str:
        self._counter += 1
        return f"{self.id_prefix}-{self._counter}"

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def store(self, task_id: str, value: int) -> None:
        """store_result(task_id, SUCCESS, {"value": value})."""

    @abstractmethod
    async def set_started(self, task_id: str) -> None:
        """set_state(task_id, STARTED)."""

    @abstractmethod
    async def get(self, task_id: str) -> Any:
        """get_result(task_id); the decoded result value, or None."""

    @abstractmethod
    async def get_many(self, task_ids: Sequence[str]) -> int:
        """All of ``task_ids`` at once (the implementation's best way); how many were found."""

    async def get_many_singly(self, task_ids: Sequence[str]) -> int:
        """The same ids read one get_result at a time."""
        found = 0
        for task_id in task_ids:
            if await self.get(task_id) is not None:
                found += 1
        return found

    @abstractmethod
    async def heartbeat(self, index: int) -> None:
        """store_heartbeat of worker ``index`` (0..99)."""

    @abstractmethod
    async def active_workers(self) -> int:
        """get_active_workers(); how many."""


# -- ours and Chicory's: the same Backend-shaped API, different types ----------------------


class _BackendImpl(Impl):
    """Drives an object with Chicory's ``Backend`` methods."""

    def __init__(self, backend: Any, types: Any, description: str) -> None:
        super().__init__()
        self.backend = backend
        self.description = description
        self._task_result = types.TaskResult
        self._success = types.TaskState.SUCCESS
        self._started = types.TaskState.STARTED
        now = datetime.now(UTC)
        self._stats = [
            types.WorkerStats(
                worker_id=worker_id(i),
                hostname="bench-host",
                pid=os.getpid(),
                queue="default",
                concurrency=8,
                started_at=now,
                last_heartbeat=now,
            )
            for i in range(WORKERS)
        ]

    async def open(self) -> None:
        await self.backend.connect()

    async def close(self) -> None:
        await self.backend.disconnect()

    async def store(self, task_id: str, value: int) -> None:
        result = self._task_result(task_id=task_id, state=self._success, result={"value": value})
        await self.backend.store_result(task_id, result)

    async def set_started(self, task_id: str) -> None:
        await self.backend.set_state(task_id, self._started)

    async def get(self, task_id: str) -> Any:
        result = await self.backend.get_result(task_id)
        return None if result is None else result.result

    async def get_many(self, task_ids: Sequence[str]) -> int:
        return len(await self.backend.get_results(task_ids))

    async def heartbeat(self, index: int) -> None:
        await self.backend.store_heartbeat(worker_id(index), self._stats[index], HEARTBEAT_TTL)

    async def active_workers(self) -> int:
        return len(await self.backend.get_active_workers())


class OursImpl(_BackendImpl):
    role = "ours"

    def __init__(self, config: Any) -> None:
        from chicory_backends import create_backend, types

        kind = _ours_kind(config)
        backend = create_backend(kind, config)
        super().__init__(
            backend, types, f"chicory_backends.create_backend({kind!r}) -> {type(backend).__name__}"
        )


def _ours_kind(config: Any) -> str:
    from chicory_backends.config import (
        MySQLBackendConfig,
        PostgresBackendConfig,
        RedisBackendConfig,
        SQLiteBackendConfig,
    )

    kinds: list[tuple[type[Any], str]] = [
        (PostgresBackendConfig, "postgres"),
        (MySQLBackendConfig, "mysql"),
        (SQLiteBackendConfig, "sqlite"),
        (RedisBackendConfig, "redis"),
    ]
    for config_class, kind in kinds:
        if isinstance(config, config_class):
            return kind
    raise TypeError(f"no backend kind for {type(config).__name__}")


class ChicoryImpl(_BackendImpl):
    """Chicory 0.1.0's backend; it has no batch read, so get_many reads one id at a time."""

    role = "chicory"
    same_as: ClassVar[dict[str, str]] = {"get_many_single": "get_many"}
    batch_read: ClassVar[bool] = False

    def __init__(self, backend: Any) -> None:
        from chicory import types

        super().__init__(backend, types, f"{type(backend).__module__}.{type(backend).__name__}")

    async def get_many(self, task_ids: Sequence[str]) -> int:
        return await self.get_many_singly(task_ids)


def chicory_sql(kind: str, url: str, *, pool_size: int, max_overflow: int) -> ChicoryImpl:
    from chicory.backend.database import DatabaseBackend
    from chicory.config import MySQLBackendConfig, PostgresBackendConfig, SQLiteBackendConfig

    config: Any
    if kind == "postgres":
        config = PostgresBackendConfig(url=url, pool_size=pool_size, max_overflow=max_overflow)
    elif kind == "mysql":
        config = MySQLBackendConfig(url=url, pool_size=pool_size, max_overflow=max_overflow)
    else:
        config = SQLiteBackendConfig(url=url, pool_size=pool_size, max_overflow=max_overflow)
    return ChicoryImpl(DatabaseBackend(config))


def chicory_redis(host: str, port: int, db: int) -> ChicoryImpl:
    from chicory.backend.redis import RedisBackend
    from chicory.config import RedisBackendConfig

    return ChicoryImpl(RedisBackend(RedisBackendConfig(host=host, port=port, db=db)))


# -- the raw drivers ----------------------------------------------------------------------


def _stats_payloads() -> list[str]:
    now = datetime.now(UTC).isoformat()
    return [
        json.dumps(
            {
                "worker_id": worker_id(i),
                "hostname": "bench-host",
                "pid": os.getpid(),
                "queue": "default",
                "concurrency": 8,
                "tasks_processed": 0,
                "tasks_failed": 0,
                "active_tasks": 0,
                "started_at": now,
                "last_heartbeat": now,
                "is_running": True,
                "broker": None,
                "backend": None,
            },
            separators=(",", ":"),
        )
        for i in range(WORKERS)
    ]


_RESULT_COLUMNS = "task_id, state, result, error, traceback, created_at, updated_at, expires_at"
_SELECT_RESULT = (
    "SELECT task_id, state, result, error, traceback FROM chicory_task_results "
    "WHERE task_id = {p1} AND (expires_at IS NULL OR expires_at > {p2})"
)
_SELECT_WORKERS = (
    "SELECT worker_id, stats FROM chicory_worker_heartbeats WHERE expires_at > {p1} "
    "ORDER BY worker_id"
)
# PostgreSQL and SQLite share INSERT .. ON CONFLICT with the terminal guard in its WHERE.
_ON_CONFLICT_STORE = (
    f"INSERT INTO chicory_task_results ({_RESULT_COLUMNS}) VALUES ({{values8}}) "
    "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, "
    "error = excluded.error, traceback = excluded.traceback, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at "
    f"WHERE excluded.state IN {TERMINAL_SQL} "
    f"OR chicory_task_results.state NOT IN {TERMINAL_SQL}"
)
_ON_CONFLICT_STATE = (
    "INSERT INTO chicory_task_results (task_id, state, created_at, updated_at, expires_at) "
    "VALUES ({values5}) ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at "
    f"WHERE excluded.state IN {TERMINAL_SQL} "
    f"OR chicory_task_results.state NOT IN {TERMINAL_SQL}"
)
_ON_CONFLICT_HEARTBEAT = (
    "INSERT INTO chicory_worker_heartbeats (worker_id, stats, updated_at, expires_at) "
    "VALUES ({values4}) ON CONFLICT (worker_id) DO UPDATE SET stats = excluded.stats, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at"
)


def _pg_params(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


def _decode(text: str | bytes | None) -> Any:
    return None if text is None else json.loads(text)


async def _no_reset(connection: Any) -> None:
    return None


class RawPostgres(Impl):
    role = "raw"

    def __init__(self, dsn: str, max_size: int) -> None:
        super().__init__()
        self.description = f"asyncpg pool (max {max_size}), one prepared statement per call"
        self._dsn = dsn
        self._max_size = max_size
        self._pool: Any = None
        self._payloads = _stats_payloads()
        self._store = _ON_CONFLICT_STORE.format(values8=_pg_params(8))
        self._state = _ON_CONFLICT_STATE.format(values5=_pg_params(5))
        self._heartbeat = _ON_CONFLICT_HEARTBEAT.format(values4=_pg_params(4))
        self._get = _SELECT_RESULT.format(p1="$1", p2="$2")
        self._get_many = _SELECT_RESULT.replace("task_id = {p1}", "task_id = ANY($1::text[])")
        self._get_many = self._get_many.format(p2="$2")
        self._workers = _SELECT_WORKERS.format(p1="$1")

    async def open(self) -> None:
        import asyncpg

        # reset=: like ours (pool_reset_on_return=None), no reset query when a connection
        # goes back to the pool; asyncpg's default would add a round trip per call.
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._max_size, reset=_no_reset
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def store(self, task_id: str, value: int) -> None:
        now = datetime.now(UTC)
        result = json.dumps({"value": value})
        await self._pool.execute(
            self._store, task_id, "SUCCESS", result, None, None, now, now, None
        )

    async def set_started(self, task_id: str) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(self._state, task_id, "STARTED", now, now, None)

    async def get(self, task_id: str) -> Any:
        row = await self._pool.fetchrow(self._get, task_id, datetime.now(UTC))
        return None if row is None else _decode(row[2])

    async def get_many(self, task_ids: Sequence[str]) -> int:
        rows = await self._pool.fetch(self._get_many, list(task_ids), datetime.now(UTC))
        return len({row[0]: _decode(row[2]) for row in rows})

    async def heartbeat(self, index: int) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(
            self._heartbeat,
            worker_id(index),
            self._payloads[index],
            now,
            now + timedelta(seconds=HEARTBEAT_TTL),
        )

    async def active_workers(self) -> int:
        rows = await self._pool.fetch(self._workers, datetime.now(UTC))
        return len([json.loads(row[1]) for row in rows])


class RawMySQL(Impl):
    role = "raw"

    def __init__(
        self, *, host: str, port: int, user: str, password: str | None,
        db: str, max_size: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.description = f"aiomysql pool (max {max_size}, autocommit), one COM_QUERY per call"
        self._connect = {
            "host": host, "port": port, "user": user, "password": password or "", "db": db,
        }  # fmt: skip
        self._max_size = max_size
        self._pool: Any = None
        self._payloads = _stats_payloads()
        guard = (
            f"(VALUES(state) IN {TERMINAL_SQL} OR chicory_task_results.state NOT IN {TERMINAL_SQL})"
        )

        def guarded(columns: Sequence[str]) -> str:
            return ", ".join(
                f"{c} = CASE WHEN {guard} THEN VALUES({c}) ELSE chicory_task_results.{c} END"
                for c in columns
            )

        self._store = (
            f"INSERT INTO chicory_task_results ({_RESULT_COLUMNS}) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            + guarded(("result", "error", "traceback", "updated_at", "expires_at", "state"))
        )
        self._state = (
            "INSERT INTO chicory_task_results (task_id, state, created_at, updated_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            + guarded(("updated_at", "expires_at", "state"))
        )
        self._heartbeat = (
            "INSERT INTO chicory_worker_heartbeats (worker_id, stats, updated_at, expires_at) "
            "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE stats = VALUES(stats), "
            "updated_at = VALUES(updated_at), expires_at = VALUES(expires_at)"
        )
        self._get = _SELECT_RESULT.format(p1="%s", p2="%s")
        self._workers = _SELECT_WORKERS.format(p1="%s")

    async def open(self) -> None:
        import aiomysql

        self._pool = await aiomysql.create_pool(
            minsize=1, maxsize=self._max_size, autocommit=True, charset="utf8mb4", **self._connect
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            yield cur

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    async def store(self, task_id: str, value: int) -> None:
        now = self._now()
        args = (task_id, "SUCCESS", json.dumps({"value": value}), None, None, now, now, None)
        async with self._cursor() as cur:
            await cur.execute(self._store, args)

    async def set_started(self, task_id: str) -> None:
        now = self._now()
        async with self._cursor() as cur:
            await cur.execute(self._state, (task_id, "STARTED", now, now, None))

    async def get(self, task_id: str) -> Any:
        async with self._cursor() as cur:
            await cur.execute(self._get, (task_id, self._now()))
            row = await cur.fetchone()
        return None if row is None else _decode(row[2])

    async def get_many(self, task_ids: Sequence[str]) -> int:
        marks = ", ".join(["%s"] * len(task_ids))
        sql = _SELECT_RESULT.replace("task_id = {p1}", f"task_id IN ({marks})").format(p2="%s")
        async with self._cursor() as cur:
            await cur.execute(sql, (*task_ids, self._now()))
            rows = await cur.fetchall()
        return len({row[0]: _decode(row[2]) for row in rows})

    async def heartbeat(self, index: int) -> None:
        now = self._now()
        args = (
            worker_id(index),
            self._payloads[index],
            now,
            now + timedelta(seconds=HEARTBEAT_TTL),
        )
        async with self._cursor() as cur:
            await cur.execute(self._heartbeat, args)

    async def active_workers(self) -> int:
        async with self._cursor() as cur:
            await cur.execute(self._workers, (self._now(),))
            rows = await cur.fetchall()
        return len([json.loads(row[1]) for row in rows])


def _sqlite_time(moment: datetime) -> str:
    # SQLAlchemy's SQLite DateTime storage format, so raw rows compare like ours.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class RawSQLite(Impl):
    """aiosqlite in autocommit mode, the same pragmas as ours, a pool as large as ours."""

    role = "raw"

    def __init__(self, path: str, max_size: int, busy_timeout_ms: int) -> None:
        super().__init__()
        self.description = (
            f"aiosqlite (autocommit, WAL, synchronous=NORMAL, busy_timeout={busy_timeout_ms}), "
            f"up to {max_size} connections"
        )
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._payloads = _stats_payloads()
        self._store = _ON_CONFLICT_STORE.format(values8=", ".join(["?"] * 8))
        self._state = _ON_CONFLICT_STATE.format(values5=", ".join(["?"] * 5))
        self._heartbeat = _ON_CONFLICT_HEARTBEAT.format(values4=", ".join(["?"] * 4))
        self._get = _SELECT_RESULT.format(p1="?", p2="?")
        self._workers = _SELECT_WORKERS.format(p1="?")

    async def _connect(self) -> Any:
        import aiosqlite

        conn = await aiosqlite.connect(self._path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        self._all.append(conn)
        return conn

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            finally:
                self._idle.append(conn)

    async def open(self) -> None:
        async with self._conn():
            pass

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._idle.clear()

    async def store(self, task_id: str, value: int) -> None:
        now = _sqlite_time(datetime.now(UTC))
        args = (task_id, "SUCCESS", json.dumps({"value": value}), None, None, now, now, None)
        async with self._conn() as conn:
            await conn.execute(self._store, args)

    async def set_started(self, task_id: str) -> None:
        now = _sqlite_time(datetime.now(UTC))
        async with self._conn() as conn:
            await conn.execute(self._state, (task_id, "STARTED", now, now, None))

    async def get(self, task_id: str) -> Any:
        async with self._conn() as conn:
            rows = await conn.execute_fetchall(
                self._get, (task_id, _sqlite_time(datetime.now(UTC)))
            )
        rows = list(rows)
        return _decode(rows[0][2]) if rows else None

    async def get_many(self, task_ids: Sequence[str]) -> int:
        marks = ", ".join(["?"] * len(task_ids))
        sql = _SELECT_RESULT.replace("task_id = {p1}", f"task_id IN ({marks})").format(p2="?")
        async with self._conn() as conn:
            rows = await conn.execute_fetchall(sql, (*task_ids, _sqlite_time(datetime.now(UTC))))
        return len({row[0]: _decode(row[2]) for row in rows})

    async def heartbeat(self, index: int) -> None:
        now = datetime.now(UTC)
        args = (
            worker_id(index),
            self._payloads[index],
            _sqlite_time(now),
            _sqlite_time(now + timedelta(seconds=HEARTBEAT_TTL)),
        )
        async with self._conn() as conn:
            await conn.execute(self._heartbeat, args)

    async def active_workers(self) -> int:
        async with self._conn() as conn:
            rows = await conn.execute_fetchall(self._workers, (_sqlite_time(datetime.now(UTC)),))
        return len([json.loads(row[1]) for row in rows])


class RawRedis(Impl):
    """redis-py asyncio: SET .. EX / GET / MGET; heartbeat SET+ZADD in one pipeline."""

    role = "raw"

    def __init__(self, host: str, port: int, db: int, key_prefix: str) -> None:
        super().__init__()
        self.description = "redis-py asyncio client, one command (or one pipeline) per call"
        self._host, self._port, self._db = host, port, db
        self._prefix = key_prefix
        self._index = f"{key_prefix}:workers:index"
        self._client: Any = None
        self._payloads = _stats_payloads()

    async def open(self) -> None:
        from redis.asyncio import Redis

        self._client = Redis(host=self._host, port=self._port, db=self._db)
        await self._client.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}:result:{task_id}"

    async def store(self, task_id: str, value: int) -> None:
        doc = json.dumps(
            {"state": "SUCCESS", "result": json.dumps({"value": value}), "error": None,
             "traceback": None}
        )  # fmt: skip
        await self._client.set(self._key(task_id), doc, ex=RESULT_TTL)

    async def set_started(self, task_id: str) -> None:
        doc = '{"state": "STARTED", "result": null, "error": null, "traceback": null}'
        await self._client.set(self._key(task_id), doc, ex=RESULT_TTL)

    async def get(self, task_id: str) -> Any:
        raw = await self._client.get(self._key(task_id))
        return None if raw is None else _decode(json.loads(raw)["result"])

    async def get_many(self, task_ids: Sequence[str]) -> int:
        raws = await self._client.mget([self._key(t) for t in task_ids])
        return len([_decode(json.loads(raw)["result"]) for raw in raws if raw is not None])

    async def heartbeat(self, index: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        wid = worker_id(index)
        pipe.set(f"{self._prefix}:hb:{wid}", self._payloads[index], ex=HEARTBEAT_TTL)
        pipe.zadd(self._index, {wid: time.time() + HEARTBEAT_TTL})
        await pipe.execute()

    async def active_workers(self) -> int:
        members = await self._client.zrangebyscore(self._index, time.time(), "+inf")
        if not members:
            return 0
        ids = [m.decode() for m in members]
        raws = await self._client.mget([f"{self._prefix}:hb:{w}" for w in ids])
        return len([json.loads(raw) for raw in raws if raw is not None])

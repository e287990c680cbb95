"""Sessions opened on the servers, read from the servers' own counters.

- PostgreSQL: ``pg_stat_database.sessions`` of one database, so only the connections to
  the run's own database count. A backend adds its session to the shared statistics when
  it first goes idle, which can be a moment after the client already has it, so readings
  after a run are repeated until they stop changing (``settled_postgres``).
- MariaDB: ``SHOW GLOBAL STATUS LIKE 'Connections'``, server-wide: anyone else connecting
  to the server at the same time is counted too (performance_schema, which could tell
  users apart, is off on this server).
- Redis: ``INFO stats`` ``total_connections_received``, server-wide as well, and the Redis
  broker's connections are in it.

The connections used to read the counters are opened once, before any reading, so they
never count. ``bench.connects`` gives the client-side count next to these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import env
from bench.env import Servers

COUNTERS = {
    "postgres": "pg_stat_database.sessions of the case's own database",
    "mysql": "SHOW GLOBAL STATUS 'Connections' (server-wide)",
    "sqlite": "none: SQLite has no server (see the client-side count)",
    "redis": "INFO stats total_connections_received (server-wide: the Redis broker's too)",
}


class ServerCounters:
    """One admin connection per reachable server, kept open for every reading."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self._postgres: Any = None
        self._mysql: Any = None
        self._redis: Any = None

    async def open(self, kinds: set[str]) -> None:
        """Connect to the servers among ``kinds`` (and Redis); an unreachable one reads None."""
        if "postgres" in kinds:
            try:
                import asyncpg

                url = self.servers.admin_url("postgres").set(drivername="postgresql")
                self._postgres = await asyncpg.connect(env.plain_url(url))
            except Exception:
                self._postgres = None
        if "mysql" in kinds:
            try:
                import aiomysql

                url = self.servers.admin_url("mysql")
                self._mysql = await aiomysql.connect(
                    host=url.host or "127.0.0.1", port=url.port or 3306,
                    user=url.username or "root", password=url.password or "", autocommit=True,
                )  # fmt: skip
            except Exception:
                self._mysql = None
        try:
            from redis.asyncio import Redis

            self._redis = Redis(host=self.servers.redis_host, port=self.servers.redis_port)
            await self._redis.ping()
        except Exception:
            self._redis = None

    async def close(self) -> None:
        if self._postgres is not None:
            await self._postgres.close()
        if self._mysql is not None:
            self._mysql.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def postgres_sessions(self, database: str) -> int | None:
        return await self._postgres_stat("sessions", database)

    async def postgres_commits(self, database: str, *, settle: bool = True) -> int | None:
        """Transactions committed in ``database``: with autocommit, one per statement
        the backends send (a coalesced batch is one), what the server did for the run."""
        if not settle:
            return await self._postgres_stat("xact_commit", database)
        return await self._settled(lambda: self._postgres_stat("xact_commit", database))

    async def _postgres_stat(self, column: str, database: str) -> int | None:
        if self._postgres is None:
            return None
        value = await self._postgres.fetchval(
            f"SELECT {column} FROM pg_stat_database WHERE datname = $1", database
        )
        return None if value is None else int(value)

    async def settled_postgres(self, database: str, limit: float = 3.0) -> int | None:
        """The session count once two readings 0.25 s apart agree (at most ``limit`` s)."""
        return await self._settled(lambda: self.postgres_sessions(database), limit)

    @staticmethod
    async def _settled(read: Callable[[], Awaitable[int | None]], limit: float = 3.0) -> int | None:
        # A backend adds to the shared statistics when it goes idle (at most once a
        # second): repeat until two readings 0.25 s apart agree.
        last = await read()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            now = await read()
            if now == last:
                break
            last = now
        return last

    async def mysql_connections(self) -> int | None:
        if self._mysql is None:
            return None
        async with self._mysql.cursor() as cursor:
            await cursor.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            row = await cursor.fetchone()
        return None if row is None else int(row[1])

    async def redis_connections(self) -> int | None:
        if self._redis is None:
            return None
        info = await self._redis.info("stats")
        return int(info["total_connections_received"])

    async def read(
        self, kind: str, database: str | None = None, *, settle: bool = False
    ) -> int | None:
        """The counter for a backend of ``kind`` (``database``: PostgreSQL's)."""
        if kind == "postgres" and database is not None:
            if settle:
                return await self.settled_postgres(database)
            return await self.postgres_sessions(database)
        if kind == "mysql":
            return await self.mysql_connections()
        if kind == "redis":
            return await self.redis_connections()
        return None


def delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def backend_connects(
    counts: dict[str, int], kind: str, servers: Servers, *, sqlite_file: str | None = None,
    redis_db: int | None = None,
) -> int:  # fmt: skip
    """Of a ``bench.connects`` count, the connections a backend of ``kind`` made."""
    if kind == "sqlite":
        return sum(v for k, v in counts.items() if k == f"sqlite:{sqlite_file}")
    if kind == "redis":
        suffix = f":{servers.redis_port}/{redis_db}"
        return sum(v for k, v in counts.items() if k.startswith("redis:") and k.endswith(suffix))
    port = servers.admin_url(kind).port or (5432 if kind == "postgres" else 3306)
    return sum(v for k, v in counts.items() if k.startswith("tcp:") and k.endswith(f":{port}"))

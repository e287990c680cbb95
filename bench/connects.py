"""Connections a process opens, counted where they are made (the client side of sessions).

Server counters are the primary figure, but two of them are global (MariaDB
``Connections``, Redis ``total_connections_received``: anything else using the server
shows up too) and SQLite has none at all. So the bench also counts, inside each of its
processes, every connection the drivers open:

- ``tcp:<host>:<port>``: every asyncio TCP connection (asyncpg, aiomysql, redis-py and
  aio-pika all open theirs through ``loop.create_connection``);
- ``redis:<host>:<port>/<db>``: redis-py connections by database number, which tells a
  Redis backend's connections from the Redis broker's on the same server;
- ``sqlite:<file name>``: every ``sqlite3.connect`` (aiosqlite calls it in its thread).

``install(path)`` in the worker process also rewrites ``path`` (JSON) on every connect,
so the bench can read the worker's counts while it runs.
"""

from __future__ import annotations

import asyncio.base_events
import contextlib
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_dump_path: Path | None = None
_originals: list[tuple[Any, str, Any]] = []  # (owner, attribute, original) while installed


def _count(key: str) -> None:
    with _lock:
        _counts[key] += 1
        if _dump_path is None:
            return
        text = json.dumps(dict(_counts))
        scratch = _dump_path.with_name(f"{_dump_path.name}.{os.getpid()}.tmp")
        scratch.write_text(text)
        os.replace(scratch, _dump_path)  # never a half-written file for the reader


def snapshot() -> dict[str, int]:
    """The counts so far, by key."""
    with _lock:
        return dict(_counts)


def read(path: Path) -> dict[str, int]:
    """Another process's counts, as last written by ``install(path)``; {} before any."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()}


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0)}


def install(dump_path: Path | None = None) -> bool:
    """Wrap the connect functions; True if this call did (``dump_path``: for a subprocess)."""
    global _dump_path
    if dump_path is not None:
        _dump_path = dump_path
    if _originals:
        return False
    base = asyncio.base_events.BaseEventLoop
    create_connection: Any = base.create_connection
    _originals.append((base, "create_connection", create_connection))

    async def counted_create_connection(
        self: asyncio.base_events.BaseEventLoop, *args: Any, **kwargs: Any
    ) -> Any:
        host = kwargs.get("host", args[1] if len(args) > 1 else None)
        port = kwargs.get("port", args[2] if len(args) > 2 else None)
        transport_protocol = await create_connection(self, *args, **kwargs)
        if host is not None:  # sock= connections (no address) are not TCP dials
            _count(f"tcp:{host}:{port}")
        return transport_protocol

    base.create_connection = counted_create_connection  # type: ignore[method-assign]

    connect: Any = sqlite3.connect
    _originals.append((sqlite3, "connect", connect))

    def counted_connect(database: Any, *args: Any, **kwargs: Any) -> Any:
        connection = connect(database, *args, **kwargs)
        _count(f"sqlite:{Path(str(database)).name}")
        return connection

    sqlite3.connect = counted_connect

    with contextlib.suppress(ImportError):
        from redis.asyncio import connection as redis_connection

        tcp = redis_connection.Connection
        redis_connect: Any = tcp._connect
        _originals.append((tcp, "_connect", redis_connect))

        async def counted_redis_connect(self: Any) -> None:
            await redis_connect(self)
            _count(f"redis:{self.host}:{self.port}/{self.db}")

        tcp._connect = counted_redis_connect  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Put the original connect functions back (the counts stay)."""
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """Counting on for the block; off again after it unless someone else had turned it on."""
    installed = install()
    try:
        yield
    finally:
        if installed:
            uninstall()

"""The SQL a backend's driver connections send, recorded at the driver.

DatabaseBackend runs its hot statements on the pooled driver connection, below
SQLAlchemy's cursor events, so the statements are recorded where every path meets: in
aiomysql's one command writer (every command on the wire), aiosqlite's one queue to its
SQLite thread (every statement, commit and rollback), and asyncpg's query
logger (execute and fetch, its transactions' BEGIN/COMMIT included) plus SQLAlchemy's
``before_cursor_execute`` for the prepared statements SQLAlchemy runs on asyncpg, which
the query logger does not see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomysql
from sqlalchemy import event

from chicory_backends.sql.backend import DatabaseBackend

# What aiosqlite hands its thread that runs SQL: sqlite3's own and its helpers.
_SQLITE_STATEMENTS = frozenset(
    {"execute", "executemany", "executescript", "_execute_fetchall", "_execute_insert"}
)


@asynccontextmanager
async def sent_statements(
    backend: DatabaseBackend, *, templates: bool = False
) -> AsyncIterator[list[str]]:
    """The statements sent while in the block.

    ``templates``: on MySQL, the statements as the driver is given them, placeholders and
    parameters apart, instead of as sent (aiomysql interpolates the parameters itself).
    """
    assert backend._engine is not None
    if backend._executor is not None:  # the writes' connection: checked out again, seen
        await backend._executor.release_held()
    engine = backend._engine.sync_engine
    driver_name = engine.dialect.driver
    seen: list[str] = []
    undo: dict[int, Callable[[], Any]] = {}

    def record(sql: Any) -> None:
        seen.append(sql.decode() if isinstance(sql, bytes) else str(sql))

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if id(driver) in undo:
            return
        if driver_name == "asyncpg":

            def log(query: Any) -> None:
                record(query.query)

            driver.add_query_logger(log)
            undo[id(driver)] = lambda: driver.remove_query_logger(log)
        elif driver_name == "aiomysql" and not templates:
            send = driver._execute_command

            async def counted(command: int, sql: Any) -> Any:
                record(sql)
                return await send(command, sql)

            driver._execute_command = counted
            undo[id(driver)] = lambda: delattr(driver, "_execute_command")
        elif driver_name == "aiosqlite":
            queue = driver._execute

            async def queued(fn: Any, *args: Any, **kwargs: Any) -> Any:
                name = getattr(fn, "__name__", "")
                if name in _SQLITE_STATEMENTS:
                    record(args[0])
                elif name in ("commit", "rollback"):
                    record(name.upper())
                return await queue(fn, *args, **kwargs)

            driver._execute = queued
            undo[id(driver)] = lambda: delattr(driver, "_execute")

    def on_cursor_execute(*args: Any) -> None:
        record(args[2])

    # Other drivers (aioodbc) only ever run under SQLAlchemy, whose events see it all.
    cursor_events = driver_name not in ("aiomysql", "aiosqlite")
    event.listen(engine, "checkout", on_checkout)
    execute_template = aiomysql.Cursor.execute
    if driver_name == "aiomysql" and templates:

        async def execute(cursor: Any, query: str, args: Any = None) -> Any:
            record(query)
            return await execute_template(cursor, query, args)

        aiomysql.Cursor.execute = execute
    if cursor_events:
        event.listen(engine, "before_cursor_execute", on_cursor_execute)
    try:
        yield seen
        await asyncio.sleep(0)  # asyncpg calls its query loggers soon, not at once
    finally:
        event.remove(engine, "checkout", on_checkout)
        aiomysql.Cursor.execute = execute_template
        if cursor_events:
            event.remove(engine, "before_cursor_execute", on_cursor_execute)
        for undo_one in undo.values():
            done = undo_one()
            if asyncio.iscoroutine(done):
                await done

"""SQLAlchemy statements compiled once into the driver's own SQL, for the hot path.

Executing through a SQLAlchemy Connection costs about as much CPU per call as the driver
itself (cache lookup, execution context, result wrapping). The hot single-row statements
never change shape, so they are compiled once per dialect here and then run on the pooled
driver connection with a positional argument list, converted by the same bind processors
SQLAlchemy would apply (SQLite, for instance, stores datetimes in SQLAlchemy's format).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

# Drivers the fast path knows how to call; others (SQL Server's aioodbc) keep SQLAlchemy.
FAST_DRIVERS = ("asyncpg", "aiomysql", "aiosqlite")


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """One statement as the driver takes it: SQL text and how to build its arguments."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            params[name] if process is None else process(params[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )


def compile_for_driver(statement: Executable, dialect: Dialect) -> DriverStatement | None:
    """``statement`` as driver SQL, or None when it cannot be run that way (its shape
    depends on the parameters, or the driver is not one the fast path calls)."""
    if dialect.driver not in FAST_DRIVERS:
        return None
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if compiled.positiontup is None or any(
        bind.expanding
        or bind.literal_execute
        or bind.value is not None
        or bind.callable is not None
        for bind in compiled.binds.values()
    ):
        return None
    names = tuple(compiled.positiontup)
    processors: list[Callable[[Any], Any] | None] = []
    for name in names:
        process = compiled._bind_processors.get(name)
        if process is not None and not callable(process):  # a tuple's, per element
            return None
        processors.append(process)
    return DriverStatement(sql=compiled.string, names=names, processors=tuple(processors))


async def run_on_driver(
    driver_name: str, driver: Any, statement: DriverStatement, args: tuple[Any, ...], fetch: bool
) -> int | list[Any]:
    """``statement`` on one driver connection: its rows as tuples, or its rowcount."""
    sql = statement.sql
    if driver_name == "asyncpg":
        if fetch:
            return [tuple(record) for record in await driver.fetch(sql, *args)]
        return _status_rowcount(await driver.execute(sql, *args))
    if driver_name == "aiomysql":
        async with driver.cursor() as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall()) if fetch else int(cursor.rowcount)
    if fetch:  # aiosqlite: one hop to its thread instead of cursor, execute, fetch, close
        return list(await driver.execute_fetchall(sql, args))
    cursor = await driver.execute(sql, args)
    try:
        return int(cursor.rowcount)
    finally:
        await cursor.close()


async def run_many_on_driver(
    driver_name: str, driver: Any, statement: DriverStatement, rows: list[tuple[Any, ...]]
) -> None:
    """``statement`` once per row, as one round trip and one commit where the driver can.

    asyncpg pipelines the executions and makes them atomic; aiomysql rewrites an
    ``INSERT .. VALUES (..) ON DUPLICATE KEY UPDATE`` into one multi-row statement;
    aiosqlite runs them in one transaction, so the batch costs one commit, not one a row.
    """
    sql = statement.sql
    if driver_name == "asyncpg":
        await driver.executemany(sql, rows)
    elif driver_name == "aiomysql":
        async with driver.cursor() as cursor:
            await cursor.executemany(sql, rows)
    else:
        await driver.execute("BEGIN IMMEDIATE")
        try:
            await driver.executemany(sql, rows)
        except BaseException:
            await driver.rollback()
            raise
        await driver.commit()


def _status_rowcount(status: str) -> int:
    """The row count at the end of a PostgreSQL command tag (``DELETE 3``, ``INSERT 0 1``)."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else -1

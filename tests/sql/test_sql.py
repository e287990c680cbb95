"""What the SQL backend promises beyond the contract: statements, cleanup, errors, dialects."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateTable

from chicory_backends import (
    BackendUnreachableError,
    PoolExhaustedError,
    TaskResult,
    TaskState,
)
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.dialects import statements_for
from chicory_backends.sql.schema import task_results
from tests.contract.test_contract import stats
from tests.support.backends import MakeBackend
from tests.support.sent_sql import sent_statements
from tests.support.services import free_port, require_odbc

SECRET = "pa55-Zq9-distinctive"


# These tests are about the SQL backends only: narrow the suite-wide fixtures to them.
@pytest.fixture
async def make_backend(make_sql_backend: MakeBackend) -> MakeBackend:
    return make_sql_backend


@pytest.fixture
async def backend(sql_backend: DatabaseBackend) -> DatabaseBackend:
    return sql_backend


async def test_each_operation_is_one_statement(backend: DatabaseBackend) -> None:
    task_id = f"t-{uuid.uuid4()}"
    result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"value": 1})
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: backend.set_state(task_id, TaskState.STARTED),
        lambda: backend.store_result(task_id, result),
        lambda: backend.get_result(task_id),
        lambda: backend.get_results([task_id, "other"]),
        lambda: backend.delete_result(task_id),
        lambda: backend.store_heartbeat(task_id, stats(task_id)),
        lambda: backend.get_heartbeat(task_id),
        lambda: backend.get_active_workers(),
    ]
    # Warm up: connecting runs set-up queries, and asyncpg looks up each parameter type
    # it has not met before (varchar[]) once per connection. As below, the writes' held
    # connection goes back to the pool before each operation, so all run on one connection.
    for operation in operations:
        if backend._executor is not None:
            await backend._executor.release_held()
        await operation()
    for operation in operations:
        async with sent_statements(backend) as seen:
            await operation()
        assert len(seen) == 1, seen
        assert not any(s.strip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")) for s in seen)


async def _insert_rows(
    backend: DatabaseBackend, count: int, updated: datetime, expires: datetime | None
) -> None:
    assert backend._engine is not None
    rows = [
        {
            "task_id": f"old-{uuid.uuid4()}",
            "state": "SUCCESS",
            "result": None,
            "error": None,
            "traceback": None,
            "created_at": updated,
            "updated_at": updated,
            "expires_at": expires,
        }
        for _ in range(count)
    ]
    async with backend._engine.connect() as connection:
        await connection.execute(insert(task_results), rows)


async def test_cleanup_deletes_in_bounded_batches(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = await make_backend(cleanup_batch_size=10)
    now = datetime.now(UTC)
    await _insert_rows(backend, 25, now - timedelta(days=2), None)  # old
    await _insert_rows(backend, 12, now, now - timedelta(seconds=5))  # expired
    keep = f"t-{uuid.uuid4()}"
    await backend.store_result(keep, TaskResult(task_id=keep, state=TaskState.SUCCESS))
    async with sent_statements(backend) as seen:
        deleted = await backend.cleanup_old_results(older_than_seconds=86400)
    assert deleted == 37
    # 12 expired: batches of 10 + 2; 25 old: 10 + 10 + 5
    deletes = [s for s in seen if s.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 5 and len(seen) == 5
    assert await backend.get_result(keep) is not None
    assert await backend.cleanup_old_results(older_than_seconds=86400) == 0


async def test_cleanup_on_a_never_connected_backend(backend: DatabaseBackend) -> None:
    await _insert_rows(backend, 3, datetime.now(UTC) - timedelta(days=3), None)
    cron = DatabaseBackend(backend.config)
    assert await cron.cleanup_old_results(86400) == 3
    assert cron._engine is None  # it closed what it opened
    assert await DatabaseBackend(backend.config).cleanup_stale_clients(60) == 0


async def test_timestamps_keep_microseconds(backend: DatabaseBackend) -> None:
    assert backend._engine is not None
    moment = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    await _insert_rows(backend, 1, moment, None)
    async with backend._engine.connect() as connection:
        stored = (
            await connection.execute(select(func.max(task_results.c.updated_at)))
        ).scalar_one()
    assert stored.replace(tzinfo=UTC) == moment


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_pool_exhaustion_is_reported_then_recovers(sql_databases, kind: str) -> None:  # type: ignore[no-untyped-def]
    config = sql_databases(kind).model_copy(
        update={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    )
    async with DatabaseBackend(config) as backend:
        assert backend._engine is not None
        holder = await backend._engine.connect()
        try:
            with pytest.raises(PoolExhaustedError, match="pool_size=1"):
                await backend.get_result("anything")
        finally:
            await holder.close()
        assert await backend.get_result("anything") is None


@pytest.mark.parametrize(
    "config",
    [
        PostgresBackendConfig(host="127.0.0.1", username="u", password=SECRET, connect_timeout=3),
        MySQLBackendConfig(host="127.0.0.1", username="u", password=SECRET, connect_timeout=3),
    ],
    ids=["postgres", "mysql"],
)
async def test_closed_port_is_unreachable_fast(config: PostgresBackendConfig) -> None:
    port = free_port()
    config = config.model_copy(update={"port": port})
    started = time.monotonic()
    with pytest.raises(BackendUnreachableError) as raised:
        await DatabaseBackend(config).connect()
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert SECRET not in repr(config) and SECRET not in repr(DatabaseBackend(config))


async def test_mssql_closed_port_is_unreachable_fast() -> None:
    require_odbc("FreeTDS")
    port = free_port()
    config = MSSQLBackendConfig(
        host="127.0.0.1", port=port, password=SECRET, driver="FreeTDS", connect_timeout=3
    )
    started = time.monotonic()
    with pytest.raises(BackendUnreachableError, match=f"127.0.0.1:{port}") as raised:
        await DatabaseBackend(config).connect()
    assert time.monotonic() - started < 10
    assert SECRET not in str(raised.value)


def test_mssql_statements_compile() -> None:
    dialect = mssql.dialect(deprecate_large_types=True)
    ddl = str(CreateTable(task_results).compile(dialect=dialect))
    assert "DATETIMEOFFSET(6)" in ddl and "NVARCHAR(max)" in ddl
    assert " TEXT" not in ddl and "NTEXT" not in ddl
    merge = str(statements_for(dialect).store_result.statement.compile(dialect=dialect))
    assert merge.startswith("MERGE chicory_task_results WITH (HOLDLOCK)")
    # The guard (terminal rule and attempts) is the WHEN MATCHED condition, once.
    assert (
        "WHEN MATCHED AND (s.state IN ('DEAD_LETTERED', 'FAILURE', 'SUCCESS') OR "
        "(t.state NOT IN ('DEAD_LETTERED', 'FAILURE', 'SUCCESS'))) AND s.attempts >= t.attempts "
        "THEN UPDATE SET"
    ) in merge
    assert "name = coalesce(t.name, s.name)" in merge and "state = s.state" in merge
    assert "WHEN NOT MATCHED THEN INSERT" in merge
    cleanup = str(
        statements_for(dialect, 500).delete_old_results.statement.compile(dialect=dialect)
    )
    assert "TOP 500" in cleanup or "TOP __[POSTCOMPILE" in cleanup


async def test_sqlite_is_wal_with_busy_timeout(sql_databases) -> None:  # type: ignore[no-untyped-def]
    backend = DatabaseBackend(sql_databases("sqlite"))
    async with backend:
        assert backend._engine is not None
        async with backend._engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
            timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
    assert mode == "wal" and timeout == 5000


async def test_sqlite_in_memory_works() -> None:
    backend = DatabaseBackend(SQLiteBackendConfig(file_path=":memory:", auto_migrate=True))
    async with backend:
        await backend.store_result("m", TaskResult(task_id="m", state=TaskState.SUCCESS, result=1))
        got = await backend.get_result("m")
        assert got is not None and got.result == 1


_WRITER = """
import asyncio, sys
from chicory_backends import TaskResult, TaskState
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.sql.backend import DatabaseBackend

async def main(path, name):
    backend = DatabaseBackend(SQLiteBackendConfig(file_path=path))
    async with backend:
        for i in range(300):
            task_id = f"{name}-{i}"
            await backend.set_state(task_id, TaskState.STARTED)
            result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=i)
            await backend.store_result(task_id, result)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_processes_write_one_sqlite_file(sql_databases) -> None:  # type: ignore[no-untyped-def]
    path = sql_databases("sqlite").sqlalchemy_url().database
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WRITER,
            path,
            f"proc{n}-{uuid.uuid4()}",
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    outputs = [await writer.communicate() for writer in writers]
    for writer, (_, stderr) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, stderr.decode()
        assert b"locked" not in stderr
    backend = DatabaseBackend(sql_databases("sqlite"))
    async with backend:
        assert backend._engine is not None
        async with backend._engine.connect() as connection:
            count = (
                await connection.execute(
                    select(func.count()).where(task_results.c.task_id.like("proc%"))
                )
            ).scalar_one()
    assert count == 600


def test_package_ships_no_pickle_or_eval() -> None:
    package = Path(__file__).resolve().parents[2] / "chicory_backends"
    for source in package.rglob("*.py"):
        code = source.read_text()
        for banned in ("import pickle", "import marshal", "eval(", "exec("):
            assert banned not in code, f"{banned} in {source}"

"""Adopting a database that Chicory 0.1.0's own DatabaseBackend wrote, and giving it back.

Every "before" state is written by Chicory's own backend classes (chicory.backend.database),
never by hand-written SQL, so these tests follow what Chicory really stores.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from chicory.backend.database import DatabaseBackend as ChicoryDatabaseBackend
from chicory.config import MySQLBackendConfig as ChicoryMySQL
from chicory.config import PostgresBackendConfig as ChicoryPostgres
from chicory.config import SQLiteBackendConfig as ChicorySQLite
from chicory.types import TaskResult as ChicoryResult
from chicory.types import TaskState as ChicoryState
from chicory.types import WorkerStats as ChicoryStats
from sqlalchemy import inspect, text

from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import SchemaNotReadyError
from chicory_backends.result import AsyncResult
from chicory_backends.sql.adopt import ADOPTION_TABLE
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.engine import create_engine
from chicory_backends.sql.migrate import alembic_config
from chicory_backends.types import TaskResult, TaskState, WorkerStats
from tests.support.sql_databases import SQL_KINDS, drop_database, fresh_config, run_database_name

# Values whose JSON type a careless reader changes: strings that look like JSON above all.
VALUES: list[Any] = [
    "42", "true", "[1, 2]", "null", "", "{\"x\": 1}", "ünïcode ✓ 日本", None, True, False,
    0, -7, 10**20, 1.0, -1.5, [1, "2", None], {"a": [1, {"b": None}], "c": "d"}, [], {},
]  # fmt: skip


def _url(config: SQLBackendConfig) -> str:
    return config.sqlalchemy_url().render_as_string(hide_password=False)


def chicory_backend_for(config: SQLBackendConfig) -> ChicoryDatabaseBackend:
    """Chicory's own backend on the same database."""
    url = _url(config)
    if url.startswith("sqlite"):
        return ChicoryDatabaseBackend(ChicorySQLite(url=url))
    if url.startswith("postgresql"):
        return ChicoryDatabaseBackend(ChicoryPostgres(url=url))
    return ChicoryDatabaseBackend(ChicoryMySQL(url=url))


@pytest.fixture(params=SQL_KINDS)
def chicory_database(request: pytest.FixtureRequest) -> Iterator[SQLBackendConfig]:
    """An empty database of each kind; the test seeds it with Chicory's backend."""
    kind: str = request.param
    name = run_database_name("adopt")
    config = fresh_config(kind, name)
    try:
        yield config
    finally:
        drop_database(kind, name)


async def seed_with_chicory(config: SQLBackendConfig) -> dict[str, ChicoryResult[Any] | None]:
    """Chicory's own backend writes tasks in every state and two heartbeats; returns what
    Chicory's own get_result reads back for each task."""
    chicory = chicory_backend_for(config)
    await chicory.connect()
    try:
        for number, value in enumerate(VALUES):
            await chicory.set_state(f"ok-{number}", ChicoryState.STARTED)
            await chicory.store_result(
                f"ok-{number}",
                ChicoryResult(task_id=f"ok-{number}", state=ChicoryState.SUCCESS, result=value),
            )
        for state in (ChicoryState.PENDING, ChicoryState.STARTED, ChicoryState.RETRY):
            await chicory.set_state(f"open-{state.value}", state)
        for state in (ChicoryState.FAILURE, ChicoryState.DEAD_LETTERED):
            await chicory.store_result(
                f"bad-{state.value}",
                ChicoryResult(
                    task_id=f"bad-{state.value}",
                    state=state,
                    error="ValueError: ünïcode",
                    traceback="Traceback (most recent call last):\n  boom",
                ),
            )
        for number in range(2):
            await chicory.store_heartbeat(
                f"chicory-worker-{number}",
                ChicoryStats(
                    worker_id=f"chicory-worker-{number}",
                    hostname="host",
                    pid=100 + number,
                    queue="default",
                    concurrency=32,
                    tasks_processed=number,
                    started_at=datetime.now(UTC),
                ),
                ttl=300,
            )
        ids = [f"ok-{n}" for n in range(len(VALUES))]
        ids += [f"open-{s}" for s in ("PENDING", "STARTED", "RETRY")]
        ids += [f"bad-{s}" for s in ("FAILURE", "DEAD_LETTERED")]
        return {task_id: await chicory.get_result(task_id) for task_id in ids}
    finally:
        await chicory.disconnect()


def assert_same(ours: TaskResult | None, theirs: ChicoryResult[Any] | None) -> None:
    assert ours is not None and theirs is not None
    assert ours.state.value == theirs.state.value
    assert ours.result == theirs.result
    assert type(ours.result) is type(theirs.result), (ours.result, theirs.result)
    assert (ours.error, ours.traceback) == (theirs.error, theirs.traceback)


async def _read_all_through_ours(
    config: SQLBackendConfig, expected: dict[str, ChicoryResult[Any] | None]
) -> None:
    async with DatabaseBackend(config) as ours:
        for task_id, theirs in expected.items():
            assert_same(await ours.get_result(task_id), theirs)
            if task_id.startswith("ok-"):
                value = await AsyncResult(task_id, ours).get(timeout=5)
                assert theirs is not None and value == theirs.result
                assert type(value) is type(theirs.result)
            record = await ours.get_task(task_id)
            assert record is not None and theirs is not None
            assert record.result == theirs.result and type(record.result) is type(theirs.result)
            assert record.error == theirs.error and record.created_at is not None
        many = await ours.get_results(expected)
        for task_id, theirs in expected.items():
            assert_same(many[task_id], theirs)
        page = await ours.list_tasks(limit=200)
        listed = {record.task_id: record for record in page.items}
        assert set(expected) <= set(listed)
        assert listed["bad-FAILURE"].error == "ValueError: ünïcode"
        workers = {stats.worker_id for stats in await ours.get_active_workers()}
        assert workers == {"chicory-worker-0", "chicory-worker-1"}


def test_upgrade_head_adopts_chicory_tables(chicory_database: SQLBackendConfig) -> None:
    """`alembic upgrade head` on Chicory's tables: every result and heartbeat reads back
    identical in state, value and type; `alembic check` then finds no drift."""
    expected = asyncio.run(seed_with_chicory(chicory_database))
    with pytest.raises(SchemaNotReadyError, match=r"Chicory 0\.1\.0's own tables"):
        asyncio.run(DatabaseBackend(chicory_database).connect())

    cfg = alembic_config(_url(chicory_database))
    command.upgrade(cfg, "head")
    command.check(cfg)
    asyncio.run(_read_all_through_ours(chicory_database, expected))


def test_auto_migrate_adopts_and_ours_writes_over_adopted_rows(
    chicory_database: SQLBackendConfig,
) -> None:
    """auto_migrate=True adopts too; a store of ours replaces an adopted row, and a late
    STARTED of ours never replaces the SUCCESS Chicory stored."""
    expected = asyncio.run(seed_with_chicory(chicory_database))

    async def run() -> None:
        config = chicory_database.model_copy(update={"auto_migrate": True})
        async with DatabaseBackend(config) as ours:
            await ours.set_state("ok-0", TaskState.STARTED)  # refused: SUCCESS is terminal
            assert_same(await ours.get_result("ok-0"), expected["ok-0"])
            await ours.store_result(
                "open-STARTED",
                TaskResult(task_id="open-STARTED", state=TaskState.SUCCESS, result="7"),
            )
            stored = await ours.get_result("open-STARTED")
            assert stored is not None and stored.result == "7"
            assert stored.state is TaskState.SUCCESS

    asyncio.run(run())


def test_downgrade_gives_chicory_its_layout_back(chicory_database: SQLBackendConfig) -> None:
    """Below the adoption, Chicory's own backend reads every result: those it wrote and
    those ours wrote since, each with its type."""
    expected = asyncio.run(seed_with_chicory(chicory_database))
    cfg = alembic_config(_url(chicory_database))
    command.upgrade(cfg, "head")

    async def write_with_ours() -> None:
        async with DatabaseBackend(chicory_database) as ours:
            for number, value in enumerate(VALUES):
                await ours.store_result(
                    f"ours-{number}",
                    TaskResult(task_id=f"ours-{number}", state=TaskState.SUCCESS, result=value),
                )
            await ours.set_state("ours-pending", TaskState.PENDING)

    asyncio.run(write_with_ours())
    command.downgrade(cfg, "base")

    async def read_with_chicory() -> None:
        chicory = chicory_backend_for(chicory_database)
        await chicory.connect()
        try:
            for task_id, theirs in expected.items():
                again = await chicory.get_result(task_id)
                assert again is not None and theirs is not None
                assert again.model_dump() == theirs.model_dump()
            for number, value in enumerate(VALUES):
                theirs = await chicory.get_result(f"ours-{number}")
                assert theirs is not None and theirs.state == ChicoryState.SUCCESS
                assert theirs.result == value and type(theirs.result) is type(value)
            pending = await chicory.get_result("ours-pending")
            assert pending is not None and pending.state == ChicoryState.PENDING
            workers = {s.worker_id for s in await chicory.get_active_workers()}
            assert workers == {"chicory-worker-0", "chicory-worker-1"}
        finally:
            await chicory.disconnect()

    asyncio.run(read_with_chicory())
    engine_tables = asyncio.run(_tables(chicory_database))
    assert ADOPTION_TABLE not in engine_tables
    # And back up again: the same adoption, nothing lost or doubled.
    command.upgrade(cfg, "head")
    asyncio.run(_read_all_through_ours(chicory_database, expected))


async def _tables(config: SQLBackendConfig) -> set[str]:
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def test_offline_sql_shows_the_adoption() -> None:
    """`alembic upgrade head --sql -x adopt=chicory` writes the adoption's steps for a DBA,
    on every dialect, SQL Server included."""
    for url in (
        "postgresql+asyncpg://u@h/db",
        "mysql+aiomysql://u@h/db",
        "sqlite+aiosqlite:///x.db",
        "mssql+aioodbc://u@h/db?driver=FreeTDS",
    ):
        cfg = alembic_config(url)
        cfg.cmd_opts = type("Options", (), {"x": ["adopt=chicory"]})()  # type: ignore[assignment]
        buffer = io.StringIO()
        cfg.output_buffer = buffer
        command.upgrade(cfg, "head", sql=True)
        script = buffer.getvalue()
        assert "CREATE TABLE chicory_task_results" not in script, url
        assert "ADD" in script and "result" in script and ADOPTION_TABLE in script, url


def test_rerun_after_a_failed_adoption_finishes_it(chicory_database: SQLBackendConfig) -> None:
    """A statement made to fail halfway (the marker table already there, as a crash after
    the DDL would leave it on a database that commits each DDL): the first run fails, the
    same command run again finishes, nothing lost."""
    expected = asyncio.run(seed_with_chicory(chicory_database))

    async def block() -> None:
        engine = create_engine(chicory_database)
        try:
            async with engine.connect() as connection:
                await connection.execute(text(f"CREATE VIEW {ADOPTION_TABLE} AS SELECT 1 AS x"))
        finally:
            await engine.dispose()

    async def unblock() -> None:
        engine = create_engine(chicory_database)
        try:
            async with engine.connect() as connection:
                await connection.execute(text(f"DROP VIEW {ADOPTION_TABLE}"))
        finally:
            await engine.dispose()

    asyncio.run(block())
    cfg = alembic_config(_url(chicory_database))
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        command.upgrade(cfg, "head")
    asyncio.run(unblock())
    command.upgrade(cfg, "head")
    command.check(cfg)
    asyncio.run(_read_all_through_ours(chicory_database, expected))


def _cli(config: SQLBackendConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chicory_backends.cli", "--url", _url(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_check_migrate_and_health(chicory_database: SQLBackendConfig) -> None:
    """`health` fails on Chicory's tables naming them and the fix; `migrate --check` shows
    the plan and changes nothing; `migrate` adopts with a line per step; then health is 0."""
    asyncio.run(seed_with_chicory(chicory_database))
    health = _cli(chicory_database, "health")
    assert health.returncode == 1
    assert "Chicory 0.1.0's own tables" in health.stderr and "migrate" in health.stderr

    check = _cli(chicory_database, "migrate", "--check")
    assert check.returncode == 1, check.stderr
    assert "Chicory 0.1.0's own tables" in check.stdout
    assert f"chicory_task_results: {len(VALUES) + 5} rows" in check.stdout
    assert "0001:" in check.stdout and "estimated time" in check.stdout
    assert _cli(chicory_database, "migrate", "--check").stdout == check.stdout  # unchanged

    migrate = _cli(chicory_database, "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "migrate: applied 0001" in migrate.stderr
    assert "adopted Chicory 0.1.0's own tables in place" in migrate.stdout
    assert f"({len(VALUES) + 5} rows of chicory_task_results, 2 rows of" in migrate.stdout
    assert _cli(chicory_database, "health").returncode == 0
    assert _cli(chicory_database, "migrate", "--check").returncode == 0


def test_health_fails_on_a_stamped_schema_that_is_not_there(
    chicory_database: SQLBackendConfig,
) -> None:
    """`alembic stamp head` on Chicory's tables: the version table lies, health says so."""
    asyncio.run(seed_with_chicory(chicory_database))
    command.stamp(alembic_config(_url(chicory_database)), "head")
    health = _cli(chicory_database, "health")
    assert health.returncode == 1
    assert "Chicory 0.1.0's own tables" in health.stderr

    async def empty_stamped() -> None:
        engine = create_engine(chicory_database)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("DROP TABLE chicory_task_results"))
                await connection.execute(text("DROP TABLE chicory_worker_heartbeats"))
        finally:
            await engine.dispose()

    asyncio.run(empty_stamped())
    health = _cli(chicory_database, "health")
    assert health.returncode == 1
    assert "version table says revision" in health.stderr and "stamp base" in health.stderr


def test_write_chicory_format_lets_chicory_clients_read_ours(
    chicory_database: SQLBackendConfig,
) -> None:
    """With write_chicory_format, Chicory's own client reads every result and heartbeat
    ours writes on the adopted table, each value with its type; without, ours still
    reads its own rows exactly."""
    asyncio.run(seed_with_chicory(chicory_database))
    command.upgrade(alembic_config(_url(chicory_database)), "head")

    async def run() -> None:
        config = chicory_database.model_copy(update={"write_chicory_format": True})
        async with DatabaseBackend(config) as ours:
            for number, value in enumerate(VALUES):
                await ours.store_result(
                    f"both-{number}",
                    TaskResult(task_id=f"both-{number}", state=TaskState.SUCCESS, result=value),
                )
                stored = await ours.get_result(f"both-{number}")
                assert stored is not None and stored.result == value
                assert type(stored.result) is type(value)
            await ours.store_heartbeat(
                "our-worker",
                WorkerStats(
                    worker_id="our-worker",
                    hostname="h",
                    pid=1,
                    queue="default",
                    concurrency=1,
                    started_at=datetime.now(UTC),
                ),
                ttl=300,
            )
        chicory = chicory_backend_for(chicory_database)
        await chicory.connect()
        try:
            for number, value in enumerate(VALUES):
                theirs = await chicory.get_result(f"both-{number}")
                assert theirs is not None and theirs.state == ChicoryState.SUCCESS
                assert theirs.result == value and type(theirs.result) is type(value)
            workers = {stats.worker_id for stats in await chicory.get_active_workers()}
            assert "our-worker" in workers
        finally:
            await chicory.disconnect()

    asyncio.run(run())


def test_adoption_killed_halfway_is_finished_by_the_same_command(
    chicory_database: SQLBackendConfig,
) -> None:
    """SIGKILL of `chicory-backends migrate` as soon as its first revision is applied
    (the adoption's DDL done, the rest not): the same command run again finishes, and
    every result Chicory stored reads back unchanged."""
    expected = asyncio.run(seed_with_chicory(chicory_database))
    process = subprocess.Popen(
        [sys.executable, "-m", "chicory_backends.cli", "--url", _url(chicory_database), "migrate"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        assert line.startswith("migrate: applied 0001"), line
        process.kill()
    finally:
        process.wait(timeout=60)
    assert process.returncode != 0
    assert _cli(chicory_database, "health").returncode == 1  # not usable yet, and says so

    again = _cli(chicory_database, "migrate")
    assert again.returncode == 0, again.stderr
    command.check(alembic_config(_url(chicory_database)))
    asyncio.run(_read_all_through_ours(chicory_database, expected))

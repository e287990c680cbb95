"""Workers starting at once on a new database with auto_migrate=True: every one connects.

One migrates, the others wait for the migration lock (across processes: the database's
lock, a lock file for SQLite) or for the process-wide upgrade lock (Alembic keeps the
running migration in module globals), then find the schema at head.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from chicory_backends.config import SQLBackendConfig, SQLiteBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.engine import create_engine
from chicory_backends.sql.migrate import current_revision, sqlite_lock_path
from chicory_backends.sql.schema import SCHEMA_REVISION, metadata
from chicory_backends.types import TaskResult, TaskState
from tests.support.sql_databases import SQL_KINDS, drop_database, fresh_config, run_database_name

ROOT = Path(__file__).resolve().parents[2]
STARTERS = 4

# Imports, creates the backend, says "ready", and connects only when told to: all the
# processes reach connect() together instead of one by one as they finish starting.
STARTER = """
import asyncio, sys
from chicory_backends import create_backend

async def main() -> None:
    backend = create_backend()
    print("ready", flush=True)
    sys.stdin.readline()
    await backend.connect()
    await backend.disconnect()
    print("connected", flush=True)

asyncio.run(main())
"""


@pytest.fixture(params=SQL_KINDS)
def new_database(request: pytest.FixtureRequest) -> Iterator[SQLBackendConfig]:
    """A new, empty database (SQLite: a file not yet created), with auto_migrate=True."""
    kind: str = request.param
    name = run_database_name("startup_races")
    config = fresh_config(kind, name, auto_migrate=True)
    try:
        yield config
    finally:
        drop_database(kind, name)


async def assert_schema_at_head(config: SQLBackendConfig) -> None:
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            assert set(metadata.tables) <= tables
            assert await current_revision(connection) == SCHEMA_REVISION
    finally:
        await engine.dispose()


async def assert_usable(backend: DatabaseBackend, task_id: str) -> None:
    result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=1)
    await backend.store_result(task_id, result)
    stored = await backend.get_result(task_id)
    assert stored is not None and stored.state is TaskState.SUCCESS


def kind_of(config: SQLBackendConfig) -> str:
    return {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}[
        config.sqlalchemy_url().get_backend_name()
    ]


@pytest.mark.slow
def test_processes_starting_at_once(new_database: SQLBackendConfig) -> None:
    kind = kind_of(new_database)
    url = new_database.sqlalchemy_url().render_as_string(hide_password=False)
    prefix = f"CHICORY_BACKEND_{kind.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}
    env |= {"CHICORY_BACKEND_TYPE": kind, f"{prefix}URL": url, f"{prefix}AUTO_MIGRATE": "true"}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(STARTERS)
    ]
    try:
        for starter in starters:
            assert starter.stdout is not None
            assert starter.stdout.readline() == "ready\n", starter.communicate()[1]
        for starter in starters:
            assert starter.stdin is not None
            starter.stdin.write("go\n")
            starter.stdin.flush()
        outputs = [starter.communicate(timeout=60) for starter in starters]
    finally:
        for starter in starters:
            starter.kill()
            starter.wait()
    for starter, (out, err) in zip(starters, outputs, strict=True):
        assert starter.returncode == 0, err
        assert out == "connected\n", err
    asyncio.run(assert_schema_at_head(new_database))


async def test_tasks_connecting_one_backend_at_once(new_database: SQLBackendConfig) -> None:
    backend = DatabaseBackend(new_database)
    try:
        await asyncio.gather(*(backend.connect() for _ in range(3)))
        await assert_usable(backend, "one-object")
    finally:
        await backend.disconnect()
    await assert_schema_at_head(new_database)


async def test_tasks_connecting_separate_backends_at_once(
    new_database: SQLBackendConfig,
) -> None:
    backends = [DatabaseBackend(new_database) for _ in range(3)]
    try:
        await asyncio.gather(*(backend.connect() for backend in backends))
        for number, backend in enumerate(backends):
            await assert_usable(backend, f"separate-{number}")
    finally:
        for backend in backends:
            await backend.disconnect()
    await assert_schema_at_head(new_database)


def test_event_loops_of_two_threads_connecting_at_once(new_database: SQLBackendConfig) -> None:
    """The upgrade lock is process-wide, not per event loop."""
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    async def connect() -> None:
        async with DatabaseBackend(new_database):
            pass

    def run() -> None:
        start.wait()
        try:
            asyncio.run(connect())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    asyncio.run(assert_schema_at_head(new_database))


def open_by(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_two_alembic_upgrades_at_once_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """Like the PostgreSQL/MariaDB test in test_migrations: the test holds the lock until
    both `alembic upgrade head` processes wait on it, so they really contend."""
    database = tmp_path / "new.db"
    lock_path = sqlite_lock_path(str(database))
    assert lock_path is not None
    command = [
        sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"),
        "-x", f"url=sqlite+aiosqlite:///{database}", "upgrade", "head",
    ]  # fmt: skip
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        upgrades = [
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while not all(open_by(upgrade.pid, lock_path) for upgrade in upgrades):
            exited = [upgrade for upgrade in upgrades if upgrade.poll() is not None]
            assert not exited, exited[0].communicate()[1].decode()
            assert time.monotonic() < deadline, "alembic never reached the migration lock"
            time.sleep(0.05)
        config = SQLiteBackendConfig(file_path=str(database))
        tables = asyncio.run(_our_tables(config))
        assert tables == set(), "a migrator went past the lock"
    finally:
        os.close(holder)
    outputs = [upgrade.communicate(timeout=60) for upgrade in upgrades]
    for upgrade, (_out, err) in zip(upgrades, outputs, strict=True):
        assert upgrade.returncode == 0, err.decode()
    asyncio.run(assert_schema_at_head(config))


async def _our_tables(config: SQLBackendConfig) -> set[str]:
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return names & set(metadata.tables)

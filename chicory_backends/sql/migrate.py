"""Schema revisions: check at connect(), upgrade in-process on request, one migrator at a time."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util.concurrency import await_, in_greenlet

from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import SchemaNotReadyError
from chicory_backends.sql.dialects import migration_lock_for

# Our own version table, so our revisions never mix with those of an application that
# keeps its own Alembic history in the same database.
VERSION_TABLE = "chicory_alembic_version"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """Migrations ship inside the wheel; in a source checkout they sit at the top level."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("chicory-backends migrations not found beside the package")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def current_revision(connection: AsyncConnection) -> str | None:
    """The database's schema revision, or None where our tables were never created."""
    try:
        result = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608 - our table
    except DBAPIError as error:
        if "version" in str(error.orig).lower() or "exist" in str(error.orig).lower():
            return None
        raise
    return result.scalar_one_or_none()


def schema_problem(connection: Connection, found: str | None) -> SchemaNotReadyError | None:
    """Why this database cannot be used at the version ``found``, or None when it can.

    Looks at the tables themselves, not only at the version table: Chicory 0.1.0's own
    tables (adopted by the upgrade), and a version that claims more than the tables hold
    (``alembic stamp`` on a database that was never migrated) are named as such.
    """
    from chicory_backends.sql.adopt import inspect_layout
    from chicory_backends.sql.schema import SCHEMA_REVISION, metadata

    layout = inspect_layout(connection)
    if layout.has_chicory_tables:
        return SchemaNotReadyError(
            found,
            SCHEMA_REVISION,
            what="the database holds Chicory 0.1.0's own tables (chicory_task_results with "
            "result_json)",
            fix="run 'chicory-backends migrate' (or 'alembic upgrade head', or set "
            "auto_migrate=True), which adopts them in place and keeps every result; "
            "'chicory-backends migrate --check' shows the plan and changes nothing",
        )
    if found != SCHEMA_REVISION:
        return SchemaNotReadyError(found, SCHEMA_REVISION)
    expected = {
        table.name: {column.name for column in table.columns} for table in metadata.sorted_tables
    }
    missing = layout.missing_columns(expected)
    if missing:
        named = "; ".join(
            f"{table} lacks {', '.join(sorted(cols))}" for table, cols in missing.items()
        )
        return SchemaNotReadyError(
            found,
            SCHEMA_REVISION,
            what=f"the version table says revision {found} but {named}",
            fix="the version was stamped on tables that do not hold this schema: run "
            "'alembic stamp base', then 'alembic upgrade head'",
        )
    return None


# As long as GET_LOCK waits on MySQL/MariaDB; a migration takes well under a second.
LOCK_TIMEOUT = 600.0
_POLL_INTERVAL = 0.02


def _pause(seconds: float) -> None:
    """Sleep without stopping the event loop when called from inside ``run_sync``."""
    if in_greenlet():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def sqlite_lock_path(database: str | None) -> Path | None:
    """The migration lock file beside a SQLite database file; None for an in-memory one."""
    from chicory_backends.sql.engine import is_memory_sqlite

    if is_memory_sqlite(database):
        return None
    assert database is not None
    path = Path(database.removeprefix("file:").split("?", 1)[0]).resolve()
    return path.with_name(f"{path.name}-migrate.lock")


@contextmanager
def sqlite_file_lock(database: str | None) -> Iterator[None]:
    """SQLite's migration lock: ``flock`` on a file beside the database, across processes.

    SQLite has no advisory lock, and its own locks are no substitute: it runs DDL outside
    a transaction (pysqlite begins one only before DML), so two migrators each see no
    version table and both create the tables. ``BEGIN EXCLUSIVE`` would end at the first
    commit and give up after ``busy_timeout`` (5 s). The lock is on a separate file, never
    on the database itself: closing any descriptor of the database file would drop the
    POSIX locks SQLite holds on it in this process. The file stays (removing it would let
    a waiter lock the old file while a newcomer creates a new one); the kernel releases
    the lock when its holder exits, so a crashed migrator never leaves it held. Where
    there is no ``fcntl`` (Windows) only the in-process lock applies.
    """
    path = sqlite_lock_path(database)
    try:
        import fcntl
    except ImportError:  # Windows
        path = None
    if path is None:
        yield
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        "timed out waiting for another migration to finish"
                    ) from None
                _pause(_POLL_INTERVAL)
        yield
    finally:
        os.close(descriptor)  # releases the lock


async def database_revision(config: SQLBackendConfig) -> str | None:
    """The revision of the database ``config`` names, on a short-lived engine of its own."""
    from chicory_backends.sql.engine import create_engine, translate_error

    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            return await current_revision(connection)
    except Exception as error:
        raise translate_error(error, config) from None
    finally:
        await engine.dispose()


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the database's migration lock (an advisory/application lock, session-wide;
    a lock file for SQLite).

    Two deploys running at once: the first migrates, the second waits on the lock and
    then finds the version table already at head.
    """
    lock = migration_lock_for(connection.dialect)
    if lock.lock_file:
        with sqlite_file_lock(connection.engine.url.database):
            yield
        return
    if lock.lock:
        acquired = connection.exec_driver_sql(lock.lock).scalar()
        connection.commit()
        if acquired == 0:  # GET_LOCK's answer when it timed out; the others raise or wait
            raise TimeoutError("timed out waiting for another migration to finish")
    try:
        yield
    finally:
        if lock.unlock:
            connection.exec_driver_sql(lock.unlock)
            connection.commit()


def _upgrade_on(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


# Alembic keeps the running migration in module globals (alembic.context, alembic.op):
# two upgrades interleaved in one process, as tasks of one loop or in two threads,
# overwrite and then remove each other's ("KeyError: 'config'").
_IN_PROCESS = threading.Lock()


@asynccontextmanager
async def _one_upgrade_per_process() -> AsyncIterator[None]:
    """Take the process-wide upgrade lock without blocking the event loop.

    A threading lock, because its holder may be a task of another loop in another
    thread; polled, because a task blocked in ``acquire()`` would stop its own loop, and
    the holder may be a task of that very loop. A task cancelled while it waits owns
    nothing, so it leaves nothing to release.
    """
    while not _IN_PROCESS.acquire(blocking=False):  # noqa: ASYNC110 (no Event crosses threads)
        await asyncio.sleep(_POLL_INTERVAL)
    try:
        yield
    finally:
        _IN_PROCESS.release()


async def upgrade_in_process(config: SQLBackendConfig, engine: AsyncEngine) -> None:
    """What auto_migrate=True does at connect(): `alembic upgrade head` inside the loop.

    The backend's own engine runs in AUTOCOMMIT, which would split a migration into
    separate statements, so a transactional engine is made for it; only an in-memory
    SQLite database must be migrated on the one connection that holds it. One upgrade
    runs at a time in the process (Alembic's globals); env.py then takes the database's
    migration lock against other processes.
    """
    from chicory_backends.sql.engine import create_engine, is_memory_sqlite

    shared = is_memory_sqlite(engine.url.database)
    async with _one_upgrade_per_process():
        migrator = engine if shared else create_engine(config, autocommit=False)
        try:
            async with migrator.connect() as connection:
                await connection.run_sync(_upgrade_on)
        finally:
            if not shared:
                await migrator.dispose()


# -- what an upgrade would do (``chicory-backends migrate --check``) ----------------------

# Rows per second of the adoption's only work that grows with the table: its index builds
# (CONCURRENTLY on PostgreSQL, in place on MySQL/MariaDB). Measured by `make bench-adopt`
# on 2 shared cores (1,000,000 rows: 5.4 s on PostgreSQL, 7.2 s on MariaDB; 100,000 on
# SQLite: 0.5 s), on a table nobody writes: on MariaDB, Chicory's writes in flight make
# the NOWAIT ALTERs wait their turn (52 s for the same table under a live writer). An
# estimate, and an order of magnitude of the idle case is all it claims.
ADOPTION_ROWS_PER_SECOND = {"postgresql": 180_000, "mysql": 140_000, "sqlite": 200_000}


@dataclass(frozen=True)
class UpgradePlan:
    """What ``alembic upgrade head`` would find and do; nothing is changed to learn it."""

    revision: str | None
    head: str
    chicory_tables: bool
    rows: dict[str, int]
    steps: list[str]
    estimated_seconds: float

    @property
    def needed(self) -> bool:
        return bool(self.steps)


def _plan_on(connection: Connection, head: str, steps: list[str]) -> UpgradePlan:
    from chicory_backends.sql.adopt import count_rows, inspect_layout

    layout = inspect_layout(connection)
    rows = count_rows(connection, layout)
    dialect = "mysql" if connection.dialect.name == "mariadb" else connection.dialect.name
    rate = ADOPTION_ROWS_PER_SECOND.get(dialect, 100_000)
    revision = _revision_on(connection)
    done = steps.index(revision) + 1 if revision in steps else 0
    pending = steps[done:] if revision is None or revision in steps else []
    estimate = sum(rows.values()) / rate if pending else 0.0
    return UpgradePlan(revision, head, layout.has_chicory_tables, rows, pending, estimate)


def _revision_on(connection: Connection) -> str | None:
    from sqlalchemy import inspect

    if VERSION_TABLE not in inspect(connection).get_table_names():
        return None
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608 - our table


def revision_steps() -> list[tuple[str, str]]:
    """Every revision from the first to head, each with the first line of its docstring."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions("base", "heads"))
    revisions.reverse()
    return [(rev.revision, (rev.doc or "").splitlines()[0]) for rev in revisions]


async def plan_upgrade(config: SQLBackendConfig) -> UpgradePlan:
    """Look at the database ``config`` names and say what an upgrade to head would do."""
    from chicory_backends.sql.engine import create_engine, translate_error

    steps = [revision for revision, _doc in revision_steps()]
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_plan_on, steps[-1], steps)
    except Exception as error:
        raise translate_error(error, config) from None
    finally:
        await engine.dispose()

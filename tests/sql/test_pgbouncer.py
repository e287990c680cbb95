"""PostgreSQL behind a real PgBouncer in transaction pooling mode.

Transaction pooling hands each statement to whichever server connection is free, so
asyncpg's per-connection named prepared statements meet server connections that never
saw them (or already hold one of that name). ``pgbouncer=True`` makes the names unique
and turns statement caching off; this runs the backend's operations concurrently through
a bouncer with fewer server connections than clients and expects no error at all.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import make_url

from chicory_backends import TaskResult, TaskState, WorkerStats
from chicory_backends.config import PostgresBackendConfig
from chicory_backends.errors import ChicoryBackendError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.migrate import alembic_config
from tests.support.services import POSTGRES_ADMIN_URL, free_port, port_open, services_required
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OPERATIONS = 200
CONCURRENCY = 20
SERVER_CONNECTIONS = 4  # fewer than the clients: statements move between connections
ALIAS = "chicory_bounced"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which(
        "pgbouncer", path="/usr/sbin:/usr/local/sbin:/usr/bin"
    )
    if found:
        return found
    message = "the pgbouncer binary is not installed (apt-get install pgbouncer)"
    if services_required():
        pytest.fail(f"{message} and CHICORY_TEST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Bouncer:
    port: int
    username: str

    def config(self, *, pgbouncer: bool) -> PostgresBackendConfig:
        url = f"postgresql+asyncpg://{self.username}@127.0.0.1:{self.port}/{ALIAS}"
        return PostgresBackendConfig(
            url=url, pgbouncer=pgbouncer, pool_size=CONCURRENCY, max_overflow=0
        )


def write_ini(directory: Path, port: int, database: str) -> Path:
    server = make_url(POSTGRES_ADMIN_URL)
    user = server.username or "postgres"
    target = f"host={server.host or '127.0.0.1'} port={server.port or 5432} "
    target += f"dbname={database} user={user}"
    if server.password:
        target += f" password={server.password}"
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{ALIAS} = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 200
logfile = {directory / "pgbouncer.log"}
pidfile = {directory / "pgbouncer.pid"}
"""
    )
    return ini


def start(binary: str, ini: Path, port: int) -> subprocess.Popen[bytes]:
    """PgBouncer in the foreground, as our child; it refuses to run as root."""
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, *as_user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            log = ini.with_name("pgbouncer.log")
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            pytest.fail(f"pgbouncer did not start on port {port}:\n{tail}", pytrace=False)
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # PgBouncer's immediate shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def bouncer() -> Iterator[Bouncer]:
    """A fresh database migrated directly on PostgreSQL, served through PgBouncer."""
    binary = pgbouncer_binary()
    name = run_database_name("pgbouncer")
    config = fresh_config("postgres", name)
    directory = Path(tempfile.mkdtemp(prefix="chicory-pgbouncer-"))
    try:
        # Migrations run directly on the server, never through transaction pooling.
        url = config.sqlalchemy_url().render_as_string(hide_password=False)
        command.upgrade(alembic_config(url), "head")
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(directory, postgres.pw_uid, postgres.pw_gid)
        port = free_port()
        process = start(binary, write_ini(directory, port, name), port)
        try:
            yield Bouncer(port, make_url(POSTGRES_ADMIN_URL).username or "postgres")
        finally:
            stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        drop_database("postgres", name)


def stats(worker_id: str) -> WorkerStats:
    now = datetime.now(UTC)
    return WorkerStats(
        worker_id=worker_id,
        hostname="bounced",
        pid=1,
        queue="default",
        concurrency=CONCURRENCY,
        started_at=now,
        last_heartbeat=now,
    )


async def operation(backend: DatabaseBackend, number: int, run: str) -> None:
    """One of the backend's operations, chosen by number, on this run's own ids."""
    task_id = f"{run}-{number % 40}"
    match number % 7:
        case 0:
            await backend.set_state(task_id, TaskState.STARTED)
        case 1:
            result = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"n": number})
            await backend.store_result(task_id, result)
        case 2:
            await backend.get_result(task_id)
        case 3:
            await backend.get_results([f"{run}-{i}" for i in range(number % 5 + 1)])
        case 4:
            await backend.store_heartbeat(f"{run}-worker-{number % 3}", stats(run), ttl=60)
        case 5:
            await backend.get_active_workers()
        case _:
            await backend.cleanup_old_results(older_than_seconds=3600)


async def workload(backend: DatabaseBackend, run: str) -> list[BaseException]:
    """OPERATIONS operations, CONCURRENCY at a time; the errors they raised."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(number: int) -> None:
        async with gate:
            await operation(backend, number, run)

    outcomes = await asyncio.gather(
        *(one(number) for number in range(OPERATIONS)), return_exceptions=True
    )
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


async def test_operations_through_transaction_pooling(bouncer: Bouncer) -> None:
    backend = DatabaseBackend(bouncer.config(pgbouncer=True))
    async with backend:
        for round_number in range(2):  # the second round reuses every pooled connection
            errors = await workload(backend, f"ok{round_number}")
            assert not errors, f"{len(errors)} of {OPERATIONS} operations failed: {errors[:3]}"
        stored = await backend.get_results([f"ok1-{i}" for i in range(40)])
        finished = {f"ok1-{n % 40}" for n in range(OPERATIONS) if n % 7 == 1}
        assert finished and finished <= stored.keys()
        for task_id, result in stored.items():  # a late STARTED never undoes a SUCCESS
            expected = TaskState.SUCCESS if task_id in finished else TaskState.STARTED
            assert result.state is expected, (task_id, result.state)
        assert (await backend.healthcheck()).connected


async def test_without_the_switch_prepared_statements_break(bouncer: Bouncer) -> None:
    """The failure mode pgbouncer=True exists for; skipped where it does not reproduce."""
    backend = DatabaseBackend(bouncer.config(pgbouncer=False))
    try:
        await backend.connect()
        errors = await workload(backend, "raw")
    except ChicoryBackendError as error:
        errors = [error]
    finally:
        await backend.disconnect()
    if not errors:
        pytest.skip("the default asyncpg settings happened to survive PgBouncer this time")
    assert all(isinstance(error, ChicoryBackendError) for error in errors), errors[:3]
    assert any("prepared statement" in str(error) for error in errors), errors[:3]

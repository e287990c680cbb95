"""The installed ``chicory-backends`` console script, run as a subprocess on real databases."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import make_url, update

from chicory_backends import TaskResult, TaskState, WorkerStats
from chicory_backends.config import SQLBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.migrate import alembic_config
from chicory_backends.sql.schema import SCHEMA_REVISION, task_results, worker_heartbeats
from tests.support.services import POSTGRES_ADMIN_URL, free_port
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

SCRIPT = Path(sys.executable).with_name("chicory-backends")
# With trust authentication the server ignores it; it must still never be printed.
SECRET = make_url(POSTGRES_ADMIN_URL).password or "Zq7-distinctive-Pa55w0rd"
CLI_KINDS = ("sqlite", "postgres")


def clean_environment() -> dict[str, str]:
    """This process's environment without any backend configuration of the developer's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the script; whatever happens, no traceback and no password in its output."""
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the project (pip install -e .)"
    done = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    if done.returncode != 0:
        assert done.stderr.count("\n") == 1, f"not one line on stderr: {done.stderr!r}"
    return done


def run_json(*args: str, env: dict[str, str]) -> Any:
    done = run_cli(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Database:
    """An empty database and the environment that points the CLI at it."""

    kind: str
    config: SQLBackendConfig
    env: dict[str, str] = field(default_factory=clean_environment)

    def migrate(self) -> None:
        url = self.config.sqlalchemy_url().render_as_string(hide_password=False)
        command.upgrade(alembic_config(url), "head")


def environment_for(kind: str, config: SQLBackendConfig) -> dict[str, str]:
    env = clean_environment() | {"CHICORY_BACKEND_TYPE": kind}
    url = config.sqlalchemy_url()
    if kind == "sqlite":
        return env | {"CHICORY_BACKEND_SQLITE_FILE_PATH": str(url.database)}
    return env | {
        "CHICORY_BACKEND_POSTGRES_HOST": str(url.host),
        "CHICORY_BACKEND_POSTGRES_PORT": str(url.port or 5432),
        "CHICORY_BACKEND_POSTGRES_DATABASE": str(url.database),
        "CHICORY_BACKEND_POSTGRES_USERNAME": str(url.username),
        "CHICORY_BACKEND_POSTGRES_PASSWORD": SECRET,
    }


@pytest.fixture(params=CLI_KINDS)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    kind: str = request.param
    name = run_database_name("cli")
    config = fresh_config(kind, name)
    try:
        yield Database(kind, config, environment_for(kind, config))
    finally:
        drop_database(kind, name)


# -- migrate and health ----------------------------------------------------------------


def test_migrate(database: Database) -> None:
    first = run_cli("migrate", env=database.env)
    assert first.returncode == 0, first.stderr
    assert f"upgraded from empty to {SCHEMA_REVISION}" in first.stdout

    again = run_json("migrate", env=database.env)
    assert again["revision"] == SCHEMA_REVISION
    assert again["from_revision"] == SCHEMA_REVISION
    assert again["upgraded"] is False

    offline = run_cli("migrate", "--sql", env=database.env)
    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE chicory_task_results" in offline.stdout
    assert (
        "CREATE TABLE chicory_task_results" in run_json("migrate", "--sql", env=database.env)["sql"]
    )


def test_health(database: Database) -> None:
    unmigrated = run_cli("health", env=database.env)
    assert unmigrated.returncode == 1
    assert "alembic upgrade head" in unmigrated.stderr

    database.migrate()
    healthy = run_cli("health", env=database.env)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("ok: ")
    report = run_json("health", env=database.env)
    assert report["healthy"] is True
    assert report["latency_ms"] >= 0


def test_health_of_a_closed_port() -> None:
    port = free_port()
    env = clean_environment() | {
        "CHICORY_BACKEND_TYPE": "postgres",
        "CHICORY_BACKEND_POSTGRES_HOST": "127.0.0.1",
        "CHICORY_BACKEND_POSTGRES_PORT": str(port),
        "CHICORY_BACKEND_POSTGRES_PASSWORD": SECRET,
    }
    down = run_cli("health", env=env)
    assert down.returncode == 1
    assert f"127.0.0.1:{port}" in down.stderr and "unreachable" in down.stderr

    report = json.loads(run_cli("health", "--json", env=env).stdout)
    assert report["healthy"] is False and "unreachable" in report["error"]

    by_url = run_cli(
        "--url", f"postgresql://chicory:{SECRET}@127.0.0.1:{port}/chicory", "health",
        env=clean_environment(),
    )  # fmt: skip
    assert by_url.returncode == 1 and "unreachable" in by_url.stderr


# -- stats, workers and cleanup --------------------------------------------------------

FRESH_SUCCESS = ("s1", "s2", "s3")
FRESH_PENDING = ("p1", "p2")
EXPIRED = ("e1", "e2")  # FAILURE results past their expiry
OLD = ("o1", "o2", "o3")  # SUCCESS results untouched for two days


async def seed(config: SQLBackendConfig) -> None:
    now = datetime.now(UTC)
    async with DatabaseBackend(config) as backend:
        for task_id in (*FRESH_SUCCESS, *OLD):
            await backend.store_result(
                task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS)
            )
        for task_id in FRESH_PENDING:
            await backend.set_state(task_id, TaskState.PENDING)
        for task_id in EXPIRED:
            await backend.store_result(
                task_id, TaskResult(task_id=task_id, state=TaskState.FAILURE)
            )
        for worker_id in ("worker-live", "worker-gone"):
            await backend.store_heartbeat(worker_id, worker(worker_id), ttl=60)
        assert backend._engine is not None
        async with backend._engine.connect() as connection:
            results = task_results.c
            await connection.execute(
                update(task_results)
                .where(results.task_id.in_(EXPIRED))
                .values(expires_at=now - timedelta(hours=1))
            )
            await connection.execute(
                update(task_results)
                .where(results.task_id.in_(OLD))
                .values(updated_at=now - timedelta(days=2))
            )
            await connection.execute(
                update(worker_heartbeats)
                .where(worker_heartbeats.c.worker_id == "worker-gone")
                .values(expires_at=now - timedelta(minutes=1))
            )


def worker(worker_id: str) -> WorkerStats:
    return WorkerStats(
        worker_id=worker_id,
        hostname="host-a",
        pid=4242,
        queue="default",
        concurrency=8,
        tasks_processed=17,
        started_at=datetime.now(UTC),
        last_heartbeat=datetime.now(UTC),
    )


def test_stats_workers_and_cleanup(database: Database) -> None:
    env = database.env
    database.migrate()
    asyncio.run(seed(database.config))

    stats = run_json("stats", env=env)
    assert stats["by_state"] == {"FAILURE": 2, "PENDING": 2, "SUCCESS": 6}
    assert stats["total"] == 10
    assert stats["expired_not_reclaimed"] == 2
    oldest = datetime.fromisoformat(stats["oldest_updated_at"])
    assert abs(oldest - (datetime.now(UTC) - timedelta(days=2))) < timedelta(minutes=5)
    text = run_cli("stats", env=env)
    assert "SUCCESS" in text.stdout and "expired, not yet reclaimed: 2" in text.stdout

    workers = run_json("workers", env=env)
    assert [w["worker_id"] for w in workers["workers"]] == ["worker-live"]
    table = run_cli("workers", env=env)
    assert "worker-live" in table.stdout and "worker-gone" not in table.stdout

    dry = run_json("cleanup", "--older-than", "1d", "--dry-run", env=env)
    assert dry["would_delete"] == len(EXPIRED) + len(OLD)
    assert (run_json("stats", env=env))["total"] == 10

    done = run_json("cleanup", "--older-than", "24h", "--batch-size", "2", env=env)
    assert done["deleted"] == len(EXPIRED) + len(OLD)
    assert done["batch_size"] == 2
    after = run_json("stats", env=env)
    assert after["by_state"] == {"PENDING": 2, "SUCCESS": 3}

    again = run_cli("cleanup", "--older-than", "7d", env=env)
    assert again.returncode == 0
    assert "deleted 0 results" in again.stdout and again.stdout.count("\n") == 1


# -- configuration errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "args", "says"),
    [
        ({"CHICORY_BACKEND_TYPE": "nosuch"}, ["health"], "unknown backend type 'nosuch'"),
        (
            {"CHICORY_BACKEND_TYPE": "postgres", "CHICORY_BACKEND_POSTGRES_PORT": "not-a-port"},
            ["stats"],
            "CHICORY_BACKEND_POSTGRES_PORT",
        ),
        ({}, ["--url", "nosuch://host/db", "health"], "unknown scheme"),
        (
            {},
            ["--url", "redis://127.0.0.1:1/0", "cleanup", "--older-than", "1d"],
            "SQL backends only",
        ),
        (
            {"CHICORY_BACKEND_TYPE": "postgres", "CHICORY_BACKEND_POSTGRES_PGBOUNCER": "true"},
            ["migrate"],
            "not through PgBouncer",
        ),
        ({}, ["cleanup", "--older-than", "5 parsecs"], "not a duration"),
        ({}, ["cleanup"], "--older-than"),
        ({}, ["cleanup", "--older-than", "1h", "--batch-size", "0"], "at least 1"),
    ],
)
def test_configuration_errors_exit_2_in_one_line(
    variables: dict[str, str], args: list[str], says: str
) -> None:
    env = clean_environment() | {"CHICORY_BACKEND_POSTGRES_PASSWORD": SECRET} | variables
    done = run_cli(*args, env=env)
    assert done.returncode == 2
    assert says in done.stderr
    assert done.stdout == ""


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    env = clean_environment() | {"CHICORY_BACKEND_SQLITE_FILE_PATH": str(tmp_path / "r.db")}
    done = subprocess.run(
        [sys.executable, "-m", "chicory_backends", "migrate", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == SCHEMA_REVISION

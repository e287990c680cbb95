"""End to end: a real Chicory worker process (Chicory's own CLI and Worker) storing through
our backends, and a client reading with Chicory's AsyncResult and with ours.

Each test gets its own broker namespace (see e2e_app.py) and a freshly created, migrated
database (or Redis key prefix); the worker subprocess is always stopped, killed if need
be, when the test ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from chicory import BackendNotConfiguredError as ChicoryBackendNotConfiguredError
from chicory import Chicory

from chicory_backends import BackendNotConfiguredError, TaskFailedError
from chicory_backends.chicory import ChicoryBackendAdapter, async_result
from chicory_backends.sql.backend import DatabaseBackend
from tests.support import e2e_app
from tests.support.services import REDIS_HOST, REDIS_PORT, require, services_required
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

ROOT = Path(__file__).resolve().parents[2]  # the workers import tests.support
RABBITMQ_URL = os.environ.get("CHICORY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Chicory's console script, run with this interpreter whatever the PATH.
CHICORY_CLI = "import sys; from chicory.cli import app; sys.argv[0] = 'chicory'; sys.exit(app())"
TASK_TIMEOUT = 20.0  # the first task also waits for the worker process to start

pytestmark = pytest.mark.slow


def require_module(module: str, install: str) -> None:
    """Skip (fail under CHICORY_TEST_REQUIRE_SERVICES=1) when a client library is missing."""
    try:
        __import__(module)
    except ImportError:
        message = f"{module} is not installed: pip install '{install}'"
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def chicory_cli() -> None:
    require_module("typer", "chicory[cli]")  # the worker runs Chicory's own CLI


@pytest.fixture
def namespace() -> str:
    return f"e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- brokers ---------------------------------------------------------------------------


@pytest.fixture
def redis_broker(monkeypatch: pytest.MonkeyPatch, namespace: str) -> Iterator[None]:
    require("Redis", REDIS_HOST, REDIS_PORT)
    monkeypatch.setenv("E2E_BROKER", "redis")
    monkeypatch.setenv("E2E_NAMESPACE", namespace)
    monkeypatch.setenv("CHICORY_BROKER_REDIS_HOST", REDIS_HOST)
    monkeypatch.setenv("CHICORY_BROKER_REDIS_PORT", str(REDIS_PORT))
    # Chicory moves due retries only between two blocking reads: keep them short.
    monkeypatch.setenv("CHICORY_BROKER_REDIS_BLOCK_MS", "100")
    yield
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    try:
        keys = list(client.scan_iter(match=f"chicory:*:{namespace}.*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def rabbitmq_broker(monkeypatch: pytest.MonkeyPatch, namespace: str) -> AsyncIterator[None]:
    require_module("aio_pika", "chicory[rabbitmq]")
    parts = urlsplit(RABBITMQ_URL)
    require("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    monkeypatch.setenv("E2E_BROKER", "rabbitmq")
    monkeypatch.setenv("E2E_NAMESPACE", namespace)
    monkeypatch.setenv("CHICORY_BROKER_RABBITMQ_URL", RABBITMQ_URL)
    monkeypatch.setenv("CHICORY_BROKER_RABBITMQ_DURABLE_QUEUES", "false")
    yield
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        for kind in ("queue", "dlq", "delayed-queue"):
            channel = await connection.channel()
            with suppress(Exception):
                await channel.queue_delete(f"chicory.{kind}.{namespace}.default")
    finally:
        await connection.close()


# -- backends --------------------------------------------------------------------------


async def _sql_backend(monkeypatch: pytest.MonkeyPatch, kind: str) -> AsyncIterator[None]:
    name = run_database_name(f"e2e_{kind}")
    config = fresh_config(kind, name, auto_migrate=True)
    try:
        async with DatabaseBackend(config):
            pass  # migrated to head
        monkeypatch.setenv("E2E_BACKEND", kind)
        if config.url is not None:
            monkeypatch.setenv(f"CHICORY_BACKEND_{kind.upper()}_URL", config.url.get_secret_value())
        else:
            monkeypatch.setenv("CHICORY_BACKEND_SQLITE_FILE_PATH", str(config.address()))
        yield
    finally:
        drop_database(kind, name)


@pytest.fixture
async def postgres_backend(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    async for _ in _sql_backend(monkeypatch, "postgres"):
        yield


@pytest.fixture
async def mysql_backend(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    async for _ in _sql_backend(monkeypatch, "mysql"):
        yield


@pytest.fixture
async def sqlite_backend(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    async for _ in _sql_backend(monkeypatch, "sqlite"):
        yield


@pytest.fixture
def redis_backend(monkeypatch: pytest.MonkeyPatch, namespace: str) -> Iterator[None]:
    require("Redis", REDIS_HOST, REDIS_PORT)
    try:
        from chicory_backends.redis import RedisBackend  # noqa: F401
    except ImportError as error:
        pytest.skip(f"chicory_backends.redis is not usable yet: {error}")
    prefix = f"e2e-{namespace}"
    monkeypatch.setenv("E2E_BACKEND", "redis")
    monkeypatch.setenv("CHICORY_BACKEND_REDIS_HOST", REDIS_HOST)
    monkeypatch.setenv("CHICORY_BACKEND_REDIS_PORT", str(REDIS_PORT))
    monkeypatch.setenv("CHICORY_BACKEND_REDIS_KEY_PREFIX", prefix)
    yield
    import redis

    from chicory_backends.config import RedisBackendConfig

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=RedisBackendConfig().db)
    try:
        keys = [*client.scan_iter(match=f"{prefix}:*"), *client.scan_iter(match=f"{{{prefix}:*")]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_BACKEND", "none")


# -- the worker process ----------------------------------------------------------------


@contextmanager
def chicory_worker(log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``chicory worker e2e_app:app`` in a subprocess; stopped (or killed) on exit."""
    command = [
        sys.executable, "-c", CHICORY_CLI, "worker", "tests.support.e2e_app:app",
        "--concurrency", "4", "--heartbeat-interval", "0.5", "--heartbeat-ttl", "10",
        "--shutdown-timeout", "2", "--log-level", "INFO",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(os.environ), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield process
    except BaseException:
        print(f"--- worker log ({log}) ---\n{log.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


async def _connected_app() -> Chicory:
    app = e2e_app.make_app()
    await app.connect()
    return app


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _wait_for_lines(path: Path, count: int, within: float = TASK_TIMEOUT) -> list[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        lines = _lines(path)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not get {count} line(s) within {within}s")


# -- the scenario every backend runs -----------------------------------------------------


async def _exercise(app: Chicory, worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    add, fail, flaky = (app.get_task(f"e2e.{name}") for name in ("add", "fail", "flaky"))

    # Success, read by Chicory's own AsyncResult (polling our adapter) and by ours.
    done = await add.delay(2, 3)
    assert await done.get(timeout=TASK_TIMEOUT) == 5
    ours = async_result(app, done.task_id)
    assert await ours.get(timeout=5) == 5
    assert await ours.successful()

    # Failure: the error text and the worker's traceback arrive.
    failed = await fail.delay("disk full on /dev/sdz9")
    with pytest.raises(Exception, match="disk full on /dev/sdz9"):
        await failed.get(timeout=TASK_TIMEOUT)
    with pytest.raises(TaskFailedError) as info:
        await async_result(app, failed.task_id).get(timeout=5)
    assert info.value.error is not None and "disk full on /dev/sdz9" in info.value.error
    assert info.value.traceback is not None and "ValueError" in info.value.traceback

    # A retry that then succeeds: the task returns the attempt number that succeeded.
    retried = await flaky.delay(str(tmp_path / "flaky.log"))
    assert await async_result(app, retried.task_id).get(timeout=TASK_TIMEOUT) == 1
    assert _lines(tmp_path / "flaky.log") == ["attempt 0", "attempt 1"]

    # The worker's heartbeat, through Chicory's WorkerStats: a fresh one counts the tasks.
    assert isinstance(app.backend, ChicoryBackendAdapter)
    deadline = time.monotonic() + 10
    while True:
        workers = {stats.pid: stats for stats in await app.backend.get_active_workers()}
        stats = workers.get(worker.pid)
        if (stats and stats.tasks_processed >= 2) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert stats is not None, f"no heartbeat from pid {worker.pid}: {list(workers)}"
    assert stats.is_running and stats.queue == "default"
    assert stats.tasks_processed >= 2  # add, and flaky's successful second attempt
    assert stats.tasks_failed >= 2  # fail, and flaky's first attempt


async def _run(tmp_path: Path) -> None:
    app = await _connected_app()
    try:
        with chicory_worker(tmp_path / "worker.log") as worker:
            await _exercise(app, worker, tmp_path)
    finally:
        await app.disconnect()


async def test_redis_broker_postgres_backend(
    redis_broker: None, postgres_backend: None, tmp_path: Path
) -> None:
    await _run(tmp_path)


async def test_rabbitmq_broker_redis_backend(
    rabbitmq_broker: None, redis_backend: None, tmp_path: Path
) -> None:
    await _run(tmp_path)


async def test_redis_broker_sqlite_backend(
    redis_broker: None, sqlite_backend: None, tmp_path: Path
) -> None:
    await _run(tmp_path)


async def test_redis_broker_mariadb_backend(
    redis_broker: None, mysql_backend: None, tmp_path: Path
) -> None:
    await _run(tmp_path)


async def test_redis_broker_without_backend(
    redis_broker: None, no_backend: None, tmp_path: Path
) -> None:
    app = await _connected_app()
    try:
        with chicory_worker(tmp_path / "worker.log"):
            record, fail, flaky = (app.get_task(f"e2e.{n}") for n in ("record", "fail", "flaky"))
            log = tmp_path / "sent.log"

            # send() is fire-and-forget: it works, and the worker runs the task.
            task_id = await record.send(str(log), "sent")
            assert isinstance(task_id, str) and task_id
            assert await _wait_for_lines(log, 1) == ["sent"]

            # A failing task does not stop the worker; a retried one runs again.
            await fail.send("nobody will read this")
            await flaky.send(str(tmp_path / "flaky.log"))
            lines = await _wait_for_lines(tmp_path / "flaky.log", 2)
            assert lines == ["attempt 0", "attempt 1"]

            # delay() still publishes, but there is no result to read.
            pending = await record.delay(str(log), "delayed")
            with pytest.raises(ChicoryBackendNotConfiguredError):
                await pending.get(timeout=1)
            with pytest.raises(BackendNotConfiguredError):
                async_result(app, pending.task_id)
            assert await _wait_for_lines(log, 2) == ["sent", "delayed"]
    finally:
        await app.disconnect()

"""Every example in examples/ runs to completion on its own and says what it showed.

Each runs as a subprocess, as a reader would run it, against the local servers; its
PostgreSQL database and Redis keys are this run's own and are removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import make_url

from tests.support.services import (
    POSTGRES_ADMIN_URL,
    REDIS_HOST,
    REDIS_PORT,
    require,
    services_required,
)
from tests.support.sql_databases import drop_database, require_server, run_database_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RABBITMQ_URL = os.environ.get("CHICORY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

# example -> (servers it needs, a line its output must contain)
CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "redis_backend": (("redis",), "redis backend: add(2, 3) = 5"),
    "postgres_backend": (("redis", "postgres"), "postgres backend: square(12) = 144"),
    "no_backend": (("redis",), "no backend: result.get() raised BackendNotConfiguredError"),
    "redis_broker_postgres_backend": (("redis", "postgres"), "redis broker + postgres backend:"),
    "rabbitmq_broker_redis_backend": (
        ("rabbitmq", "redis"),
        "rabbitmq broker + redis backend: word_count = 7",
    ),
    "result_ttl": (("redis",), "result ttl: the result expired after 1 s"),
    "cleanup": (("postgres",), "cleanup: deleted 3 expired or old row(s)"),
    "demo": ((), "demo finished: stored, read, expired and cleaned results on SQLite"),
}


def test_every_example_is_covered() -> None:
    scripts = {path.stem for path in EXAMPLES.glob("*.py") if not path.stem.startswith("_")}
    assert scripts == set(CASES)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A URL for a database the examples create themselves (and we drop)."""
    require_server("postgres")
    name = run_database_name("examples")
    drop_database("postgres", name)
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    drop_database("postgres", name)


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    prefix = f"examples-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield prefix
    try:
        import redis

        from chicory_backends.config import RedisBackendConfig
    except ImportError:
        return
    try:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=RedisBackendConfig().db)
        keys = [*client.scan_iter(match=f"{prefix}:*"), *client.scan_iter(match=f"{{{prefix}:*")]
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError:
        pass


def _require(server: str) -> None:
    if server == "redis":
        require("Redis", REDIS_HOST, REDIS_PORT)
    elif server == "postgres":
        require_server("postgres")
    elif server == "rabbitmq":
        try:
            import aio_pika  # noqa: F401  (Chicory's RabbitMQ broker)
        except ImportError:
            message = "aio-pika is not installed: pip install 'chicory[rabbitmq]'"
            if services_required():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        parts = urlsplit(RABBITMQ_URL)
        require("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_runs(example: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    servers, expected = CASES[example]
    for server in servers:
        _require(server)
    env = dict(os.environ)
    env["CHICORY_BACKEND_SQLITE_FILE_PATH"] = str(tmp_path / "results.db")  # a new file
    if "postgres" in servers:
        env["CHICORY_BACKEND_POSTGRES_URL"] = request.getfixturevalue("postgres_url")
        env["CHICORY_BACKEND_POSTGRES_AUTO_MIGRATE"] = "true"
    env["CHICORY_BACKEND_REDIS_HOST"] = REDIS_HOST
    env["CHICORY_BACKEND_REDIS_PORT"] = str(REDIS_PORT)
    env["CHICORY_BACKEND_REDIS_KEY_PREFIX"] = request.getfixturevalue("redis_prefix")
    env["CHICORY_BROKER_REDIS_HOST"] = REDIS_HOST
    env["CHICORY_BROKER_REDIS_PORT"] = str(REDIS_PORT)
    env["CHICORY_BROKER_RABBITMQ_URL"] = RABBITMQ_URL
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py")],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 0, output
    assert expected in done.stdout, output

"""Code written for Chicory 0.1.0's own backend keeps working on ours (issue 20, item 7).

- Every public method and attribute of Chicory's ``DatabaseBackend`` and ``RedisBackend``
  is on the adapter, with Chicory's parameter names and defaults, except the ones
  listed in LEFT_OUT (and why).
- ``app.backend.cleanup_old_results(older_than_seconds=...)``, a cron job's call, on a real
  ``Chicory`` app over SQLite, PostgreSQL, MariaDB and Redis: the count, and what remains.
- Chicory's own test of it (tests/integration/test_integration.py upstream) skips unless
  ``isinstance(app.backend, DatabaseBackend)``: over SQL our adapter is one, so the same
  check-then-call runs here. This repository has no harness running Chicory's upstream
  suite (the wheel ships no tests, and its conftest builds Chicory's own backends), so
  that test's steps are written out below instead.
- ``CHICORY_BACKEND_*`` values: each is accepted by both Chicory() and ours, or refused
  by ours with a message naming the variable and the fix (config.SQLBackendConfig).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from chicory import BrokerType, Chicory
from chicory.backend.database import DatabaseBackend as ChicoryDatabaseBackend
from chicory.backend.redis import RedisBackend as ChicoryRedisBackend
from chicory.config import ChicoryConfig
from chicory.config import RedisBackendConfig as ChicoryRedisConfig
from chicory.config import SQLiteBackendConfig as ChicorySQLiteConfig
from chicory.types import TaskResult, TaskState
from pydantic import ValidationError

from chicory_backends.chicory import (
    ChicoryBackendAdapter,
    ChicoryDatabaseAdapter,
    chicory_backend,
)
from chicory_backends.config import (
    AnyBackendConfig,
    MSSQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import ConfigurationError
from chicory_backends.factory import config_for, create_backend
from tests.support.redis_servers import delete_prefix, redis_config_for
from tests.support.sql_databases import migrated_database, run_blocking, run_database_name

SECRET = "pw-Zq8-never-shown"

# -- the surface -------------------------------------------------------------------------

# Public names of Chicory's backends that the adapter does not have, and why.
LEFT_OUT = {
    # A random "worker-xxxxxxxx" Chicory gives PostgreSQL as application_name; ours
    # names no session, so there is nothing true to return.
    "consumer_name",
}
LEFT_OUT_REDIS = {
    # Chicory's holds the password in clear text, and ours may be Sentinel or Cluster,
    # which no single redis:// URL describes; `config` has every setting.
    "dsn",
}


def public_names(backend: object) -> set[str]:
    """Public methods and instance attributes of a (never connected) backend object."""
    names = {name for name in dir(type(backend)) if not name.startswith("_")}
    return names | {name for name in vars(backend) if not name.startswith("_")}


def adapters(tmp_path: Path) -> tuple[ChicoryBackendAdapter, ChicoryBackendAdapter]:
    """Over SQLite and over Redis, never connected (no server needed)."""
    sqlite = SQLiteBackendConfig(file_path=str(tmp_path / "surface.db"))
    redis = create_backend("redis", RedisBackendConfig(key_prefix="surface"))
    return chicory_backend("sqlite", sqlite), ChicoryBackendAdapter(redis)


@pytest.mark.parametrize("kind", ["database", "redis"])
def test_every_public_name_of_chicorys_backend_is_on_the_adapter(tmp_path: Path, kind: str) -> None:
    sql_adapter, redis_adapter = adapters(tmp_path)
    theirs: object
    if kind == "database":
        theirs = ChicoryDatabaseBackend(ChicorySQLiteConfig(file_path=str(tmp_path / "c.db")))
        ours, left_out = sql_adapter, LEFT_OUT
    else:
        theirs = ChicoryRedisBackend(ChicoryRedisConfig())
        ours, left_out = redis_adapter, LEFT_OUT | LEFT_OUT_REDIS
    missing = {name for name in public_names(theirs) - left_out if not hasattr(ours, name)}
    assert missing == set()
    for name in public_names(theirs) - left_out:
        theirs_member = getattr(type(theirs), name, None)
        if not callable(theirs_member):
            continue
        # Chicory's parameters, by name and default, are ours too (ours may add more).
        our_parameters = inspect.signature(getattr(ours, name)).parameters
        for parameter in list(inspect.signature(theirs_member).parameters.values())[1:]:
            assert parameter.name in our_parameters, (name, parameter.name)
            assert our_parameters[parameter.name].default == parameter.default, name


def test_the_sql_adapter_is_a_chicory_database_backend(tmp_path: Path) -> None:
    sql_adapter, redis_adapter = adapters(tmp_path)
    assert isinstance(sql_adapter, ChicoryDatabaseAdapter)
    assert isinstance(sql_adapter, ChicoryDatabaseBackend)
    assert not isinstance(redis_adapter, ChicoryDatabaseBackend)
    assert not isinstance(redis_adapter, ChicoryRedisBackend)
    # Wrapping one of our SQL backends by hand gives the same class.
    assert type(ChicoryBackendAdapter(sql_adapter.backend)) is ChicoryDatabaseAdapter


def test_the_attributes_read_our_settings_and_never_show_the_password(tmp_path: Path) -> None:
    config = PostgresBackendConfig(
        host="db.internal", username="app", password=SECRET, pool_size=4, result_ttl=60
    )
    adapter = chicory_backend("postgres", config)
    assert isinstance(adapter, ChicoryDatabaseAdapter)
    assert adapter.config is config
    assert adapter.dsn == "postgresql+asyncpg://app:***@db.internal:5432/chicory"
    assert (adapter.pool_size, adapter.max_overflow, adapter.echo) == (4, 0, False)
    assert (adapter.pool_recycle, adapter.pool_timeout, adapter.result_ttl) == (3600, 30.0, 60)
    assert SECRET not in repr(adapter)
    _, redis_adapter = adapters(tmp_path)
    assert redis_adapter.result_ttl == 3600


async def test_bad_ages_are_refused_before_any_io(tmp_path: Path) -> None:
    adapter = chicory_backend("sqlite", SQLiteBackendConfig(file_path=str(tmp_path / "x.db")))
    with pytest.raises(ValueError, match="at least 0, not -1"):
        await adapter.cleanup_old_results(older_than_seconds=-1)
    with pytest.raises(ValueError, match="finite"):
        await adapter.cleanup_old_results(float("nan"))
    with pytest.raises(TypeError, match="must be a number, not str"):
        await adapter.cleanup_old_results("3600")  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()  # nothing was opened


# -- cleanup_old_results on a real Chicory app ---------------------------------------------

AGE = 1.0  # seconds: "old" results are written 1.6 s before the cleanup, "new" ones just before


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[AnyBackendConfig]:
    """A fresh, migrated database (or Redis key prefix) of each kind, for one test."""
    kind: str = request.param
    if kind == "redis":
        config = redis_config_for("redis", key_prefix=f"compat-{uuid.uuid4().hex[:12]}")
        yield config
        run_blocking(delete_prefix(config))
        return
    name = run_database_name(f"compat_{uuid.uuid4().hex[:8]}")
    with migrated_database(kind, name) as config:
        yield config


@pytest.fixture
async def app(store: AnyBackendConfig) -> AsyncIterator[Chicory]:
    """A real Chicory app on our backend, as a user builds it (the broker stays unused)."""
    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(kind_of(store), store))
    assert app.backend is not None
    await app.backend.connect()
    try:
        yield app
    finally:
        await app.backend.disconnect()


def kind_of(config: AnyBackendConfig) -> str:
    return type(config).__name__.removesuffix("BackendConfig").lower()


def result(task_id: str, state: TaskState = TaskState.SUCCESS) -> TaskResult[Any]:
    return TaskResult[Any](task_id=task_id, state=state, result={"id": task_id})


async def test_cleanup_old_results_as_a_chicory_cron_job_calls_it(app: Chicory) -> None:
    backend = app.backend
    assert isinstance(backend, ChicoryBackendAdapter)  # for the type checker: a chicory Backend
    old = [f"old-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    new = [f"new-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    await backend.store_result(old[0], result(old[0]))
    await backend.store_result(old[1], result(old[1], TaskState.FAILURE))
    await backend.set_state(old[2], TaskState.STARTED)  # a task that never finished
    await asyncio.sleep(AGE + 0.6)
    for task_id in new:
        await backend.store_result(task_id, result(task_id))

    deleted = await backend.cleanup_old_results(older_than_seconds=AGE)

    assert type(deleted) is int and deleted == 3
    assert [await backend.get_result(task_id) for task_id in old] == [None, None, None]
    for task_id in new:
        found = await backend.get_result(task_id)
        assert found is not None and found.result == {"id": task_id}
    assert await backend.cleanup_old_results(AGE) == 0  # positional, as Chicory's allows
    assert await backend.cleanup_old_results(older_than_seconds=0) == 2
    assert [await backend.get_result(task_id) for task_id in new] == [None, None]


async def test_cleanup_old_results_connects_for_a_cron_line(store: AnyBackendConfig) -> None:
    """``asyncio.run(app.backend.cleanup_old_results())`` in a script that never connected."""
    kind = kind_of(store)
    writer = chicory_backend(kind, store)
    await writer.connect()
    try:
        await writer.store_result("cron-1", result("cron-1"))
    finally:
        await writer.disconnect()
    cron = Chicory(broker=BrokerType.REDIS, backend=chicory_backend(kind, store)).backend
    assert isinstance(cron, ChicoryBackendAdapter)
    assert await cron.cleanup_old_results(older_than_seconds=0) == 1
    assert await cron.cleanup_stale_clients(stale_seconds=0) == 0  # Chicory's returns 0 here
    assert (await cron.healthcheck()).connected is False  # left as it was: not connected


async def test_chicorys_own_check_then_cleanup_runs_with_ours(app: Chicory) -> None:
    """Upstream's test_backend_cleanup_old_results, step by step: it skips unless the
    backend is Chicory's DatabaseBackend, stores one result, and expects the cleanup
    with older_than_seconds=0 to delete at least it."""
    backend = app.backend
    if not isinstance(backend, ChicoryDatabaseBackend):
        # Upstream skips for Chicory's own RedisBackend too; ours answers all the same.
        assert isinstance(backend, ChicoryBackendAdapter)
        assert kind_of(backend.config) == "redis"
        return
    task_id = str(uuid.uuid4())
    await backend.store_result(task_id, TaskResult[str](task_id=task_id, state=TaskState.SUCCESS))
    count = await backend.cleanup_old_results(older_than_seconds=0)
    assert isinstance(count, int) and count >= 1
    assert await backend.get_result(task_id) is None


# -- CHICORY_BACKEND_* variables: accepted by both, or refused by ours ---------------------

BOTH = None  # the value is accepted by Chicory() and by ours

# (variable, value, None or a part of the fix our refusal must name)
SETTINGS: list[tuple[str, str, str | None]] = [
    ("SQLITE_URL", "sqlite+aiosqlite:///results.db", BOTH),
    ("SQLITE_URL", "sqlite+aiosqlite:////srv/app/results.db", BOTH),
    ("SQLITE_URL", "sqlite+aiosqlite:///:memory:", BOTH),
    ("SQLITE_URL", "sqlite+aiosqlite:///results.db?mode=rwc", BOTH),
    ("SQLITE_URL", "sqlite:////srv/app/results.db", "use sqlite+aiosqlite:////srv/app/results.db"),
    ("SQLITE_URL", "sqlite:///results.db", "use sqlite+aiosqlite:///results.db"),
    ("SQLITE_URL", "sqlite://", "use sqlite+aiosqlite:///:memory:"),
    ("SQLITE_URL", "sqlite+aiosqlite://", "use sqlite+aiosqlite:///:memory:"),
    ("SQLITE_URL", "sqlite+pysqlite:///r.db", "use sqlite+aiosqlite:///r.db"),
    ("SQLITE_URL", f"postgresql://u:{SECRET}@h/db", "sqlite+aiosqlite:///<path of the file>"),
    ("SQLITE_URL", "", "unset it"),
    ("SQLITE_FILE_PATH", "results.db", BOTH),
    ("SQLITE_FILE_PATH", ":memory:", BOTH),
    ("SQLITE_POOL_SIZE", "3", BOTH),
    ("SQLITE_POOL_SIZE", "", "unset it"),
    ("SQLITE_MAX_OVERFLOW", "0", BOTH),
    ("SQLITE_POOL_RECYCLE", "0", BOTH),
    ("SQLITE_POOL_RECYCLE", "-1", "give whole seconds"),
    ("SQLITE_POOL_TIMEOUT", "2", BOTH),
    ("SQLITE_POOL_TIMEOUT", "2.0", BOTH),
    ("SQLITE_POOL_TIMEOUT", "0.5", "give whole seconds, at least 1"),
    ("SQLITE_ECHO", "yes", BOTH),
    ("SQLITE_ECHO", "", "unset it"),
    ("POSTGRES_URL", f"postgresql+asyncpg://u:{SECRET}@h:5432/db", BOTH),
    ("POSTGRES_URL", "postgresql://u@h/db", BOTH),
    ("POSTGRES_URL", "postgres://h/db", BOTH),
    ("POSTGRES_URL", "postgresql+asyncpg://u@localhost/db?host=/var/run/postgresql", BOTH),
    ("POSTGRES_URL", "postgresql+asyncpg://u@/db?host=/var/run/postgresql", "localhost"),
    (
        "POSTGRES_URL",
        f"postgresql+asyncpg://u:{SECRET}@/db?host=h1:5432&host=h2:5432",
        "CHICORY_BACKEND_POSTGRES_HOSTS=h1:5432,h2:5432",
    ),
    ("POSTGRES_URL", f"mysql://u:{SECRET}@h/db", "postgresql+asyncpg://user:password@host"),
    ("POSTGRES_URL", "", "unset it"),
    ("POSTGRES_HOSTS", "h1:5432,h2:5432", BOTH),  # ours only: Chicory ignores it
    ("POSTGRES_HOST", "", BOTH),
    ("POSTGRES_PORT", "6543", BOTH),
    ("POSTGRES_PORT", "0", "unset it for the usual one"),
    ("POSTGRES_PORT", "70000", "give the server's port"),
    ("POSTGRES_PORT", "", "unset it"),
    ("POSTGRES_PASSWORD", "", BOTH),
    ("POSTGRES_POOL_RECYCLE", "-1", "give whole seconds"),
    ("MYSQL_URL", "mysql+aiomysql://u@h:3306/db", BOTH),
    ("MYSQL_URL", "mysql://u@h/db", BOTH),
    ("MYSQL_URL", f"mariadb://u:{SECRET}@h/db", "mysql+aiomysql://user:password@host"),
    ("MYSQL_URL", "mariadb+aiomysql://u@h/db", "mysql+aiomysql://"),
    (
        "MYSQL_URL",
        "mysql+aiomysql://u@/db?host=n1:3306&host=n2:3306",
        "CHICORY_BACKEND_MYSQL_HOSTS",
    ),
    ("MYSQL_URL", "mysql+aiomysql://u@/db?unix_socket=/run/mysqld/mysqld.sock", "localhost"),
    ("MYSQL_PORT", "70000", "give the server's port"),
    ("MYSQL_POOL_TIMEOUT", "0.5", "whole seconds"),
    ("MSSQL_URL", "mssql+aioodbc://u@h:1433/db?driver=FreeTDS", BOTH),
    ("MSSQL_URL", f"mssql://u:{SECRET}@h/db", "mssql+aioodbc://user:password@host"),
    ("MSSQL_URL", "mssql+pyodbc://u@h/db", "mssql+aioodbc://"),
    ("MSSQL_URL", "mssql+aioodbc://u@/db?odbc_connect=DSN%3Dx", "name a host in the URL"),
    ("MSSQL_DRIVER", "FreeTDS", BOTH),
    ("MSSQL_PORT", "0", "unset it for the usual one"),
]


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CHICORY_* variable and no .env: the working directory is an empty one."""
    for name in list(os.environ):
        if name.upper().startswith("CHICORY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def chicory_refuses() -> bool:
    try:
        ChicoryConfig()  # what Chicory() builds first, from the same variables
    except ValidationError:
        return True
    return False


def ours_refusal(kind: str) -> ConfigurationError | None:
    try:
        config = config_for(kind)
        assert not isinstance(config, RedisBackendConfig)
        config.sqlalchemy_url()
    except ConfigurationError as error:
        return error
    return None


@pytest.mark.parametrize(("variable", "value", "fix"), SETTINGS)
def test_each_variable_is_accepted_by_both_or_refused_by_ours(
    bare_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    fix: str | None,
) -> None:
    name = f"CHICORY_BACKEND_{variable}"
    monkeypatch.setenv(name, value)
    refusal = ours_refusal(variable.split("_", 1)[0].lower())
    if fix is BOTH:
        assert refusal is None and not chicory_refuses()
        return
    assert chicory_refuses(), "the table says Chicory refuses this value"
    assert refusal is not None, f"ours accepts {name}={value!r}, which Chicory refuses"
    message = str(refusal)
    assert message.startswith(f"{name} (in the environment) ")
    assert "Chicory() parses this variable too" in message
    assert fix in message
    assert SECRET not in message


def test_the_app_is_built_with_a_variable_both_accept(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHICORY_BACKEND_SQLITE_URL", "sqlite+aiosqlite:///:memory:")
    app = Chicory(broker=BrokerType.REDIS, backend=chicory_backend("sqlite"))
    assert isinstance(app.backend, ChicoryDatabaseBackend)
    monkeypatch.setenv("CHICORY_BACKEND_SQLITE_URL", "sqlite:////srv/app/results.db")
    # Ours refuses first, naming the fix, where Chicory() would fail with a pydantic error.
    with pytest.raises(ConfigurationError, match=r"use sqlite\+aiosqlite:////srv/app/results"):
        Chicory(broker=BrokerType.REDIS, backend=chicory_backend("sqlite"))
    with pytest.raises(ValidationError, match="sqlite\\+aiosqlite"):
        Chicory(broker=BrokerType.REDIS, backend=None)


def test_dotenv_values_are_checked_and_the_environment_wins(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = bare_environment / ".env"
    dotenv.write_text("CHICORY_BACKEND_POSTGRES_PORT=70000\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"CHICORY_BACKEND_POSTGRES_PORT \(in \.env\)"):
        PostgresBackendConfig()
    assert chicory_refuses()
    monkeypatch.setenv("CHICORY_BACKEND_POSTGRES_PORT", "6543")  # the environment wins
    assert PostgresBackendConfig().port == 6543 and not chicory_refuses()
    # An empty variable in the environment wins over .env in Chicory (it then fails),
    # while ours would read it as unset: so it is refused.
    dotenv.write_text("CHICORY_BACKEND_POSTGRES_PORT=6543\n", encoding="utf-8")
    monkeypatch.setenv("CHICORY_BACKEND_POSTGRES_PORT", "")
    assert chicory_refuses()
    with pytest.raises(ConfigurationError, match="set but empty"):
        PostgresBackendConfig()


def test_arguments_are_not_variables_and_keep_our_rules(bare_environment: Path) -> None:
    """Chicory never sees what a program passes to our classes (CLI --url, code)."""
    assert SQLiteBackendConfig(url="sqlite:///r.db").sqlalchemy_url().drivername == (
        "sqlite+aiosqlite"
    )
    assert MSSQLBackendConfig(url="mssql://u@h/db").sqlalchemy_url().drivername == ("mssql+aioodbc")
    assert PostgresBackendConfig(pool_recycle=-1).pool_recycle == -1

"""Security: no code from stored data, no password in any output, only bound SQL, TLS.

Servers: the shared ones (fresh databases of this run; a throwaway MariaDB user) and
test-owned PostgreSQL, MariaDB and Redis with a throwaway CA, which require a password
over TCP (owned_servers.py), so that a real login, a wrong password and TLS can be tried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import SecretStr
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from chicory_backends.base import Backend
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import BackendUnreachableError, ChicoryBackendError, ConfigurationError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.engine import create_engine
from chicory_backends.sql.schema import task_results
from chicory_backends.types import TaskResult, TaskState, WorkerStats
from tests.support.owned_servers import OWNED_PASSWORD, OwnedServer, TlsFiles, owned
from tests.support.sent_sql import sent_statements
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, free_port, require_odbc
from tests.support.sql_databases import (
    migrated_database,
    recreate_database,
    require_server,
    run_blocking,
    run_database_name,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chicory_backends"
# Characters that URLs must quote, so the quoted form is searched for as well.
SECRET = "Zq9-dist1nctive@pa55/w:rd%"
WRONG = "Wr0ng-Zq9-not-the-password"
SECRETS = (SECRET, quote(SECRET, safe=""), OWNED_PASSWORD, WRONG)


def assert_no_secret(*texts: object) -> None:
    for item in texts:
        output = item if isinstance(item, str) else repr(item)
        for secret in SECRETS:
            assert secret not in output, f"a password shows in: {output[:300]!r}"


def error_texts(error: BaseException) -> list[str]:
    """What a logger, a traceback or an error tracker could print of an error."""
    texts = ["".join(traceback.format_exception(error))]
    seen: BaseException | None = error
    while seen is not None:  # the whole chain, suppressed context included
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


def _redis_backend_class() -> Any:
    try:
        from chicory_backends.redis import RedisBackend
    except Exception as error:
        pytest.skip(f"chicory_backends.redis is not importable: {error}")
    return RedisBackend


# -- no code from stored data ------------------------------------------------------------------

# ruff's flake8-bandit calls (pickle and the modules wrapping it, marshal, eval, exec,
# yaml.load) and the deserialisers that pyproject.toml bans by import (TID251).
NO_CODE_FROM_DATA = "S301,S302,S307,S102,S506,TID251"


def unsafe_uses(*paths: Path) -> subprocess.CompletedProcess[str]:
    """ruff's findings of code run from data in ``paths``; neither a ``# noqa`` nor a
    per-file-ignores entry of pyproject.toml can hide one."""
    pytest.importorskip("ruff", reason="ruff (the dev extra) runs the check")
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--ignore-noqa",
         "--config", str(ROOT / "pyproject.toml"), "--config", "lint.per-file-ignores = {}",
         "--output-format", "concise", "--select", NO_CODE_FROM_DATA, *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_no_pickle_marshal_eval_or_exec_anywhere_in_the_package() -> None:
    """The package and the migrations that ship inside the wheel."""
    shipped = [PACKAGE, ROOT / "migrations"]
    assert len(list(PACKAGE.rglob("*.py"))) > 10
    found = unsafe_uses(*shipped)
    assert found.returncode == 0, found.stdout + found.stderr


def test_the_check_fails_on_pickle_loads_and_eval(tmp_path: Path) -> None:
    """The same command, on a file that does what the package must not: it can fail."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\n\n\ndef load(data, text):\n    return pickle.loads(data), eval(text)\n"
    )
    found = unsafe_uses(bad)
    assert found.returncode == 1, found.stdout + found.stderr
    assert {"TID251", "S301", "S307"} <= {code for _line, code in _findings(found)}, found.stdout


def _findings(found: subprocess.CompletedProcess[str]) -> list[tuple[int, str]]:
    """(line, code) of each finding in ruff's concise output."""
    return [
        (int(line), code) for line, code in re.findall(r":(\d+):\d+: ([A-Z]+\d+)", found.stdout)
    ]


@pytest.mark.parametrize(
    ("snippet", "code"),
    [
        ("import pickle", "TID251"),
        ("import marshal as m", "TID251"),
        ("from pickle import loads", "TID251"),
        ("from dill import loads", "TID251"),
        ("import shelve", "TID251"),
        ("import cloudpickle", "TID251"),
        ("import pickle\npickle.loads(data)", "S301"),
        ("import dill\ndill.loads(data)", "S301"),
        ("import marshal\nmarshal.loads(data)", "S302"),
        ("eval(text)", "S307"),
        ("builtins.eval(x)", "S307"),
        ("exec(code)", "S102"),
        ("from builtins import exec\nexec(code)", "S102"),
        ("yaml.load(stream)", "S506"),
        ("yaml.unsafe_load(stream)", "TID251"),
    ],
)
def test_the_check_finds_each_banned_use(snippet: str, code: str, tmp_path: Path) -> None:
    """Each line carries a ``# noqa``: a suppression must not hide a banned use."""
    source = tmp_path / "snippet.py"
    lines = "".join(f"{line}  # noqa\n" for line in snippet.splitlines())
    source.write_text(f"import builtins\nimport yaml\n\n{lines}")
    found = unsafe_uses(source)
    assert found.returncode == 1, (snippet, found.stdout + found.stderr)
    findings = _findings(found)
    assert code in {found_code for _line, found_code in findings}, (snippet, found.stdout)
    assert min(line for line, _code in findings) >= 4, found.stdout  # not the two imports


def test_the_check_passes_json_and_sqlalchemy_calls(tmp_path: Path) -> None:
    clean = tmp_path / "clean.py"
    clean.write_text("import json\nvalue = json.loads(text)\nresult = connection.execute(stmt)\n")
    found = unsafe_uses(clean)
    assert found.returncode == 0, found.stdout + found.stderr


# -- no password in any output ------------------------------------------------------------------


def _configs() -> dict[str, Any]:
    url_secret = quote(SECRET, safe="")
    return {
        "postgres-field": PostgresBackendConfig(host="db", username="u", password=SECRET),
        "postgres-url": PostgresBackendConfig(url=f"postgresql+asyncpg://u:{url_secret}@db/c"),
        "mysql-field": MySQLBackendConfig(host="db", username="u", password=SECRET),
        "mysql-url": MySQLBackendConfig(url=f"mysql+aiomysql://u:{url_secret}@db/c"),
        "mssql-field": MSSQLBackendConfig(host="db", username="u", password=SECRET),
        "mssql-url": MSSQLBackendConfig(url=f"mssql+aioodbc://u:{url_secret}@db/c?driver=FreeTDS"),
        "sqlite-url": SQLiteBackendConfig(url="sqlite+aiosqlite:///results.db"),
        "redis-field": RedisBackendConfig(host="cache", password=SECRET),
        "redis-url": RedisBackendConfig(url=f"redis://:{url_secret}@cache:6379/0"),
        "redis-user-url": RedisBackendConfig(url=f"rediss://app:{url_secret}@cache:6380/1"),
    }


@pytest.mark.parametrize("name", list(_configs()))
def test_configs_and_backends_never_show_the_password(name: str) -> None:
    config = _configs()[name]
    shown: list[object] = [
        repr(config), str(config), f"{config}", config.model_dump_json(),
        str(config.model_dump()), config.address(),
    ]  # fmt: skip
    if isinstance(config, SQLBackendConfig):
        url = config.sqlalchemy_url()
        shown += [repr(url), str(url), repr(DatabaseBackend(config)), str(DatabaseBackend(config))]
        if isinstance(config, MSSQLBackendConfig):
            assert_no_secret(*shown)  # all that needs no driver, checked before a skip
            require_odbc()
        engine = create_engine(config)
        shown += [repr(engine), repr(engine.url), str(engine.url)]
    else:
        backend = _redis_backend_class()(config)
        shown += [repr(backend), str(backend)]
    assert_no_secret(*shown)


def test_error_texts_in_the_scan_itself() -> None:
    try:
        raise ValueError(SECRET)
    except ValueError as error:
        with pytest.raises(AssertionError):
            assert_no_secret(*error_texts(error))


# The owned servers require a password over TCP; the TLS ones serve TLS too.


@pytest.fixture(scope="module")
def owned_postgres() -> Iterator[OwnedServer]:
    with owned("postgres", tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def owned_mysql() -> Iterator[OwnedServer]:
    with owned("mysql", tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def owned_redis() -> Iterator[OwnedServer]:
    _redis_backend_class()
    with owned("redis", tls=True) as server:
        yield server


def redis_url(server: OwnedServer, password: str = OWNED_PASSWORD, ca: bool = True) -> str:
    assert server.tls is not None
    query = f"?ssl_ca_certs={server.tls.ca}" if ca else ""
    return f"rediss://:{quote(password, safe='')}@127.0.0.1:{server.port}/0{query}"


def owned_config(server: OwnedServer, password: str = OWNED_PASSWORD, **overrides: Any) -> Any:
    """A config logging in with ``password`` (the right one unless told otherwise)."""
    if server.kind == "redis":
        return RedisBackendConfig(url=redis_url(server, password), **overrides)
    fields = {
        "host": "127.0.0.1",
        "port": server.port,
        "username": "postgres" if server.kind == "postgres" else "chicory",
        "password": password,
        "database": "chicory",
        "connect_timeout": 5,
    }
    config_class = PostgresBackendConfig if server.kind == "postgres" else MySQLBackendConfig
    return config_class(**(fields | overrides))


def make(config: Any) -> Backend:
    if isinstance(config, RedisBackendConfig):
        return _redis_backend_class()(config)
    return DatabaseBackend(config)


@pytest.fixture(params=["postgres", "mysql", "redis"])
def server(request: pytest.FixtureRequest) -> OwnedServer:
    owned_server: OwnedServer = request.getfixturevalue(f"owned_{request.param}")
    return owned_server


def stats(worker_id: str) -> WorkerStats:
    from datetime import UTC, datetime

    return WorkerStats(
        worker_id=worker_id, hostname="h", pid=1, queue="q", concurrency=1,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


async def exercise(backend: Backend) -> None:
    """Every operation once, on a connected backend."""
    task_id = f"sec-{uuid.uuid4()}"
    await backend.set_state(task_id, TaskState.STARTED)
    await backend.store_result(
        task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"v": 1})
    )
    assert (await backend.get_result(task_id)) is not None
    await backend.get_results([task_id, "other"])
    await backend.store_heartbeat("w", stats("w"))
    await backend.get_heartbeat("w")
    await backend.get_active_workers()
    await backend.cleanup_stale_clients()
    assert (await backend.healthcheck()).connected
    await backend.delete_result(task_id)


@pytest.mark.slow
async def test_debug_logs_and_echo_never_show_the_password(
    server: OwnedServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "alembic", "asyncpg",
                 "aiomysql", "redis", "chicory_backends"):  # fmt: skip
        caplog.set_level(logging.DEBUG, logger=name)
    extra = {} if server.kind == "redis" else {"echo": True, "auto_migrate": True}
    backend = make(owned_config(server, **extra))
    await backend.connect()
    await exercise(backend)
    assert_no_secret(repr(backend), str(backend))
    await backend.disconnect()
    with pytest.raises(ChicoryBackendError) as raised:  # and a failed login, logged too
        await make(owned_config(server, WRONG, **extra)).connect()
    assert_no_secret(*error_texts(raised.value))
    out, err = capsys.readouterr()
    if server.kind != "redis":
        assert "SELECT" in out or "SELECT" in caplog.text  # echo did print statements
    assert caplog.records, "nothing was logged: the capture is not working"
    assert_no_secret(out, err, caplog.text, *(str(r.__dict__) for r in caplog.records))


@pytest.mark.slow
async def test_wrong_password_errors_never_show_either_password(server: OwnedServer) -> None:
    for config in (owned_config(server, WRONG), owned_config(server, SECRET)):
        backend = make(config)
        with pytest.raises(ChicoryBackendError) as raised:
            await asyncio.wait_for(backend.connect(), 30)
        assert_no_secret(*error_texts(raised.value), repr(backend), repr(config))


def _unreachable_configs(port: int) -> list[Any]:
    url_secret = quote(SECRET, safe="")
    fields = {"host": "127.0.0.1", "port": port, "username": "u", "password": SECRET}
    return [
        PostgresBackendConfig(**fields, connect_timeout=3),
        PostgresBackendConfig(url=f"postgresql+asyncpg://u:{url_secret}@127.0.0.1:{port}/c"),
        MySQLBackendConfig(**fields, connect_timeout=3),
        MySQLBackendConfig(url=f"mysql+aiomysql://u:{url_secret}@127.0.0.1:{port}/c"),
        RedisBackendConfig(host="127.0.0.1", port=port, password=SECRET, socket_timeout=3),
        RedisBackendConfig(url=f"redis://:{url_secret}@127.0.0.1:{port}/0", socket_timeout=3),
    ]


@pytest.mark.parametrize("index", range(6))
async def test_unreachable_errors_never_show_the_password(index: int) -> None:
    config = _unreachable_configs(free_port())[index]
    backend = make(config)
    with pytest.raises(BackendUnreachableError) as raised:
        await asyncio.wait_for(backend.connect(), 30)
    status = await backend.healthcheck()
    assert_no_secret(*error_texts(raised.value), repr(backend), status.error or "")


@pytest.mark.slow
async def test_mariadb_user_with_a_password_and_a_wrong_login() -> None:
    """On the shared MariaDB: a throwaway user with a password, then a wrong login."""
    require_server("mysql")
    user = f"chicory_sec_{os.getpid()}"
    database = f"chicory_sec_{os.getpid()}"
    await recreate_database(MYSQL_ADMIN_URL, database)
    admin = create_async_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
            await connection.execute(
                text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :password"), {"password": SECRET}
            )
            await connection.execute(text(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'"))
        host, port = make_url(MYSQL_ADMIN_URL).host, make_url(MYSQL_ADMIN_URL).port or 3306
        fields = {"host": host, "port": port, "username": user, "database": database}
        good = DatabaseBackend(MySQLBackendConfig(**fields, password=SECRET, auto_migrate=True))
        await good.connect()  # the right password works (and migrates)
        await exercise(good)
        await good.disconnect()
        for password in (WRONG, None):
            bad = DatabaseBackend(MySQLBackendConfig(**fields, password=password))
            with pytest.raises(ChicoryBackendError) as raised:
                await bad.connect()
            assert "Access denied" in str(raised.value)
            assert_no_secret(*error_texts(raised.value), repr(bad))
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        await admin.dispose()


# -- the CLI -----------------------------------------------------------------------------------

CLI_COMMANDS = [
    ["health"], ["health", "--json"], ["stats"], ["stats", "--json"], ["workers"],
    ["workers", "--json"], ["migrate", "--sql"], ["migrate"],
    ["cleanup", "--older-than", "7d", "--dry-run"],
]  # fmt: skip


def _cli_main() -> Any:
    if not (PACKAGE / "cli" / "__init__.py").exists():
        pytest.skip("chicory_backends/cli/ does not exist yet")
    try:
        from chicory_backends.cli import main
    except Exception as error:
        pytest.skip(f"chicory_backends.cli is not importable: {error}")
    return main


def _env_for(kind: str, host: str, port: int, user: str, password: str) -> dict[str, str]:
    prefix = f"CHICORY_BACKEND_{kind.upper()}_"
    env = {"CHICORY_BACKEND_TYPE": kind, f"{prefix}HOST": host, f"{prefix}PORT": str(port),
           f"{prefix}PASSWORD": password}  # fmt: skip
    if kind != "redis":
        env |= {f"{prefix}USERNAME": user, f"{prefix}DATABASE": "chicory",
                f"{prefix}CONNECT_TIMEOUT": "5"}  # fmt: skip
    else:
        env |= {f"{prefix}DB": "0", f"{prefix}SOCKET_TIMEOUT": "3"}
    return env


@pytest.mark.slow
def test_cli_output_never_shows_the_password(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    main = _cli_main()
    caplog.set_level(logging.DEBUG)
    pg: OwnedServer = request.getfixturevalue("owned_postgres")
    closed = free_port()
    setups: list[tuple[dict[str, str], list[str]]] = []
    for password in (OWNED_PASSWORD, WRONG):  # a working login, a refused one
        setups.append((_env_for("postgres", "127.0.0.1", pg.port, "postgres", password), []))
    setups.append((_env_for("postgres", "127.0.0.1", closed, "u", SECRET), []))
    setups.append((_env_for("mysql", "127.0.0.1", closed, "u", SECRET), []))
    setups.append(
        ({}, ["--url", f"postgresql+asyncpg://u:{quote(SECRET, safe='')}@127.0.0.1:{closed}/c"])
    )
    setups.append(({}, ["--url", str(pg.url(password=WRONG))]))  # type: ignore[attr-defined]
    setups.append(({}, ["--url", f"redis://:{quote(SECRET, safe='')}@127.0.0.1:{closed}/0"]))
    outcomes = []
    for env, url_args in setups:
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("CHICORY_BACKEND_")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            for command in CLI_COMMANDS:
                try:
                    code = main([*command, *url_args])
                except SystemExit as exit_:
                    code = exit_.code
                except Exception as error:  # a crash: its traceback must not leak either
                    assert_no_secret(*error_texts(error))
                    code = "crash"
                out, err = capsys.readouterr()
                assert_no_secret(out, err)
                outcomes.append((command[0], code))
    assert_no_secret(caplog.text)
    assert ("health", 0) in outcomes and ("health", 1) in outcomes, outcomes


@pytest.mark.slow
def test_cli_process_output_never_shows_the_password() -> None:
    _cli_main()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}
    env |= _env_for("postgres", "127.0.0.1", free_port(), "u", SECRET)
    for args in (["health"], ["stats", "--json"], ["migrate"]):
        done = subprocess.run(
            [sys.executable, "-m", "chicory_backends", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0 and done.stderr, (args, done.stdout, done.stderr)
        assert_no_secret(done.stdout, done.stderr)


# -- only bound parameters ------------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE chicory_task_results; --",
    "x' OR '1'='1",
    '"; DROP TABLE chicory_task_results; --',
    "\\'; DELETE FROM chicory_task_results; --",
    "%s%s%s",
    "%(task_id)s",
    ":task_id",
    "$1",
    "?",
    "1; SELECT pg_sleep(10)",
    "') ON CONFLICT DO NOTHING; --",
    "*",
    "chicory:result:*",
    "a\r\nFLUSHALL\r\n",
    "{chicory:workers}:index",
]


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mysql"])
def sql_config(request: pytest.FixtureRequest) -> Iterator[SQLBackendConfig]:
    with migrated_database(request.param, run_database_name("security")) as config:
        yield config


async def test_task_ids_are_bound_parameters_never_sql(sql_config: SQLBackendConfig) -> None:
    backend = DatabaseBackend(sql_config)
    async with backend:
        assert backend._engine is not None
        canary = f"canary-{uuid.uuid4()}"
        await backend.store_result(canary, TaskResult(task_id=canary, state=TaskState.SUCCESS))
        async with sent_statements(backend, templates=True) as statements:
            for task_id in INJECTIONS:
                stored = TaskResult(task_id=task_id, state=TaskState.FAILURE, error=task_id)
                await backend.set_state(task_id, TaskState.STARTED)
                await backend.store_result(task_id, stored)
                assert await backend.get_result(task_id) == stored
                got = await backend.get_results([task_id, canary])
                assert set(got) == {task_id, canary}
                await backend.store_heartbeat(task_id, stats(task_id))
                assert await backend.get_heartbeat(task_id) == stats(task_id)
        assert statements
        for statement in statements:  # placeholders such as ? and $1 are in there, of course
            for task_id in INJECTIONS:
                if any(word in task_id for word in ("DROP", "DELETE", "SELECT", "OR '", "FLUSH")):
                    assert task_id not in statement, statement
        async with backend._engine.connect() as connection:
            count = await connection.execute(select(func.count()).select_from(task_results))
            assert count.scalar_one() >= len(INJECTIONS) + 1  # the table is still there
        assert await backend.get_result(canary) is not None
        for task_id in INJECTIONS:
            await backend.delete_result(task_id)
            assert await backend.get_result(task_id) is None
        assert await backend.get_result(canary) is not None


async def test_redis_keys_are_data(owned_redis: OwnedServer) -> None:
    backend = make(owned_config(owned_redis, key_prefix=f"sec-{uuid.uuid4().hex[:8]}"))
    async with backend:
        canary = f"canary-{uuid.uuid4()}"
        await backend.store_result(canary, TaskResult(task_id=canary, state=TaskState.SUCCESS))
        for task_id in INJECTIONS:
            stored = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=task_id)
            await backend.store_result(task_id, stored)
            assert await backend.get_result(task_id) == stored
        got = await backend.get_results([*INJECTIONS, canary])
        assert set(got) == {*INJECTIONS, canary}
        for task_id in INJECTIONS:
            await backend.delete_result(task_id)
        assert await backend.get_result(canary) is not None
        assert set(await backend.get_results(INJECTIONS)) == set()


# -- TLS reaches the drivers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.create(tmp_path_factory.mktemp("tls"))


def connect_args_of(config: SQLBackendConfig) -> dict[str, Any]:
    """What the engine hands the driver's connect(), caught before any socket opens."""
    engine = create_engine(config)
    seen: dict[str, Any] = {}

    class Caught(Exception):
        pass

    @event.listens_for(engine.sync_engine, "do_connect")
    def catch(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise Caught

    async def attempt() -> None:
        try:
            async with engine.connect():
                pass
        except Caught:
            pass
        finally:
            await engine.dispose()

    run_blocking(attempt())
    assert seen, "the driver's connect was never reached"
    return seen


@pytest.mark.parametrize(
    "config",
    [
        PostgresBackendConfig(host="127.0.0.1", port=1, ssl="require"),
        PostgresBackendConfig(url="postgresql+asyncpg://u@127.0.0.1:1/c?ssl=verify-full"),
    ],
    ids=["field", "url"],
)
def test_postgres_ssl_reaches_asyncpg(config: PostgresBackendConfig) -> None:
    assert connect_args_of(config)["ssl"] in ("require", "verify-full")


def test_postgres_without_ssl_sends_no_ssl_option() -> None:
    assert "ssl" not in connect_args_of(PostgresBackendConfig(host="127.0.0.1", port=1))


@pytest.mark.parametrize(
    "config",
    [
        MySQLBackendConfig(host="127.0.0.1", port=1, query={"ssl_ca": "CA"}),
        MySQLBackendConfig(url="mysql+aiomysql://u@127.0.0.1:1/c?ssl_ca=CA"),
        MySQLBackendConfig(host="127.0.0.1", port=1, query={"ssl": "true"}),
    ],
    ids=["query-field", "url", "system-cas"],
)
def test_mysql_ssl_options_become_a_verifying_ssl_context(
    config: MySQLBackendConfig, tls_files: TlsFiles
) -> None:
    ca = str(tls_files.ca)
    if config.url is not None:
        url = config.url.get_secret_value().replace("CA", ca)
        config = config.model_copy(update={"url": SecretStr(url)})
    elif "ssl_ca" in config.query:
        config = config.model_copy(update={"query": {"ssl_ca": ca}})
    context = connect_args_of(config)["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_mysql_bad_tls_options_are_a_configuration_error() -> None:
    config = MySQLBackendConfig(host="127.0.0.1", query={"ssl_ca": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigurationError, match="TLS"):
        create_engine(config)


def shared_postgres_fields() -> dict[str, Any]:
    url = make_url(POSTGRES_ADMIN_URL)
    return {"host": url.host, "port": url.port or 5432, "username": url.username or "postgres",
            "database": url.database or "postgres", "connect_timeout": 5}  # fmt: skip


async def test_ssl_required_against_servers_without_tls_is_refused() -> None:
    """The shared servers speak no TLS: asking for it must fail, never fall back to plain."""
    require_server("postgres")
    require_server("mysql")
    pg = DatabaseBackend(PostgresBackendConfig(**shared_postgres_fields(), ssl="require"))
    with pytest.raises(BackendUnreachableError, match="SSL"):
        await pg.connect()
    mysql_url = make_url(MYSQL_ADMIN_URL)
    my = DatabaseBackend(
        MySQLBackendConfig(
            host=mysql_url.host,
            port=mysql_url.port or 3306,
            username=mysql_url.username,
            database="mysql",
            query={"ssl": "true"},
        )
    )
    with pytest.raises(BackendUnreachableError, match="TLS"):
        await my.connect()


async def _session_tls(backend: DatabaseBackend, query: str) -> Any:
    async with backend:
        assert backend._engine is not None
        async with backend._engine.connect() as connection:
            return (await connection.execute(text(query))).all()


@pytest.mark.slow
async def test_postgres_tls_end_to_end(
    owned_postgres: OwnedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert owned_postgres.tls is not None
    query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    for mode in ("require", "verify-full"):
        monkeypatch.setenv("PGSSLROOTCERT", str(owned_postgres.tls.ca))
        rows = await _session_tls(DatabaseBackend(owned_config(owned_postgres, ssl=mode)), query)
        assert rows == [(True,)], mode
    rows = await _session_tls(DatabaseBackend(owned_config(owned_postgres, ssl="disable")), query)
    assert rows == [(False,)]
    # Unset, asyncpg's default is "prefer": TLS when the server offers it, unverified.
    rows = await _session_tls(DatabaseBackend(owned_config(owned_postgres)), query)
    assert rows == [(True,)]
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/ssl/certs/ca-certificates.crt")  # not our CA
    with pytest.raises(ChicoryBackendError, match=r"(?i)certificate"):
        await DatabaseBackend(owned_config(owned_postgres, ssl="verify-full")).connect()


@pytest.mark.slow
async def test_mysql_tls_end_to_end(owned_mysql: OwnedServer) -> None:
    assert owned_mysql.tls is not None
    query = "SHOW SESSION STATUS LIKE 'Ssl_version'"
    config = owned_config(owned_mysql, query={"ssl_ca": str(owned_mysql.tls.ca)})
    rows = await _session_tls(DatabaseBackend(config), query)
    assert rows[0][1].startswith("TLS"), rows
    rows = await _session_tls(DatabaseBackend(owned_config(owned_mysql)), query)
    assert rows[0][1] == "", rows  # without ssl options: plain text
    foreign_ca = owned_config(owned_mysql, query={"ssl": "true"})  # the system CAs only
    with pytest.raises(BackendUnreachableError):  # aiomysql reports 2003, not the cert error
        await DatabaseBackend(foreign_ca).connect()


@pytest.mark.slow
async def test_redis_tls_end_to_end(owned_redis: OwnedServer) -> None:
    from redis.asyncio.connection import SSLConnection

    backend = make(owned_config(owned_redis, key_prefix=f"tls-{uuid.uuid4().hex[:8]}"))
    async with backend:
        client: Any = backend._client  # type: ignore[attr-defined]
        assert issubclass(client.connection_pool.connection_class, SSLConnection)
        await exercise(backend)
    no_ca = RedisBackendConfig(url=redis_url(owned_redis, ca=False), socket_timeout=3)
    with pytest.raises(BackendUnreachableError, match="CERTIFICATE_VERIFY_FAILED") as raised:
        await make(no_ca).connect()
    assert_no_secret(*error_texts(raised.value))
    plain = RedisBackendConfig(
        url=f"redis://:{OWNED_PASSWORD}@127.0.0.1:{owned_redis.port}/0", socket_timeout=3
    )
    with pytest.raises(BackendUnreachableError) as raised:
        await asyncio.wait_for(make(plain).connect(), 30)
    assert_no_secret(*error_texts(raised.value))

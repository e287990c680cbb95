"""What a user of the installed package meets first: drivers, .env, alembic.ini, errors.

Missing drivers are simulated in this process (a module blocked in sys.modules, or an
import that fails as pyodbc's does without unixODBC); the console scripts run as
subprocesses in a temporary working directory, as in a deploy directory.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import chicory.config
import pytest
from sqlalchemy import inspect as inspect_schema

import chicory_backends
from chicory_backends import errors
from chicory_backends.alembic_ini import alembic_ini
from chicory_backends.cli import main
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import ConfigurationError, DriverNotInstalledError
from chicory_backends.factory import config_for, create_backend
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.engine import create_engine
from chicory_backends.sql.migrate import current_revision
from chicory_backends.sql.schema import SCHEMA_REVISION, metadata
from tests.support.services import require_odbc
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Each kind, the module its driver is, and a configuration of it.
DRIVERS: dict[str, tuple[str, Callable[[], object]]] = {
    "postgres": ("asyncpg", PostgresBackendConfig),
    "mysql": ("aiomysql", MySQLBackendConfig),
    "sqlite": ("aiosqlite", SQLiteBackendConfig),
    "mssql": ("aioodbc", lambda: MSSQLBackendConfig(driver="FreeTDS")),
    "redis": ("redis", RedisBackendConfig),
}
NO_LIBODBC = "libodbc.so.2: cannot open shared object file: No such file or directory"

Block = Callable[..., None]


@pytest.fixture
def block_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[Block]:
    """block("redis") makes `import redis` (and its submodules) fail as if not installed;
    block("pyodbc", fails=...) makes it raise that ImportError, as a broken library does."""
    blocked: set[str] = set()

    class Refuse(importlib.abc.MetaPathFinder):
        def __init__(self, name: str, message: str) -> None:
            self.name, self.message = name, message

        def find_spec(self, name: str, *_args: object) -> None:
            if name == self.name:
                raise ImportError(self.message, name=name)

    def block(*names: str, fails: str | None = None, unload: Sequence[str] = ()) -> None:
        roots = {*names, *unload}
        blocked.update(roots)
        for loaded in list(sys.modules):
            if loaded.split(".")[0] in roots:
                monkeypatch.delitem(sys.modules, loaded)
        for name in names:
            if fails is None:
                monkeypatch.setitem(sys.modules, name, None)
            else:
                monkeypatch.setattr(sys, "meta_path", [Refuse(name, fails), *sys.meta_path])

    yield block
    for loaded in list(sys.modules):  # what a failed import left half-loaded
        if loaded.split(".")[0] in blocked and isinstance(sys.modules[loaded], ModuleType):
            del sys.modules[loaded]


# -- a missing driver is named, with what installs it ---------------------------------


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_missing_driver_names_the_extra_that_installs_it(kind: str, block_imports: Block) -> None:
    module, config = DRIVERS[kind]
    block_imports(module)
    with pytest.raises(DriverNotInstalledError) as raised:
        create_backend(kind, config())  # type: ignore[arg-type]
    message = str(raised.value)
    assert f"pip install 'chicory-backends[{kind}]'" in message, message
    assert f"the {kind} backend" in message and repr(module) in message
    assert isinstance(raised.value, ConfigurationError)


def test_without_unixodbc_mssql_names_the_system_packages(block_imports: Block) -> None:
    block_imports("pyodbc", fails=NO_LIBODBC, unload=["aioodbc"])
    with pytest.raises(DriverNotInstalledError) as raised:
        create_backend("mssql", MSSQLBackendConfig(driver="FreeTDS"))
    message = str(raised.value)
    assert NO_LIBODBC in message
    assert "unixODBC" in message and "unixodbc" in message
    assert "msodbcsql18" in message and "tdsodbc" in message


def test_an_odbc_driver_unixodbc_does_not_know_is_named() -> None:
    require_odbc("FreeTDS")
    assert isinstance(
        create_backend("mssql", MSSQLBackendConfig(driver="FreeTDS")), DatabaseBackend
    )
    with pytest.raises(DriverNotInstalledError, match="no ODBC driver named 'No Such Driver 9'"):
        create_backend("mssql", MSSQLBackendConfig(driver="No Such Driver 9"))


def test_an_unknown_sqlalchemy_driver_is_a_configuration_error() -> None:
    config = PostgresBackendConfig(url="postgresql+nosuchdriver://u@h/db")
    with pytest.raises(ConfigurationError, match="no driver 'postgresql\\+nosuchdriver'"):
        create_backend("postgres", config)


def test_the_cli_names_the_extra_of_the_configured_backend(
    block_imports: Block, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    block_imports("redis")
    monkeypatch.setenv("CHICORY_BACKEND_TYPE", "redis")
    assert main(["health"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'chicory-backends[redis]'" in err and "[postgres]" not in err
    assert err.count("\n") == 1


def test_the_cli_without_unixodbc(block_imports: Block, capsys: pytest.CaptureFixture[str]) -> None:
    block_imports("pyodbc", fails=NO_LIBODBC, unload=["aioodbc"])
    url = "mssql+aioodbc://u@127.0.0.1/db?driver=FreeTDS"
    assert main(["--url", url, "health"]) == 2
    assert "unixodbc" in capsys.readouterr().err
    # Offline SQL needs no driver.
    assert main(["--url", url, "migrate", "--sql"]) == 0
    assert "CREATE TABLE chicory_task_results" in capsys.readouterr().out


def test_the_commands_name_the_extra_when_run_without_the_driver(tmp_path: Path) -> None:
    """The console scripts as a user runs them, with redis-py and asyncpg not importable."""
    hidden = tmp_path / "hidden"
    for module in ("redis", "asyncpg"):
        (hidden / module).mkdir(parents=True)
        (hidden / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError('not installed: {module}', name={module!r})\n"
        )
    env = clean_environment() | {"PYTHONPATH": str(hidden)}
    (tmp_path / "alembic.ini").write_text(alembic_ini())
    commands = {
        "redis": [BIN / "chicory-backends", "health"],
        "postgres": [BIN / "alembic", "upgrade", "head"],
    }
    for kind, command in commands.items():
        done = subprocess.run(
            command, cwd=tmp_path, env=env | {"CHICORY_BACKEND_TYPE": kind},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode in (1, 2), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"pip install 'chicory-backends[{kind}]'" in done.stderr, done.stderr


def test_every_error_class_is_exported() -> None:
    classes = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert "DriverNotInstalledError" in classes and "CorruptResultError" in classes
    assert classes <= set(chicory_backends.__all__), classes - set(chicory_backends.__all__)
    for name in classes:
        assert getattr(chicory_backends, name) is getattr(errors, name)


# -- .env, as Chicory reads it ---------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own, and no CHICORY_BACKEND_* in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("CHICORY_BACKEND_"):
            monkeypatch.delenv(name)
    return tmp_path


def write_env(directory: Path, **variables: str) -> None:
    lines = [f"CHICORY_BACKEND_{name}={value}" for name, value in variables.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}


def test_dotenv_configures_the_library(workdir: Path) -> None:
    write_env(
        workdir, TYPE="postgres", POSTGRES_HOST="db.from-dotenv", POSTGRES_PASSWORD="pässwörd",
        REDIS_KEY_PREFIX="dotenv", SQLITE_FILE_PATH="dotenv.db",
    )  # fmt: skip
    backend = create_backend()
    assert isinstance(backend, DatabaseBackend)
    assert isinstance(backend.config, PostgresBackendConfig)
    assert backend.config.host == "db.from-dotenv"
    assert backend.config.password is not None
    assert backend.config.password.get_secret_value() == "pässwörd"  # UTF-8, as in Chicory
    redis = config_for("redis")
    assert isinstance(redis, RedisBackendConfig) and redis.key_prefix == "dotenv"
    sqlite = config_for("sqlite")
    assert isinstance(sqlite, SQLiteBackendConfig) and sqlite.file_path == "dotenv.db"


def test_the_environment_wins_over_dotenv_as_in_chicory(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env(workdir, TYPE="mysql", POSTGRES_HOST="from-dotenv", POSTGRES_PORT="6543")
    ours, theirs = PostgresBackendConfig, chicory.config.PostgresBackendConfig
    assert ours().host == theirs().host == "from-dotenv"

    monkeypatch.setenv("CHICORY_BACKEND_POSTGRES_HOST", "from-environment")
    monkeypatch.setenv("CHICORY_BACKEND_TYPE", "sqlite")
    assert ours().host == theirs().host == "from-environment"
    assert ours().port == theirs().port == 6543  # the rest still comes from .env
    assert ours(host="argument").host == theirs(host="argument").host == "argument"
    assert isinstance(create_backend().config, SQLiteBackendConfig)  # type: ignore[attr-defined]


def test_dotenv_configures_the_cli(tmp_path: Path) -> None:
    write_env(tmp_path, TYPE="sqlite", SQLITE_FILE_PATH="cli-dotenv.db")
    script = str(BIN / "chicory-backends")
    done = subprocess.run(
        [script, "migrate"], cwd=tmp_path, env=clean_environment(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        f"sqlite at cli-dotenv.db: schema upgraded from empty to {SCHEMA_REVISION}" in done.stdout
    )
    assert (tmp_path / "cli-dotenv.db").is_file()


# -- alembic.ini for a deploy directory ------------------------------------------------


def test_the_ini_names_the_migrations_of_this_installation() -> None:
    text = alembic_ini()
    assert f"script_location = {ROOT / 'migrations'}\n" in text  # a source checkout
    assert "chicory_alembic_version" in text and "[logger_alembic]" in text


async def revision_and_tables(config: SQLBackendConfig) -> tuple[str | None, set[str]]:
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: set(inspect_schema(c).get_table_names()))
            return await current_revision(connection), names & set(metadata.tables)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def deploy_database(request: pytest.FixtureRequest) -> Iterator[SQLBackendConfig]:
    kind: str = request.param
    name = run_database_name("deploy")
    config = fresh_config(kind, name)
    try:
        yield config
    finally:
        drop_database(kind, name)


def test_alembic_in_a_deploy_directory_configured_by_dotenv(
    tmp_path: Path, deploy_database: SQLBackendConfig
) -> None:
    """`chicory-backends alembic-ini > chicory-alembic.ini`, a .env, then `alembic -c ...`
    (the README's way beside an application's own alembic.ini)."""
    env = clean_environment()

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    (tmp_path / "chicory-alembic.ini").write_text(run("chicory-backends", "alembic-ini").stdout)
    url = deploy_database.sqlalchemy_url().render_as_string(hide_password=False)
    if isinstance(deploy_database, SQLiteBackendConfig):
        write_env(tmp_path, TYPE="sqlite", SQLITE_URL=url)
    else:
        write_env(tmp_path, TYPE="postgres", POSTGRES_URL=url)

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return run("alembic", "-c", "chicory-alembic.ini", *args)

    upgraded = alembic("upgrade", "head")
    assert f"-> {SCHEMA_REVISION}" in upgraded.stderr
    tables = set(metadata.tables)
    assert asyncio.run(revision_and_tables(deploy_database)) == (SCHEMA_REVISION, tables)
    assert "No new upgrade operations detected" in alembic("check").stdout
    alembic("downgrade", "base")
    assert asyncio.run(revision_and_tables(deploy_database)) == (None, set())
    offline = alembic("upgrade", "head", "--sql")
    assert "CREATE TABLE chicory_task_results" in offline.stdout
    assert asyncio.run(revision_and_tables(deploy_database)) == (None, set())

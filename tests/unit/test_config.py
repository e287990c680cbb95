"""Configuration comes from the CHICORY_BACKEND_* variables Chicory's documentation names."""

from __future__ import annotations

import pytest

from chicory_backends import BackendType, DatabaseBackend, create_backend
from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import ConfigurationError
from chicory_backends.factory import config_for

SECRET = "s3cret-Kx7-unmistakable"


def test_postgres_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HOST": "db.internal",
        "PORT": "6543",
        "DATABASE": "chicory",
        "USERNAME": "chicory",
        "PASSWORD": SECRET,
        "POOL_SIZE": "3",
        "RESULT_TTL": "60",
    }.items():
        monkeypatch.setenv(f"CHICORY_BACKEND_POSTGRES_{name}", value)
    config = PostgresBackendConfig()
    url = config.sqlalchemy_url()
    assert (url.host, url.port, url.database, url.username) == (
        "db.internal",
        6543,
        "chicory",
        "chicory",
    )
    assert url.password == SECRET and url.drivername == "postgresql+asyncpg"
    assert (config.pool_size, config.result_ttl) == (3, 60)
    for shown in (repr(config), str(config), str(url), repr(url), repr(DatabaseBackend(config))):
        assert SECRET not in shown


# The URL's scheme: bare where Chicory 0.1.0 takes it too (our driver is added), else the
# one Chicory insists on (tests/test_chicory_compat.py: variables both must accept).
@pytest.mark.parametrize(
    ("prefix", "config_class", "drivername", "port", "scheme"),
    [
        ("MYSQL", MySQLBackendConfig, "mysql+aiomysql", 3306, "mysql"),
        ("MSSQL", MSSQLBackendConfig, "mssql+aioodbc", 1433, "mssql+aioodbc"),
    ],
)
def test_server_defaults_and_url_override(
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
    config_class: type,
    drivername: str,
    port: int,
    scheme: str,
) -> None:
    monkeypatch.setenv(f"CHICORY_BACKEND_{prefix}_HOST", "h")
    url = config_class().sqlalchemy_url()
    assert (url.drivername, url.host, url.port) == (drivername, "h", port)
    monkeypatch.setenv(f"CHICORY_BACKEND_{prefix}_URL", f"{scheme}://x:{SECRET}@other/db")
    url = config_class().sqlalchemy_url()
    assert (url.drivername, url.host, url.password) == (drivername, "other", SECRET)


def test_mssql_driver_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHICORY_BACKEND_MSSQL_DRIVER", "FreeTDS")
    assert MSSQLBackendConfig().sqlalchemy_url().query["driver"] == "FreeTDS"


def test_sqlite_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SQLiteBackendConfig().sqlalchemy_url().database == "chicory_results.db"
    monkeypatch.setenv("CHICORY_BACKEND_SQLITE_FILE_PATH", "/tmp/x.db")
    assert SQLiteBackendConfig().sqlalchemy_url().database == "/tmp/x.db"
    monkeypatch.setenv("CHICORY_BACKEND_SQLITE_URL", "sqlite+aiosqlite:///:memory:")
    assert SQLiteBackendConfig().sqlalchemy_url().database == ":memory:"


def test_redis_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RedisBackendConfig()
    assert (config.host, config.port, config.db, config.result_ttl, config.key_prefix) == (
        "localhost", 6379, 1, 3600, "chicory"
    )  # fmt: skip
    for name, value in {
        "HOST": "cache", "PORT": "6380", "DB": "2", "USERNAME": "u", "PASSWORD": SECRET,
        "RESULT_TTL": "0", "KEY_PREFIX": "app", "SENTINELS": "s1:26379, s2:26379",
        "SENTINEL_SERVICE": "main", "CLUSTER": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"CHICORY_BACKEND_REDIS_{name}", value)
    config = RedisBackendConfig()
    assert (config.host, config.port, config.db, config.result_ttl) == ("cache", 6380, 2, 0)
    assert config.sentinels == ["s1:26379", "s2:26379"] and config.sentinel_service == "main"
    assert config.cluster and config.key_prefix == "app"
    assert SECRET not in repr(config)


def test_create_backend_defaults_to_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHICORY_BACKEND_TYPE", raising=False)
    backend = create_backend()
    assert isinstance(backend, DatabaseBackend)
    assert backend.config.sqlalchemy_url().database == "chicory_results.db"
    monkeypatch.setenv("CHICORY_BACKEND_TYPE", "postgres")
    backend = create_backend()
    assert isinstance(backend, DatabaseBackend)
    assert isinstance(backend.config, PostgresBackendConfig)
    assert isinstance(create_backend(BackendType.MYSQL).config, MySQLBackendConfig)  # type: ignore[attr-defined]


def test_bad_configuration_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="unknown backend type 'nosuch'"):
        create_backend("nosuch")
    with pytest.raises(ConfigurationError, match="not a valid database URL"):
        PostgresBackendConfig(url="::nonsense::").sqlalchemy_url()
    monkeypatch.setenv("CHICORY_BACKEND_POSTGRES_PORT", "not-a-port")
    with pytest.raises(ConfigurationError, match="CHICORY_BACKEND_POSTGRES_PORT"):
        config_for("postgres")
    with pytest.raises(ConfigurationError, match="needs a MySQLBackendConfig"):
        create_backend("mysql", SQLiteBackendConfig())

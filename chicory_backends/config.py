"""Backend settings from ``CHICORY_BACKEND_*`` variables, named as in Chicory's documentation.

As in Chicory 0.1.0, every class also reads a ``.env`` file (UTF-8) in the working
directory; a variable set in the environment wins over the same one in ``.env``, and an
argument given to the class wins over both.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from chicory_backends.errors import ConfigurationError


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", env_ignore_empty=True, env_file=".env", env_file_encoding="utf-8"
    )


class BackendSelection(_Settings):
    """``CHICORY_BACKEND_TYPE``: a settings class of its own so that it comes from the same
    sources, in the same order, as every backend's variables (``.env`` included)."""

    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_")
    type: str | None = None


class SQLBackendConfig(_Settings):
    """What every SQL backend shares: the pool, expiry and the schema policy."""

    driver_name: ClassVar[str]
    default_port: ClassVar[int | None] = None

    url: SecretStr | None = Field(
        default=None, description="Full SQLAlchemy URL; overrides the separate fields"
    )
    pool_size: int = Field(
        default=10, ge=1, description="Connections kept open at most (see engine.pool_options)"
    )
    max_overflow: int = Field(
        default=0, ge=0, description="Added to pool_size; these connections are kept too"
    )
    pool_timeout: float = Field(default=30.0, gt=0)
    pool_recycle: int = Field(default=3600, description="Seconds; -1 keeps connections forever")
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a statement may wait for the server's answer"
    )
    echo: bool = False
    result_ttl: int | None = Field(
        default=None, ge=0, description="Seconds a result stays readable; None or 0 = forever"
    )
    max_result_bytes: int | None = Field(default=None, ge=1)
    auto_migrate: bool = Field(
        default=False, description="Upgrade the schema at connect() instead of refusing"
    )
    cleanup_batch_size: int = Field(default=5000, ge=1)
    write_chicory_format: bool = Field(
        default=False,
        description="Also write Chicory 0.1.0's result_json, for its own clients during a "
        "switch (sql/adopt.py); off: our writes clear it",
    )

    def sqlalchemy_url(self) -> URL:
        """The URL with the password inside; URL's own repr masks it."""
        if self.url is not None:
            try:
                url = make_url(self.url.get_secret_value())
            except Exception:
                raise ConfigurationError(
                    f"{type(self).__name__}.url is not a valid database URL"
                ) from None
            return url if "+" in url.drivername else url.set(drivername=self.driver_name)
        return self._url_from_fields()

    def _url_from_fields(self) -> URL:
        raise NotImplementedError

    def address(self) -> str:
        """host:port for error messages (never the password)."""
        url = self.sqlalchemy_url()
        return f"{url.host or 'localhost'}:{url.port or self.default_port}"


class _ServerSQLConfig(SQLBackendConfig):
    host: str = "localhost"
    port: int = Field(default=0, description="0 = the database's usual port")
    database: str = "chicory"
    username: str = "chicory"
    password: SecretStr | None = None
    query: dict[str, str] = Field(
        default_factory=dict, description="Extra URL query options, e.g. ssl settings"
    )

    def _url_from_fields(self) -> URL:
        return URL.create(
            self.driver_name,
            username=self.username or None,
            password=self.password.get_secret_value() if self.password else None,
            host=self.host,
            port=self.port or self.default_port,
            database=self.database,
            query=self.query,
        )


class _MultiHostSQLConfig(_ServerSQLConfig):
    """A server that may be one of several (a primary and standbys, Galera nodes): each
    listed in the URL's query, ``?host=h1:p1&host=h2:p2`` as SQLAlchemy's asyncpg dialect
    spells it, or in ``hosts`` (``CHICORY_BACKEND_<KIND>_HOSTS=h1:p1,h2:p2``)."""

    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host:port of each server, comma-separated, tried in order (fail-over); "
        "replaces host and port, and the URL's host",
    )

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts_have_ports(cls, value: list[str]) -> list[str]:
        # SQLAlchemy's asyncpg dialect needs a port with every host of several.
        hosts = []
        for entry in value:
            host, colon, port = entry.rpartition(":")
            if not colon or not host:
                host, port = entry, str(cls.default_port)
            if not host or not port.isdigit():
                raise ValueError(f"hosts entry {entry!r} is not host or host:port")
            hosts.append(f"{host}:{port}")
        return hosts

    def sqlalchemy_url(self) -> URL:
        url = super().sqlalchemy_url()
        if self.hosts:
            url = URL.create(
                url.drivername,
                username=url.username,
                password=url.password,
                database=url.database,
                query=url.query,
            ).update_query_dict({"host": list(self.hosts)})
        return url

    def server_hosts(self) -> list[tuple[str, int]]:
        """(host, port) of each listed server, in order; empty with a single server."""
        servers = []
        for entry in query_hosts(self.sqlalchemy_url()):
            host, colon, port = entry.rpartition(":")
            if not colon or not port.isdigit():
                host, port = entry, str(self.default_port)
            servers.append((host, int(port)))
        return servers

    def address(self) -> str:
        hosts = query_hosts(self.sqlalchemy_url())
        return ",".join(hosts) if hosts else super().address()


def query_hosts(url: URL) -> list[str]:
    """The ``host`` entries of a URL's query (several servers, or one given there)."""
    value = url.query.get("host")
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class PostgresBackendConfig(_MultiHostSQLConfig):
    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_POSTGRES_")
    driver_name = "postgresql+asyncpg"
    default_port = 5432
    port: int = 5432
    pgbouncer: bool = Field(
        default=False,
        description="Transaction-pooling PgBouncer in front: no server-side prepared statements",
    )
    ssl: str | None = Field(default=None, description="asyncpg ssl mode, e.g. 'require'")
    target_session_attrs: str | None = Field(
        default=None,
        description="Which of several servers to use (asyncpg's option); "
        "'read-write' (the primary) when several are listed",
    )

    def sqlalchemy_url(self) -> URL:
        """With several servers the session must be read-write unless
        ``target_session_attrs`` (or the URL) says otherwise: a backend writes."""
        url = super().sqlalchemy_url()
        if self.target_session_attrs:
            url = url.update_query_dict({"target_session_attrs": self.target_session_attrs})
        elif len(query_hosts(url)) > 1 and "target_session_attrs" not in url.query:
            url = url.update_query_dict({"target_session_attrs": "read-write"})
        return url


class MySQLBackendConfig(_MultiHostSQLConfig):
    """Several hosts (Galera nodes): each connection goes to the first that answers, in
    the order listed (see sql/engine.py)."""

    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_MYSQL_")
    driver_name = "mysql+aiomysql"
    default_port = 3306
    port: int = 3306


class MSSQLBackendConfig(_ServerSQLConfig):
    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_MSSQL_")
    driver_name = "mssql+aioodbc"
    default_port = 1433
    port: int = 1433
    driver: str = "ODBC Driver 18 for SQL Server"

    def _url_from_fields(self) -> URL:
        url = super()._url_from_fields()
        return url.update_query_dict({"driver": self.driver})


class SQLiteBackendConfig(SQLBackendConfig):
    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_SQLITE_")
    driver_name = "sqlite+aiosqlite"
    file_path: str = "chicory_results.db"
    busy_timeout_ms: int = Field(default=5000, ge=0)

    def _url_from_fields(self) -> URL:
        return URL.create(self.driver_name, database=self.file_path)

    def address(self) -> str:
        return self.sqlalchemy_url().database or ":memory:"


class RedisBackendConfig(_Settings):
    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_REDIS_")
    host: str = "localhost"
    port: int = 6379
    db: int = Field(default=1, ge=0)
    username: str | None = None
    password: SecretStr | None = None
    url: SecretStr | None = Field(default=None, description="redis://, rediss:// or unix://")
    result_ttl: int = Field(default=3600, ge=0, description="Seconds; 0 = never expire")
    key_prefix: str = "chicory"
    sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="host:port of each Sentinel, comma-separated"
    )
    sentinel_service: str = "mymaster"
    cluster: bool = False
    socket_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=50, ge=1)
    pool_timeout: float = Field(default=10.0, gt=0)
    max_result_bytes: int | None = Field(default=None, ge=1)
    history_size: int = Field(
        default=100_000,
        ge=0,
        description="How many recent tasks the history index keeps (list_tasks, "
        "task_summary); 0 = no index",
    )
    wait_replicas: int = Field(
        default=0,
        ge=0,
        description="A terminal write returns only once this many replicas have it (WAIT); "
        "0 = as soon as the master has it. Single node with replicas and Sentinel",
    )
    wait_timeout: float = Field(
        default=1.0, gt=0, description="Seconds a terminal write waits for its replicas"
    )

    @field_validator("sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def address(self) -> str:
        if self.url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.url.get_secret_value())
            return (
                parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
            )
        if self.sentinels:
            return f"sentinel {self.sentinel_service} via {','.join(self.sentinels)}"
        return f"{self.host}:{self.port}"


SQL_CONFIGS: dict[str, type[SQLBackendConfig]] = {
    "postgres": PostgresBackendConfig,
    "mysql": MySQLBackendConfig,
    "sqlite": SQLiteBackendConfig,
    "mssql": MSSQLBackendConfig,
}

AnyBackendConfig = SQLBackendConfig | RedisBackendConfig

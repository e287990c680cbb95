"""Backend settings from ``CHICORY_BACKEND_*`` variables, named as in Chicory's documentation.

As in Chicory 0.1.0, every class also reads a ``.env`` file (UTF-8) in the working
directory; a variable set in the environment wins over the same one in ``.env``, and an
argument given to the class wins over both.

Chicory() reads the same variables when the app is built, whatever backend it is given,
and fails on a value it refuses; so the SQL settings classes accept a variable only if
Chicory 0.1.0 accepts it too (see SQLBackendConfig).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    AnyUrl,
    Field,
    MySQLDsn,
    PostgresDsn,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
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


# -- the variables Chicory 0.1.0 reads too ---------------------------------------------


@dataclass(frozen=True)
class ChicoryRefusal:
    """Why Chicory 0.1.0 refuses a variable's value, and what to write instead."""

    problem: str
    fix: str


# A rule sees a variable's text as set and returns why Chicory refuses it, or None.
ChicoryRule = Callable[[str], ChicoryRefusal | None]

# pydantic's own parsing of text, as pydantic-settings applies it to Chicory's fields.
_INT: TypeAdapter[int] = TypeAdapter(int)
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_POSTGRES_DSN: TypeAdapter[PostgresDsn] = TypeAdapter(PostgresDsn)
_MYSQL_DSN: TypeAdapter[MySQLDsn] = TypeAdapter(MySQLDsn)
_ANY_URL: TypeAdapter[AnyUrl] = TypeAdapter(AnyUrl)
_UNSET_IT = "unset it (or delete its line from .env) to get the default, or give a value"


def _whole_number(low: int, high: int | None = None, fix: str | None = None) -> ChicoryRule:
    """Chicory's ``int`` field bounded by ``low`` (and ``high``)."""
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    advice = fix or f"give a whole number {bounds}"

    def rule(raw: str) -> ChicoryRefusal | None:
        try:
            value = _INT.validate_python(raw)
        except ValidationError:
            return ChicoryRefusal(f"is {raw!r}, which is not a whole number", advice)
        if value < low or (high is not None and value > high):
            return ChicoryRefusal(f"is {value}, and Chicory needs a whole number {bounds}", advice)
        return None

    return rule


def _boolean(raw: str) -> ChicoryRefusal | None:
    try:
        _BOOL.validate_python(raw)
    except ValidationError:
        return ChicoryRefusal(f"is {raw!r}, which is not a boolean", "use true or false")
    return None


def _sqlite_url(raw: str) -> ChicoryRefusal | None:
    """Chicory takes only the ``sqlite+aiosqlite:///`` form (not ``sqlite://`` for memory)."""
    if raw.startswith("sqlite+aiosqlite:///"):
        return None
    scheme, separator, _ = raw.partition("://")
    named = f"the scheme {scheme!r}" if separator and scheme else "no scheme"
    return ChicoryRefusal(
        f"names {named}, and Chicory takes only sqlite+aiosqlite:///<path>",
        f"use {_as_aiosqlite(raw)}",
    )


def _as_aiosqlite(raw: str) -> str:
    """The same SQLite database in Chicory's form; a placeholder for anything else (so
    that no part of another kind of URL, such as a password, is ever shown)."""
    try:
        url = make_url(raw)
    except Exception:
        return "sqlite+aiosqlite:///<path of the file>"
    if url.get_backend_name() != "sqlite":
        return "sqlite+aiosqlite:///<path of the file>"
    query = raw.partition("?")[2]  # a SQLite URL holds no password
    return f"sqlite+aiosqlite:///{url.database or ':memory:'}" + (f"?{query}" if query else "")


def _server_url(
    dsn: TypeAdapter[Any], scheme: str | None, example: str, no_host: str
) -> ChicoryRule:
    """Chicory's URL field: valid for ``dsn`` (pydantic's URL type Chicory uses), and of
    ``scheme`` when Chicory insists on one. ``no_host`` is the fix for a URL without a
    host, which ours takes (several servers, a Unix socket) and Chicory does not."""

    def rule(raw: str) -> ChicoryRefusal | None:
        try:
            url = dsn.validate_python(raw)
        except ValidationError as error:
            reason = str(error.errors()[0]["msg"])  # never the input: it holds the password
            fix = no_host if "empty host" in reason else f"use a URL such as {example}"
            return ChicoryRefusal(f"is a URL Chicory refuses ({reason})", fix)
        if scheme is not None and url.scheme != scheme:
            return ChicoryRefusal(
                f"names the scheme {url.scheme!r}, and Chicory takes only {scheme}://",
                f"use a URL such as {example}",
            )
        return None

    return rule


def chicory_refusal(rule: ChicoryRule, raw: str) -> ChicoryRefusal | None:
    """Why Chicory 0.1.0 refuses ``raw`` for a field of ``rule``; an empty value is
    refused for every such field (ours reads it as unset, Chicory parses it)."""
    if not raw.strip():
        return ChicoryRefusal("is set but empty, which Chicory refuses", _UNSET_IT)
    return rule(raw)


class _ChicoryAgreement(PydanticBaseSettingsSource):
    """A settings source that gives no values: it checks, before the class reads them, each
    of its variables that Chicory 0.1.0 also parses, and raises ConfigurationError for the
    first one Chicory would refuse. It reads what Chicory reads: the environment, empty
    values included, else ``.env``; arguments given to the class are not variables and
    are not checked."""

    def __init__(self, settings_cls: type[SQLBackendConfig]) -> None:
        super().__init__(settings_cls)
        self.config_class = settings_cls

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        config_class = self.config_class
        sources = (
            ("the environment", EnvSettingsSource(config_class, env_ignore_empty=False)),
            (".env", DotEnvSettingsSource(config_class, env_ignore_empty=False)),
        )
        prefix = str(config_class.model_config.get("env_prefix", ""))
        for name, rule in config_class.chicory_rules.items():
            field = config_class.model_fields[name]
            for where, source in sources:
                raw = source.get_field_value(field, name)[0]
                if raw is None:
                    continue
                refusal = chicory_refusal(rule, str(raw))
                if refusal is not None:
                    variable = f"{prefix}{name}".upper()
                    raise ConfigurationError(
                        f"{variable} (in {where}) {refusal.problem}. Chicory() parses this "
                        f"variable too and would fail on it, so it is refused here as well: "
                        f"{refusal.fix}"
                    )
                break  # the environment wins over .env, in Chicory as here
        return {}


class SQLBackendConfig(_Settings):
    """What every SQL backend shares: the pool, expiry and the schema policy.

    **Chicory's variables.** Chicory() parses its own settings of every kind from the
    same ``CHICORY_BACKEND_<KIND>_*`` variables when the app is built, and fails on a value
    it refuses, even when the app is given our backend. So a variable (environment or
    ``.env``) that Chicory 0.1.0 also parses is accepted only if Chicory accepts it too:
    constructing the class raises ConfigurationError naming the variable, what Chicory
    objects to and what to write instead (``chicory_rules`` lists the fields and rules).
    That refuses, among others: an empty ``_URL``, ``_PORT``, ``_POOL_*`` or ``_ECHO`` (ours
    would read it as unset); ``sqlite://`` and ``sqlite:///path`` URLs (use
    ``sqlite+aiosqlite:///path``); ``mariadb://`` and ``mssql://`` schemes; URLs with no
    host (several servers or a Unix socket in the query: list the servers in ``_HOSTS``,
    or name ``localhost`` in the URL); ``_PORT`` outside 1..65535 or 0; ``_POOL_RECYCLE``
    of -1; a fractional ``_POOL_TIMEOUT``. Variables only ours reads (``_RESULT_TTL``,
    ``_HOSTS``, ...) and values given as arguments are not Chicory's and keep our own rules.
    """

    driver_name: ClassVar[str]
    default_port: ClassVar[int | None] = None
    chicory_rules: ClassVar[Mapping[str, ChicoryRule]] = {
        "echo": _boolean,
        "pool_size": _whole_number(1),
        "max_overflow": _whole_number(0),
        "pool_recycle": _whole_number(0, fix="give whole seconds, e.g. 86400"),
        "pool_timeout": _whole_number(1, fix="give whole seconds, at least 1"),
    }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, after a check that Chicory accepts our variables too."""
        return (
            _ChicoryAgreement(cls),
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

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
    chicory_rules = {
        **SQLBackendConfig.chicory_rules,
        "port": _whole_number(
            1, 65535, fix="give the server's port, or unset it for the usual one"
        ),
    }
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
    """PostgreSQL through asyncpg (the ``[postgres]`` extra): ``CHICORY_BACKEND_POSTGRES_*``.

    Several servers (``hosts``, or ``?host=`` in the URL) are tried in order for a
    read-write session, unless ``target_session_attrs`` asks otherwise. ``pgbouncer=True``
    for a transaction-pooling PgBouncer in front: no server-side prepared statements,
    and ``wait_for_result`` polls, since PgBouncer cannot carry LISTEN.
    """

    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_POSTGRES_")
    chicory_rules = {
        **_ServerSQLConfig.chicory_rules,
        "url": _server_url(
            _POSTGRES_DSN,
            None,
            "postgresql+asyncpg://user:password@host:5432/database",
            "name a host in the URL: for several servers, one of them, and list them all in "
            "CHICORY_BACKEND_POSTGRES_HOSTS=h1:5432,h2:5432; for a Unix socket, localhost "
            "(postgresql+asyncpg://user@localhost/database?host=/var/run/postgresql)",
        ),
    }
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
    chicory_rules = {
        **_ServerSQLConfig.chicory_rules,
        "url": _server_url(
            _MYSQL_DSN,
            None,
            "mysql+aiomysql://user:password@host:3306/database (MariaDB too)",
            "name a host in the URL: for several servers, one of them, and list them all in "
            "CHICORY_BACKEND_MYSQL_HOSTS=n1:3306,n2:3306; for a Unix socket, localhost "
            "(mysql+aiomysql://user@localhost/database?unix_socket=/run/mysqld/mysqld.sock)",
        ),
    }
    driver_name = "mysql+aiomysql"
    default_port = 3306
    port: int = 3306


class MSSQLBackendConfig(_ServerSQLConfig):
    """SQL Server through aioodbc (the ``[mssql]`` extra): ``CHICORY_BACKEND_MSSQL_*``.

    ``driver`` names the ODBC driver registered with unixODBC; ``create_backend`` checks
    that it is there (factory.require_driver), unless the URL gives a driver file or a
    whole ``odbc_connect`` string.
    """

    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_MSSQL_")
    chicory_rules = {
        **_ServerSQLConfig.chicory_rules,
        "url": _server_url(
            _ANY_URL,
            "mssql+aioodbc",
            "mssql+aioodbc://user:password@host:1433/database?driver=ODBC+Driver+18+for+SQL+Server",
            "name a host in the URL (with odbc_connect it is not used): "
            "mssql+aioodbc://localhost/?odbc_connect=...",
        ),
    }
    driver_name = "mssql+aioodbc"
    default_port = 1433
    port: int = 1433
    driver: str = "ODBC Driver 18 for SQL Server"

    def _url_from_fields(self) -> URL:
        url = super()._url_from_fields()
        return url.update_query_dict({"driver": self.driver})


class SQLiteBackendConfig(SQLBackendConfig):
    """SQLite through aiosqlite (the ``[sqlite]`` extra): ``CHICORY_BACKEND_SQLITE_*``.

    The database is ``file_path`` (default ``chicory_results.db``) unless ``url`` names
    one; a file database runs in WAL mode, and a writer waits up to ``busy_timeout_ms``
    for another process's write lock instead of failing.
    """

    model_config = SettingsConfigDict(env_prefix="CHICORY_BACKEND_SQLITE_")
    chicory_rules = {**SQLBackendConfig.chicory_rules, "url": _sqlite_url}
    driver_name = "sqlite+aiosqlite"
    file_path: str = "chicory_results.db"
    busy_timeout_ms: int = Field(default=5000, ge=0)

    def _url_from_fields(self) -> URL:
        return URL.create(self.driver_name, database=self.file_path)

    def address(self) -> str:
        return self.sqlalchemy_url().database or ":memory:"


class RedisBackendConfig(_Settings):
    """Redis through redis-py (the ``[redis]`` extra): ``CHICORY_BACKEND_REDIS_*``.

    One server (``host``/``port`` or ``url``), a Sentinel-managed master
    (``sentinels``, ``sentinel_service``) or a Cluster (``cluster=True``); combinations
    that exclude each other raise ConfigurationError when the backend is made. Keys
    start with ``key_prefix``; results expire ``result_ttl`` seconds after their last
    write (0: never).
    """

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
    write_chicory_format: bool = Field(
        default=False,
        description="Also write what Chicory 0.1.0's own RedisBackend reads (result "
        "documents it parses, heartbeats in its worker set), for its clients during a "
        "switch; it reads only the 'chicory' key prefix",
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

"""The one place a backend kind becomes a class and a configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from chicory_backends.config import (
    SQL_CONFIGS,
    AnyBackendConfig,
    BackendSelection,
    RedisBackendConfig,
    SQLBackendConfig,
)
from chicory_backends.errors import ConfigurationError, DriverNotInstalledError
from chicory_backends.types import BackendType

if TYPE_CHECKING:
    from chicory_backends.base import Backend

DEFAULT_KIND = BackendType.SQLITE

_URL_SCHEMES: dict[str, BackendType] = {
    "postgresql": BackendType.POSTGRES,
    "postgres": BackendType.POSTGRES,
    "mysql": BackendType.MYSQL,
    "mariadb": BackendType.MYSQL,
    "sqlite": BackendType.SQLITE,
    "mssql": BackendType.MSSQL,
    "redis": BackendType.REDIS,
    "rediss": BackendType.REDIS,
    "unix": BackendType.REDIS,
}


def resolve_kind(kind: BackendType | str | None = None) -> BackendType:
    """The argument, else CHICORY_BACKEND_TYPE (environment, then .env), else SQLite.

    Raises:
        ConfigurationError: the kind is not a BackendType (the message lists them).
    """
    value = kind if kind is not None else _selected_type() or DEFAULT_KIND
    try:
        return BackendType(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(member.value for member in BackendType)
        raise ConfigurationError(
            f"unknown backend type {value!r}: choose one of {choices}"
        ) from None


def _selected_type() -> str | None:
    try:
        return BackendSelection().type
    except ValidationError as error:
        raise ConfigurationError(f"CHICORY_BACKEND_TYPE: {error.errors()[0]['msg']}") from None


def config_for(kind: BackendType | str | None = None) -> AnyBackendConfig:
    """The configuration of a kind, read from its CHICORY_BACKEND_<KIND>_* variables.

    Raises:
        ConfigurationError: the kind is unknown, or a variable's value is refused (the
            message names each variable and its problem).
    """
    resolved = resolve_kind(kind)
    config_class = RedisBackendConfig if resolved is BackendType.REDIS else SQL_CONFIGS[resolved]
    try:
        return config_class()
    except ValidationError as error:
        raise ConfigurationError(_describe(error, resolved)) from None


def kind_from_url(url: str) -> BackendType:
    """The backend kind a URL's scheme names (``postgresql+asyncpg://`` -> postgres).

    Raises:
        ConfigurationError: the scheme is none of ours (the message lists them).
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    kind = _URL_SCHEMES.get(scheme)
    if kind is None:
        known = ", ".join(sorted(_URL_SCHEMES))
        raise ConfigurationError(f"unknown scheme {scheme!r}: use one of {known}")
    return kind


def sql_config_from_url(url: str) -> SQLBackendConfig:
    """The SQL configuration of the kind ``url`` names, with ``url`` as its URL.

    Raises:
        ConfigurationError: the scheme is unknown, or names Redis.
    """
    kind = kind_from_url(url)
    if kind is BackendType.REDIS:
        raise ConfigurationError("not a SQL database URL (a redis one)")
    return SQL_CONFIGS[kind](url=SecretStr(url))


def create_backend(
    kind: BackendType | str | None = None, config: AnyBackendConfig | None = None
) -> Backend:
    """A backend object, not yet connected; its driver is imported now (require_driver).

    ``kind`` as ``resolve_kind`` reads it; ``config`` defaults to the kind's
    ``CHICORY_BACKEND_<KIND>_*`` variables. A missing driver or a bad setting shows up
    here, as one clear line, rather than at the first ``connect()``.

    Raises:
        ConfigurationError: an unknown kind, a config of another kind's class, a refused
            variable, an invalid URL or one naming a driver SQLAlchemy does not have,
            Redis settings that exclude each other.
        DriverNotInstalledError: the kind's driver (or, for SQL Server, the ODBC
            library or driver) cannot be loaded; names what to install.
    """
    resolved = resolve_kind(kind)
    if config is None:
        config = config_for(resolved)
    if resolved is BackendType.REDIS:
        if not isinstance(config, RedisBackendConfig):
            raise ConfigurationError("a redis backend needs a RedisBackendConfig")
        require_driver(config)
        from chicory_backends.redis import RedisBackend

        return RedisBackend(config)
    expected = SQL_CONFIGS[resolved]
    if not isinstance(config, expected):
        raise ConfigurationError(
            f"a {resolved.value} backend needs a {expected.__name__}, not a {type(config).__name__}"
        )
    require_driver(config)
    from chicory_backends.sql.backend import DatabaseBackend

    return DatabaseBackend(config)


# The extra of ours that installs each driver module (and the modules those import).
_EXTRA_OF_MODULE = {
    "asyncpg": "postgres",
    "aiomysql": "mysql",
    "pymysql": "mysql",
    "aiosqlite": "sqlite",
    "aioodbc": "mssql",
    "pyodbc": "mssql",
    "redis": "redis",
}

ODBC_SYSTEM_PACKAGES = (
    "pyodbc needs the unixODBC library and an ODBC driver for SQL Server: install them "
    "with the system's package manager, e.g. on Debian/Ubuntu 'apt-get install unixodbc' "
    "plus Microsoft's msodbcsql18 (or 'tdsodbc' for FreeTDS)"
)


def require_driver(config: AnyBackendConfig) -> None:
    """Import the driver of ``config`` now, so that a missing one shows before any I/O.

    A SQL driver is the module the URL's SQLAlchemy dialect imports, so a URL naming
    another driver (``postgresql+psycopg://``) is checked for that driver instead.

    Raises:
        DriverNotInstalledError: the driver cannot be imported, or (SQL Server) unixODBC
            has no driver of the configured name; names what to install (the extra, or
            for SQL Server the system ODBC libraries).
        ConfigurationError: SQLAlchemy has no dialect for the URL's driver name.
    """
    kind = _kind_of(config)
    try:
        if isinstance(config, RedisBackendConfig):
            import redis.asyncio  # noqa: F401
        else:
            url = config.sqlalchemy_url()
            try:
                dialect = url.get_dialect()
            except NoSuchModuleError:
                raise ConfigurationError(
                    f"SQLAlchemy has no driver {url.drivername!r} for the {kind} backend"
                ) from None
            dialect.import_dbapi()
            if kind == BackendType.MSSQL.value:
                _require_odbc_driver(url)
    except ImportError as error:
        raise _missing_driver(kind, error) from None


def _require_odbc_driver(url: URL) -> None:
    """Check that the URL's ODBC driver is registered with unixODBC.

    Otherwise connect() fails with "Can't open lib", which reads like an unreachable
    server.
    """
    name = url.query.get("driver")
    if not isinstance(name, str) or "/" in name or "odbc_connect" in url.query:
        return  # a driver given by its file, or a whole connection string: nothing to look up
    import pyodbc

    if name.lower() not in {known.lower() for known in pyodbc.drivers()}:
        raise DriverNotInstalledError(
            BackendType.MSSQL.value,
            f"unixODBC has no ODBC driver named {name!r}",
            "install it (Microsoft's msodbcsql18 for 'ODBC Driver 18 for SQL Server', "
            "Debian/Ubuntu 'tdsodbc' for 'FreeTDS'), or set CHICORY_BACKEND_MSSQL_DRIVER "
            "to one that 'odbcinst -q -d' lists",
        )


def _kind_of(config: AnyBackendConfig) -> str:
    if isinstance(config, RedisBackendConfig):
        return BackendType.REDIS.value
    kinds = (kind for kind, cls in SQL_CONFIGS.items() if isinstance(config, cls))
    return next(kinds, type(config).__name__)


def _missing_driver(kind: str, error: ImportError) -> DriverNotInstalledError:
    if isinstance(error, ModuleNotFoundError) and error.name:
        module = error.name.split(".")[0]
        extra = _EXTRA_OF_MODULE.get(module)
        install = (
            f"pip install 'chicory-backends[{extra}]'"
            if extra
            else f"install the Python package that provides the module {module!r}"
        )
        return DriverNotInstalledError(kind, f"no module named {module!r}", install)
    # The module is there but cannot load a shared library it is linked against.
    if kind == BackendType.MSSQL.value:
        return DriverNotInstalledError(kind, str(error), ODBC_SYSTEM_PACKAGES)
    return DriverNotInstalledError(
        kind, str(error), f"reinstall it: pip install --force-reinstall 'chicory-backends[{kind}]'"
    )


def _describe(error: ValidationError, kind: BackendType) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        variable = f"CHICORY_BACKEND_{kind.value.upper()}_{field.upper()}"
        problems.append(f"{variable}: {item['msg']}")
    return "invalid backend configuration: " + "; ".join(problems)

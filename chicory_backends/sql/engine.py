"""From a config to one async engine, and from driver exceptions to ours."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chicory_backends.config import (
    MSSQLBackendConfig,
    MySQLBackendConfig,
    PostgresBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import (
    BackendUnreachableError,
    ChicoryBackendError,
    ConfigurationError,
    DatabaseError,
    PoolExhaustedError,
    SchemaNotReadyError,
)
from chicory_backends.sql.schema import SCHEMA_REVISION


def _pass_through(value: Any) -> Any:
    # The backend encodes and decodes JSON itself (strictly, once, with errors that name
    # the task); the JSON column only carries the text.
    return value


def _unique_statement_name() -> str:
    return f"__chicory_{uuid.uuid4().hex}__"


def is_memory_sqlite(database: str | None) -> bool:
    return not database or database == ":memory:" or "mode=memory" in database


def needs_transaction_per_statement(config: SQLBackendConfig) -> bool:
    """Behind a transaction-pooling PgBouncer, asyncpg's prepare and execute of one
    statement are two round trips that the pooler may send to two different server
    connections unless a transaction pins them together."""
    return isinstance(config, PostgresBackendConfig) and config.pgbouncer


def create_engine(config: SQLBackendConfig, *, autocommit: bool = True) -> AsyncEngine:
    """The one engine a backend uses.

    AUTOCOMMIT: every backend operation is a single statement, so the driver needs no
    BEGIN/COMMIT around it and the pool no ROLLBACK when a connection comes back.
    No pre-ping either: a connection the server dropped is invalidated on first use and
    the operation retried once on a fresh one (see DatabaseBackend._execute).
    """
    if needs_transaction_per_statement(config):
        autocommit = False
    url = config.sqlalchemy_url()
    options: dict[str, Any] = {
        "echo": config.echo,
        "json_serializer": _pass_through,
        "json_deserializer": _pass_through,
    }
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
        options["pool_reset_on_return"] = None
        # Without it the driver's rollback() still runs when a connection is released,
        # and aiomysql sends that ROLLBACK to the server: a second round trip per call.
        options["skip_autocommit_rollback"] = True
    connect_args: dict[str, Any] = {}
    mysql_tls: ssl.SSLContext | None = None
    if isinstance(config, SQLiteBackendConfig) and is_memory_sqlite(url.database):
        options["poolclass"] = StaticPool
    else:
        options.update(pool_options(config))
    if isinstance(config, PostgresBackendConfig):
        connect_args["timeout"] = config.connect_timeout
        connect_args["server_settings"] = {"application_name": "chicory-backends"}
        if "sslmode" in url.query:  # libpq's spelling, which asyncpg calls ``ssl``
            connect_args["ssl"] = str(url.query["sslmode"])
            url = url.difference_update_query(["sslmode"])
        if config.ssl:
            connect_args["ssl"] = config.ssl
        if config.pgbouncer:
            # Transaction pooling hands each statement to any server connection: named
            # prepared statements must be unique and never cached across calls.
            connect_args["prepared_statement_name_func"] = _unique_statement_name
            connect_args["prepared_statement_cache_size"] = 0
            connect_args["statement_cache_size"] = 0
    elif isinstance(config, MySQLBackendConfig):
        connect_args["connect_timeout"] = config.connect_timeout
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        url, mysql_tls = _mysql_tls(url)
        if mysql_tls is not None:
            connect_args["ssl"] = mysql_tls
    elif isinstance(config, MSSQLBackendConfig):
        options["deprecate_large_types"] = True
        connect_args["timeout"] = int(config.connect_timeout)
    if connect_args:
        options["connect_args"] = connect_args

    engine = create_async_engine(url, **options)
    if isinstance(config, SQLiteBackendConfig):
        _install_sqlite_pragmas(engine, config, in_memory=is_memory_sqlite(url.database))
    if mysql_tls is not None:
        _refuse_plain_text(engine)
    return engine


def pool_options(config: SQLBackendConfig) -> dict[str, Any]:
    """A pool that never churns: every connection it opens stays until ``pool_recycle``.

    SQLAlchemy closes an overflow connection as soon as it comes back to a full pool, so
    a burst wider than ``pool_size`` (Chicory's worker runs 32 tasks at once) opened and
    closed connections at the rate of the bursts: a new server session for every second
    task. Here ``max_overflow`` only raises the ceiling: the pool holds up to
    ``pool_size + max_overflow`` connections, opened on demand and kept. Coalesced writes
    and reads (coalesce.py) keep the number a worker needs small, so the default ceiling
    of 10 serves any ``--concurrency``; size it per process (``--workers`` processes each
    have their own pool, plus one listening connection on PostgreSQL).
    """
    return {
        "pool_size": config.pool_size + config.max_overflow,
        "max_overflow": 0,
        "pool_timeout": config.pool_timeout,
        "pool_recycle": config.pool_recycle,
    }


_MYSQL_TLS_OPTIONS = (
    "ssl", "ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_cipher", "ssl_check_hostname"
)  # fmt: skip
_NO = ("false", "0", "no", "off")


def _mysql_tls(url: URL) -> tuple[URL, ssl.SSLContext | None]:
    """The SSLContext for MySQL's ``ssl``/``ssl_*`` URL options (``config.query``).

    aiomysql takes an SSLContext: the mysqlclient-style dict SQLAlchemy would build from
    these options fails against a TLS server, and against a server without TLS aiomysql
    would silently carry on in plain text.
    """
    options = {key: str(url.query[key]) for key in _MYSQL_TLS_OPTIONS if key in url.query}
    if not options:
        return url, None
    url = url.difference_update_query(options)
    if options.get("ssl", "true").lower() in _NO:
        return url, None
    try:
        context = ssl.create_default_context(
            cafile=options.get("ssl_ca"), capath=options.get("ssl_capath")
        )
        if "ssl_cert" in options:
            context.load_cert_chain(options["ssl_cert"], options.get("ssl_key"))
        if "ssl_cipher" in options:
            context.set_ciphers(options["ssl_cipher"])
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"MySQL TLS options: {error}") from None
    if options.get("ssl_check_hostname", "true").lower() in _NO:
        context.check_hostname = False
    return url, context


def _refuse_plain_text(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _check_tls(dbapi_connection: Any, _record: Any) -> None:
        if not getattr(getattr(dbapi_connection, "_connection", None), "_secure", False):
            dbapi_connection.close()
            raise ConnectionError(
                "the server does not offer TLS, and the ssl options ask for it: "
                "refusing to continue in plain text"
            )


def _install_sqlite_pragmas(
    engine: AsyncEngine, config: SQLiteBackendConfig, *, in_memory: bool
) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes a second writer (another
    # worker process) wait for the lock instead of failing with "database is locked".
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()


def translate_error(error: BaseException, config: SQLBackendConfig) -> ChicoryBackendError:
    """Our error for a driver or pool failure; its message never carries the password."""
    if isinstance(error, ChicoryBackendError):
        return error
    if isinstance(error, exc.TimeoutError):  # the pool's, not the server's
        return PoolExhaustedError(config.pool_size, config.max_overflow, config.pool_timeout)
    if is_unreachable(error):
        return BackendUnreachableError(config.address(), _reason(error))
    if isinstance(error, exc.ProgrammingError | exc.OperationalError) and _names_missing_table(
        error
    ):
        return SchemaNotReadyError(None, SCHEMA_REVISION)
    return DatabaseError(f"database error: {_reason(error)}")


def _names_missing_table(error: exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(
        hint in text
        for hint in ("no such table", "does not exist", "doesn't exist", "invalid object name")
    )


def is_unreachable(error: BaseException) -> bool:
    if isinstance(error, OSError | asyncio.TimeoutError | ConnectionError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated or _unreachable_code(error):
            return True
        return isinstance(error, exc.OperationalError | exc.InterfaceError) and _looks_unreachable(
            error
        )
    return False


# SQLSTATE class 08 (connection exception) and PostgreSQL's operator interventions:
# 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up,
# shutting down, in recovery). asyncpg's come wrapped as a plain DBAPIError.
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# MySQL/MariaDB: server shutdown in progress, normal shutdown, connection killed,
# can't connect (socket, TCP), server gone away, lost connection.
_UNREACHABLE_MYSQL_CODES = frozenset({1053, 1077, 1927, 2002, 2003, 2006, 2013, 2055})


def _unreachable_code(error: exc.DBAPIError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_UNREACHABLE_SQLSTATES):
        return True
    args: tuple[Any, ...] = getattr(error.orig, "args", ())
    return bool(args) and args[0] in _UNREACHABLE_MYSQL_CODES


_UNREACHABLE_HINTS = (
    "connect",
    "refused",
    "closed",
    "lost connection",
    "gone away",
    "timeout",
    "timed out",
    "broken pipe",
    "reset by peer",
    "shutting down",
    "terminat",
    "unable to open",
)


def _looks_unreachable(error: exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(hint in text for hint in _UNREACHABLE_HINTS)


def _reason(error: BaseException) -> str:
    orig = error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    text = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__

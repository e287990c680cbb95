"""One small object per DBAPI driver: everything that differs between them.

SQL differences live in dialects.py; what lives here is how each driver is connected
(arguments, TLS, pragmas), how the hot statements are called on it (the fast path that
skips SQLAlchemy's Connection, see compiled.py), which of its errors mean "the server
is gone", and whether it can LISTEN. The engine, the backend and the CLI ask the driver
object and never test which driver or which config they have.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from chicory_backends.config import (
    MySQLBackendConfig,
    PostgresBackendConfig,
    SQLBackendConfig,
    SQLiteBackendConfig,
)
from chicory_backends.errors import ConfigurationError
from chicory_backends.sql.compiled import DriverStatement

Parts = list[tuple[DriverStatement, list[tuple[Any, ...]]]]


@dataclass
class EngineArguments:
    """What ``create_async_engine`` is given; each driver adds its own."""

    url: URL
    options: dict[str, Any] = field(default_factory=dict)
    connect_args: dict[str, Any] = field(default_factory=dict)


def is_memory_sqlite(database: str | None) -> bool:
    return not database or database == ":memory:" or "mode=memory" in database


class Driver:
    """A driver SQLAlchemy can run that has no object of its own: everything goes
    through SQLAlchemy, nothing is called on the driver directly."""

    name: ClassVar[str] = ""
    # The hot statements run on the pooled driver connection (run / run_many).
    fast_path: ClassVar[bool] = False

    def __init__(self, config: SQLBackendConfig) -> None:
        self.config = config

    @property
    def listens(self) -> bool:
        """Whether waiting can be told of results (LISTEN/NOTIFY) instead of polling."""
        return False

    @property
    def session_pinned(self) -> bool:
        """Whether a pooled connection is one server session for its whole life (not a
        transaction pooler's): session-wide locks (migrations) and LISTEN need it."""
        return True

    @property
    def transaction_per_statement(self) -> bool:
        """Whether each statement needs a transaction of its own around it."""
        return False

    @property
    def single_connection(self) -> bool:
        """Whether the database lives in one connection (an in-memory SQLite)."""
        return False

    def configure(self, arguments: EngineArguments) -> None:
        """Add this driver's engine options and connect arguments."""

    def install(self, engine: AsyncEngine) -> None:
        """Hook what must run on each new connection (pragmas, checks)."""

    def unreachable_code(self, error: BaseException | None) -> bool:
        """Whether the driver error's code says the server cannot serve us right now."""
        return False

    async def run(
        self, connection: Any, statement: DriverStatement, args: tuple[Any, ...], fetch: bool
    ) -> int | list[Any]:
        raise NotImplementedError(f"{type(self).__name__} has no fast path")

    async def run_many(self, connection: Any, parts: Parts) -> None:
        """Each statement once per row of its part: a multi-row statement (one round
        trip) per part, and one commit for them all where the driver can."""
        raise NotImplementedError(f"{type(self).__name__} has no fast path")


# SQLSTATE class 08 (connection exception) and PostgreSQL's operator interventions:
# 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up,
# shutting down, in recovery).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def _unique_statement_name() -> str:
    return f"__chicory_{uuid.uuid4().hex}__"


class AsyncpgDriver(Driver):
    name = "asyncpg"
    fast_path = True

    @property
    def _pgbouncer(self) -> bool:
        return isinstance(self.config, PostgresBackendConfig) and self.config.pgbouncer

    @property
    def listens(self) -> bool:
        return self.session_pinned

    @property
    def session_pinned(self) -> bool:
        return not self._pgbouncer  # transaction pooling hands out any server session

    @property
    def transaction_per_statement(self) -> bool:
        """Behind a transaction-pooling PgBouncer, asyncpg's prepare and execute of one
        statement are two round trips that the pooler may send to two different server
        connections unless a transaction pins them together."""
        return self._pgbouncer

    def configure(self, arguments: EngineArguments) -> None:
        config, args = self.config, arguments.connect_args
        args["timeout"] = config.connect_timeout
        args["server_settings"] = {"application_name": "chicory-backends"}
        if "sslmode" in arguments.url.query:  # libpq's spelling, which asyncpg calls ``ssl``
            args["ssl"] = str(arguments.url.query["sslmode"])
            arguments.url = arguments.url.difference_update_query(["sslmode"])
        if isinstance(config, PostgresBackendConfig) and config.ssl:
            args["ssl"] = config.ssl
        args.setdefault("async_creator_fn", asyncpg_connect)
        if self._pgbouncer:
            # Transaction pooling hands each statement to any server connection: named
            # prepared statements must be unique and never cached across calls.
            args["prepared_statement_name_func"] = _unique_statement_name
            args["prepared_statement_cache_size"] = 0
            args["statement_cache_size"] = 0

    def unreachable_code(self, error: BaseException | None) -> bool:
        sqlstate = getattr(error, "sqlstate", None)  # asyncpg's errors come wrapped plainly
        return isinstance(sqlstate, str) and sqlstate.startswith(_UNREACHABLE_SQLSTATES)

    async def run(
        self, connection: Any, statement: DriverStatement, args: tuple[Any, ...], fetch: bool
    ) -> int | list[Any]:
        if fetch:
            return [tuple(record) for record in await connection.fetch(statement.sql, *args)]
        return _status_rowcount(await connection.execute(statement.sql, *args))

    async def run_many(self, connection: Any, parts: Parts) -> None:
        # Each part pipelined (one round trip) and atomic (one commit) since asyncpg 0.22;
        # a batch of both kinds of write is one statement anyway (dialects.store_batch).
        for statement, rows in parts:
            await connection.executemany(statement.sql, rows)


def _status_rowcount(status: str) -> int:
    """The row count at the end of a PostgreSQL command tag (``DELETE 3``, ``INSERT 0 1``)."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else -1


# MySQL/MariaDB: server shutdown in progress, normal shutdown, connection killed,
# can't connect (socket, TCP), server gone away, lost connection.
_UNREACHABLE_MYSQL_CODES = frozenset({1053, 1077, 1927, 2002, 2003, 2006, 2013, 2055})
_MYSQL_TLS_OPTIONS = (
    "ssl", "ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_cipher", "ssl_check_hostname"
)  # fmt: skip
_NO = ("false", "0", "no", "off")


class AiomysqlDriver(Driver):
    name = "aiomysql"
    fast_path = True

    def __init__(self, config: SQLBackendConfig) -> None:
        super().__init__(config)
        self._tls = False

    def configure(self, arguments: EngineArguments) -> None:
        arguments.connect_args["connect_timeout"] = self.config.connect_timeout
        if "charset" not in arguments.url.query:
            arguments.url = arguments.url.update_query_dict({"charset": "utf8mb4"})
        arguments.url, context = _mysql_tls(arguments.url)
        if context is not None:
            arguments.connect_args["ssl"] = context
            self._tls = True
        servers = self.config.server_hosts() if isinstance(self.config, MySQLBackendConfig) else []
        if servers:
            arguments.connect_args.setdefault("async_creator_fn", _first_answering(servers))

    def install(self, engine: AsyncEngine) -> None:
        if not self._tls:
            return

        @event.listens_for(engine.sync_engine, "connect")
        def _check_tls(dbapi_connection: Any, _record: Any) -> None:
            # Asked of the server (public, and the truth): aiomysql would silently carry
            # on in plain text with a server that offers no TLS.
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                row = cursor.fetchone()
            finally:
                cursor.close()
            if not row or not row[1]:
                dbapi_connection.close()
                raise ConnectionError(
                    "the server does not offer TLS, and the ssl options ask for it: "
                    "refusing to continue in plain text"
                )

    def unreachable_code(self, error: BaseException | None) -> bool:
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] in _UNREACHABLE_MYSQL_CODES

    async def run(
        self, connection: Any, statement: DriverStatement, args: tuple[Any, ...], fetch: bool
    ) -> int | list[Any]:
        for attempt in range(1, _CONFLICT_TRIES + 1):
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(statement.sql, args)
                    return list(await cursor.fetchall()) if fetch else int(cursor.rowcount)
            except Exception as error:
                if attempt == _CONFLICT_TRIES or not _conflict(error, connection):
                    raise
            await asyncio.sleep(random.uniform(0.001, 0.005) * attempt)  # noqa: S311
        raise AssertionError("unreachable")

    async def run_many(self, connection: Any, parts: Parts) -> None:
        # aiomysql rewrites ``INSERT .. VALUES (..) ON DUPLICATE KEY UPDATE`` into one
        # multi-row statement: one round trip and one commit per part.
        async with connection.cursor() as cursor:
            for statement, rows in parts:
                for attempt in range(1, _CONFLICT_TRIES + 1):
                    try:
                        await cursor.executemany(statement.sql, rows)
                        break
                    except Exception as error:
                        if attempt == _CONFLICT_TRIES or not _conflict(error, connection):
                            raise
                    await asyncio.sleep(random.uniform(0.001, 0.005) * attempt)  # noqa: S311


# Deadlock, which is also how Galera reports a certification conflict: two nodes
# committed writes of one row at once and this one lost. The statement was rolled back
# whole (autocommit: it was its own transaction), and every statement run here is an
# idempotent upsert, delete or read, so it is simply run again, a few times at most.
_CONFLICT_CODES = frozenset({1213})
_CONFLICT_TRIES = 5


def _conflict(error: BaseException, connection: Any) -> bool:
    """A conflict that rolled back only this statement: in autocommit (always, but for a
    migration's transaction, where the whole transaction is gone and must not be
    retried piecemeal)."""
    args: tuple[Any, ...] = getattr(error, "args", ())
    return bool(args) and args[0] in _CONFLICT_CODES and bool(connection.get_autocommit())


class NoUsableHostError(ConnectionError):
    """Every listed server answered, and none is what ``target_session_attrs`` asks for
    (no primary yet while a standby is being promoted): unreachable, for now."""


async def asyncpg_connect(*args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect``, with "no host matches target_session_attrs" as a connection
    error: asyncpg raises it as a client error, which would pass for a refused statement
    (and escape SQLAlchemy's pool unwrapped) rather than a server that is not there."""
    import asyncpg

    try:
        return await asyncpg.connect(*args, **kwargs)
    except asyncpg.TargetServerAttributeNotMatched as error:
        raise NoUsableHostError(str(error)) from None


def _first_answering(servers: list[tuple[str, int]]) -> Callable[..., Awaitable[Any]]:
    """aiomysql's connect over several servers (Galera nodes): each new connection goes to
    the first in the listed order that accepts it, so when one dies the pool's next
    connections land on the next one, and come back to the first once it is back.

    aiomysql takes one host: the URL's ``?host=h1:p1&host=h2:p2`` reaches us as a tuple
    in ``host``, replaced here by each server in turn.
    """

    async def connect(*args: Any, **kwargs: Any) -> Any:
        import aiomysql

        kwargs.pop("host", None)
        kwargs.pop("port", None)
        last: BaseException | None = None
        for host, port in servers:
            try:
                return await aiomysql.connect(*args, host=host, port=port, **kwargs)
            except Exception as error:  # pymysql's OperationalError carries the code first
                code = error.args[0] if error.args else None
                if not isinstance(error, OSError) and code not in _NEXT_SERVER_CODES:
                    raise  # refused for a reason the next server shares (a password)
                last = error
        assert last is not None
        raise last

    return connect


# Can't connect (2003), lost at the handshake (2013), and Galera's "WSREP has not yet
# prepared node for application use" (1047, a node out of the primary component).
_NEXT_SERVER_CODES = frozenset({1047, 1053, 2002, 2003, 2006, 2013})


def _mysql_tls(url: URL) -> tuple[URL, ssl.SSLContext | None]:
    """The SSLContext for MySQL's ``ssl``/``ssl_*`` URL options (``config.query``).

    aiomysql takes an SSLContext: the mysqlclient-style dict SQLAlchemy would build from
    these options fails against a TLS server.
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


class AiosqliteDriver(Driver):
    name = "aiosqlite"
    fast_path = True

    @property
    def single_connection(self) -> bool:
        return is_memory_sqlite(self.config.sqlalchemy_url().database)

    def configure(self, arguments: EngineArguments) -> None:
        if self.single_connection:
            arguments.options["poolclass"] = StaticPool

    def install(self, engine: AsyncEngine) -> None:
        # WAL lets readers run beside the writer; busy_timeout makes a second writer
        # (another worker process) wait for the lock instead of failing with "database is
        # locked".
        config = self.config
        busy_timeout = config.busy_timeout_ms if isinstance(config, SQLiteBackendConfig) else 5000
        in_memory = self.single_connection

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout)}")
            if not in_memory:
                _use_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

    async def run(
        self, connection: Any, statement: DriverStatement, args: tuple[Any, ...], fetch: bool
    ) -> int | list[Any]:
        if fetch:  # one hop to aiosqlite's thread instead of cursor, execute, fetch, close
            return list(await connection.execute_fetchall(statement.sql, args))
        cursor = await connection.execute(statement.sql, args)
        try:
            return int(cursor.rowcount)
        finally:
            await cursor.close()

    async def run_many(self, connection: Any, parts: Parts) -> None:
        # In one transaction: the batch costs one commit, not one a row.
        await (await connection.execute("BEGIN IMMEDIATE")).close()
        try:
            for statement, rows in parts:
                await connection.executemany(statement.sql, rows)
        except BaseException:
            await connection.rollback()
            raise
        await connection.commit()


class AioodbcDriver(Driver):
    """SQL Server through ODBC: everything through SQLAlchemy (no server runs here to
    prove a fast path against)."""

    name = "aioodbc"

    def configure(self, arguments: EngineArguments) -> None:
        arguments.options["deprecate_large_types"] = True
        arguments.connect_args["timeout"] = int(self.config.connect_timeout)


_DRIVERS: dict[str, type[Driver]] = {
    driver.name: driver
    for driver in (AsyncpgDriver, AiomysqlDriver, AiosqliteDriver, AioodbcDriver)
}


def driver_for(config: SQLBackendConfig) -> Driver:
    """The driver object of the URL's driver (``postgresql+asyncpg`` -> asyncpg)."""
    return _DRIVERS.get(config.sqlalchemy_url().get_driver_name(), Driver)(config)


def _use_wal(cursor: Any) -> None:
    """Switch a SQLite file to WAL unless it is already. Switching needs the file to
    itself and does not wait for ``busy_timeout``: while another process holds it open
    in its old journal mode (Chicory's own workers, before a switch), the switch fails at
    once with "database is locked". The connection then keeps the file's mode (every
    statement still works, with less concurrency) and a later connection tries again."""
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    try:
        cursor.execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise

"""Database servers owned by the tests: started from the binaries, stopped by pid.

Fault tests stop, kill and restart servers; they must never touch the shared ones on the
usual ports. Each server here runs on a free 127.0.0.1 port with its data in a temporary
directory, requires a password (so leak checks see one in use), and is stopped by the pid
this module started it with (``stop``: a clean shutdown; ``stop(crash=True)``: an immediate
one, SIGQUIT for PostgreSQL, SIGKILL otherwise). ``owned(kind)`` is the context manager
the module-scoped fixtures use; an atexit hook stops anything a crashed run left behind.

A missing binary skips the tests that need it, or fails them under
CHICORY_TEST_REQUIRE_SERVICES=1 (see services.py).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from chicory_backends.config import (
    MySQLBackendConfig,
    PostgresBackendConfig,
    RedisBackendConfig,
    SQLBackendConfig,
)
from tests.support.services import free_port, services_required

# Distinctive, so a leak check can search every output for it.
OWNED_PASSWORD = "own3d-Srv-Pw-7c1e9a"
DATABASE = "chicory"
_READY_TIMEOUT = 60.0

_running: dict[int, OwnedServer] = {}


def _missing(what: str) -> None:
    message = f"{what}, so no test-owned server can start"
    if services_required():
        pytest.fail(f"{message} and CHICORY_TEST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def find_binary(*names: str, extra_dirs: tuple[str, ...] = ()) -> str:
    for name in names:
        for directory in extra_dirs:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = shutil.which(name)
        if found:
            return found
    _missing(f"{' / '.join(names)} is not installed")
    raise AssertionError("unreachable")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, made by openssl."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        openssl = find_binary("openssl")
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        cert, key, csr = (
            directory / "server.crt",
            directory / "server.key",
            directory / "server.csr",
        )
        ext = directory / "server.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for args in (
            ["req", "-x509", *newkey, "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=chicory test CA"],
            ["req", *newkey, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext],
        ):  # fmt: skip
            subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
        return cls(ca=ca, cert=cert, key=key)


class OwnedServer(ABC):
    """One server process on 127.0.0.1:<free port>; restartable on the same port."""

    kind: str

    def __init__(self, tls: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"chicory-owned-{self.kind}-"))
        self.log_path = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = TlsFiles.create(self.dir / "tls") if tls else None

    # -- what each kind supplies -----------------------------------------------------

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def ready(self) -> bool:
        """True once the server answers a real request (not just an open port)."""

    def popen_options(self) -> dict[str, Any]:
        return {}

    def setup(self) -> None:
        """Once, before the first start: create the data directory."""
        return None

    def after_first_start(self) -> None:
        """Once, after the first start: users, databases."""
        return None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> OwnedServer:
        if self.running:
            return self
        first = not (self.dir / ".initialised").exists()
        if first:
            self.setup()
            (self.dir / ".initialised").touch()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on pytest does not reach it first
                **self.popen_options(),
            )
        _running[self.process.pid] = self
        self.wait_ready()
        if first:
            self.after_first_start()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if not self.running:
                raise RuntimeError(f"{self.kind} on port {self.port} exited:\n{self.log()}")
            try:
                if self.ready():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} on port {self.port} not ready:\n{self.log()}")
            time.sleep(0.1)

    def stop_signal(self, crash: bool) -> signal.Signals:
        return signal.SIGKILL if crash else signal.SIGTERM

    def stop(self, *, crash: bool = False) -> None:
        """Stop the process by its pid: a clean shutdown, or an immediate one (``crash``)."""
        process, self.process = self.process, None
        if process is None:
            return
        _running.pop(process.pid, None)
        if process.poll() is None:
            os.kill(process.pid, self.stop_signal(crash))
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        # The port must be free before a restart binds it again.
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def process_tree(self) -> list[int]:
        """The server's pid and its descendants' (PostgreSQL forks one per connection)."""
        if self.pid is None:
            return []
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        tree = [self.pid]
        for pid in tree:
            tree += [child for child, parent in parents.items() if parent == pid]
        return tree

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server (as a hung host or a network partition looks)."""
        pids = self.process_tree()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-3000:]


# -- PostgreSQL ------------------------------------------------------------------------


def _postgres_bin(name: str) -> str:
    dirs = tuple(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    return find_binary(name, extra_dirs=dirs)


class OwnedPostgres(OwnedServer):
    """initdb'd cluster: trust on the (private) socket, scram-sha-256 over TCP."""

    kind = "postgres"

    def __init__(self, tls: bool = False) -> None:
        self.postgres = _postgres_bin("postgres")
        self.initdb = _postgres_bin("initdb")
        self.pg_isready = _postgres_bin("pg_isready")
        super().__init__(tls)
        self.data = self.dir / "data"
        self._as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self._as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
            for path in (self.dir, *(self.dir.glob("tls/*"))):
                shutil.chown(path, "postgres", "postgres")
        if self.tls is not None:
            self.tls.key.chmod(0o600)  # PostgreSQL refuses a key others can read

    def popen_options(self) -> dict[str, Any]:
        return dict(self._as_postgres)

    def setup(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(OWNED_PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            [
                self.initdb, "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}", "--no-sync",
            ],
            check=True, capture_output=True, timeout=120, **self._as_postgres,
        )  # fmt: skip
        pwfile.unlink()

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "fsync": "off",  # a process crash, not a power cut: the page cache survives
            "shared_buffers": "16MB",
            "max_connections": "60",
            "logging_collector": "off",
        }
        if self.tls is not None:
            settings.update(
                ssl="on", ssl_cert_file=str(self.tls.cert), ssl_key_file=str(self.tls.key)
            )
        args = [self.postgres, "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def stop_signal(self, crash: bool) -> signal.Signals:
        # SIGINT: fast shutdown (clients disconnected, checkpoint). SIGQUIT: immediate
        # shutdown, no checkpoint, crash recovery at the next start. (SIGKILL on the
        # postmaster would leave its backends running, still holding client sockets.)
        return signal.SIGQUIT if crash else signal.SIGINT

    def ready(self) -> bool:
        check = subprocess.run(
            [self.pg_isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
            timeout=10,
        )
        return check.returncode == 0

    def url(self, database: str = DATABASE, password: str | None = OWNED_PASSWORD) -> str:
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def after_first_start(self) -> None:
        _run_async(_admin_sql(self.url("postgres"), [f'CREATE DATABASE "{DATABASE}"']))

    def config(self, **overrides: Any) -> PostgresBackendConfig:
        return PostgresBackendConfig(url=self.url(), **overrides)


# -- MariaDB ---------------------------------------------------------------------------


class OwnedMariaDB(OwnedServer):
    """mariadb-install-db'd data directory; the backend logs in as `chicory` with a password."""

    kind = "mysql"
    user = "chicory"

    def __init__(self, tls: bool = False) -> None:
        self.mariadbd = find_binary("mariadbd", "mysqld", extra_dirs=("/usr/sbin",))
        self.install_db = find_binary("mariadb-install-db", "mysql_install_db")
        super().__init__(tls)
        self.data = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"

    def setup(self) -> None:
        subprocess.run(
            [
                self.install_db, "--no-defaults", f"--datadir={self.data}", "--user=root",
                "--auth-root-authentication-method=normal", "--skip-test-db",
            ],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip

    def command(self) -> list[str]:
        args = [
            self.mariadbd, "--no-defaults", f"--datadir={self.data}", "--user=root",
            f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mysqld.pid'}", f"--log-error={self.log_path}",
            "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
            "--max-connections=60", "--character-set-server=utf8mb4",
        ]  # fmt: skip
        if self.tls is not None:
            args += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}"]
            args += [f"--ssl-key={self.tls.key}"]
        return args

    def _root(self) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=str(self.socket), user="root", connect_timeout=2, autocommit=True
        )

    def ready(self) -> bool:
        with self._root() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return _port_open(self.port)

    def sql(self, *statements: str) -> None:
        """Run statements as root over the server's private socket."""
        with self._root() as connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def after_first_start(self) -> None:
        self.sql(
            f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4",
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{OWNED_PASSWORD}'",
            f"GRANT ALL ON *.* TO '{self.user}'@'%'",
        )

    def url(self, database: str = DATABASE, password: str | None = OWNED_PASSWORD) -> str:
        return URL.create(
            "mysql+aiomysql",
            username=self.user,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def config(self, **overrides: Any) -> MySQLBackendConfig:
        return MySQLBackendConfig(url=self.url(), **overrides)


# -- Redis -----------------------------------------------------------------------------


class OwnedRedis(OwnedServer):
    """redis-server with appendonly yes / appendfsync always: every reply is on disk."""

    kind = "redis"

    def __init__(self, tls: bool = False) -> None:
        self.redis_server = find_binary("redis-server")
        super().__init__(tls)

    def command(self) -> list[str]:
        args = [
            self.redis_server, "--port", str(self.port), "--bind", "127.0.0.1",
            "--protected-mode", "no", "--dir", str(self.dir), "--daemonize", "no",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--requirepass", OWNED_PASSWORD,
        ]  # fmt: skip
        if self.tls is not None:  # TLS only: the plain port is closed
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
        return args

    def ready(self) -> bool:
        import redis

        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        with redis.Redis(
            host="127.0.0.1", port=self.port, password=OWNED_PASSWORD, socket_timeout=2, **tls
        ) as client:
            return bool(client.ping())

    def config(self, **overrides: Any) -> RedisBackendConfig:
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "db": 0,
            "password": OWNED_PASSWORD,
            "socket_timeout": 2.0,
        }
        return RedisBackendConfig(**(fields | overrides))


# -- helpers ---------------------------------------------------------------------------

SERVER_CLASSES: dict[str, type[OwnedServer]] = {
    "postgres": OwnedPostgres,
    "mysql": OwnedMariaDB,
    "redis": OwnedRedis,
}


async def _admin_sql(url: str, statements: list[str]) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def _run_async(coroutine: Any) -> Any:
    from tests.support.sql_databases import run_blocking

    return run_blocking(coroutine)


def migrate(config: SQLBackendConfig) -> None:
    """Bring the owned server's database to the schema head."""
    from chicory_backends.sql.backend import DatabaseBackend

    async def upgrade() -> None:
        async with DatabaseBackend(config.model_copy(update={"auto_migrate": True})):
            pass

    _run_async(upgrade())


@contextmanager
def owned(kind: str, *, tls: bool = False, migrated: bool = True) -> Iterator[OwnedServer]:
    """A started server of ``kind`` (its database migrated for SQL kinds), removed on exit.

    ``tls``: a throwaway CA and certificate; PostgreSQL and MariaDB then accept TLS (and
    plain text), Redis accepts TLS only.
    """
    server = SERVER_CLASSES[kind](tls=tls)
    try:
        server.start()
        if migrated and kind in ("postgres", "mysql"):
            migrate(server.config())  # type: ignore[attr-defined]
        yield server
    finally:
        server.remove()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running.values()):
        server.remove()

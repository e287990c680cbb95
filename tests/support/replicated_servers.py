"""Replicated topologies owned by the fail-over tests: started on free loopback ports in
temporary directories, killed (SIGKILL on the whole process group: a host that died) and
promoted by the tests, and removed in ``finally`` blocks (an atexit hook catches leftovers).

- :class:`PostgresPair`: a primary and a streaming standby made with ``pg_basebackup -R``,
  asynchronous or synchronous (``synchronous_standby_names = '*'`` on the primary).
- :class:`SentinelWithReplica`: a Redis master, one replica and one Sentinel (quorum 1).
- :class:`ClusterWithReplicas`: a Redis Cluster of three masters with a replica each.
- :class:`GaleraCluster`: three MariaDB Galera nodes (galera-4, rsync SST).

A missing binary skips the tests, or fails them under CHICORY_TEST_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest

from chicory_backends.config import MySQLBackendConfig, PostgresBackendConfig, RedisBackendConfig
from tests.support.owned_servers import _postgres_bin, find_binary
from tests.support.redis_servers import RedisServer
from tests.support.services import free_port, missing

DATABASE = "chicory"
READY_TIMEOUT = 60.0


class _Removable(Protocol):
    def remove(self) -> None: ...


_live: list[_Removable] = []


@atexit.register
def _remove_leftovers() -> None:
    while _live:
        _live.pop().remove()


def _track(topology: _Removable) -> None:
    _live.append(topology)


def _untrack(topology: _Removable) -> None:
    if topology in _live:
        _live.remove(topology)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process and everything in its process group (started with
    ``start_new_session``): the postmaster and every backend die at the same instant."""
    if process is None or process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class ServerExited(RuntimeError):
    """A server the tests started is gone: no use waiting for it."""


def _until(
    condition: Any, what: str, timeout: float = READY_TIMEOUT, log: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ServerExited:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{log() if log else ''}")
        time.sleep(0.1)


# -- PostgreSQL ------------------------------------------------------------------------


class PostgresNode:
    def __init__(self, root: Path, name: str, as_postgres: dict[str, Any]) -> None:
        self.port = free_port()
        self.data = root / name
        self.log_path = root / f"{name}.log"
        self.socket_dir = root
        self.process: subprocess.Popen[bytes] | None = None
        self._as_postgres = as_postgres

    def start(self, **settings: str) -> None:
        args = [_postgres_bin("postgres"), "-D", str(self.data)]
        base = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",  # a process dies, not the machine: the page cache survives
            "shared_buffers": "16MB",
            "max_connections": "40",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "logging_collector": "off",
        }
        for key, value in (base | settings).items():
            args += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_postgres,
            )
        _until(self.ready, f"postgres on {self.port}", log=self.log)

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise ServerExited(f"postgres on {self.port} exited:\n{self.log()}")
        check = subprocess.run(
            [_postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            timeout=10,
        )
        return check.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                _postgres_bin("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                "-c", sql,
            ],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def kill(self) -> None:
        _kill_group(self.process)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGQUIT)  # immediate shutdown: no checkpoint to wait on
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class PostgresPair:
    """A primary and a streaming standby of it; ``synchronous``: every commit waits for
    the standby to have flushed it (``synchronous_standby_names = '*'``)."""

    def __init__(self, synchronous: bool) -> None:
        self.synchronous = synchronous
        self.root = Path(tempfile.mkdtemp(prefix="chicory-pgpair-"))
        self._as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self._as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
            shutil.chown(self.root, "postgres", "postgres")
        self.primary = PostgresNode(self.root, "primary", self._as_postgres)
        self.standby = PostgresNode(self.root, "standby", self._as_postgres)
        _track(self)

    def start(self) -> PostgresPair:
        from tests.support.owned_servers import migrate

        subprocess.run(
            [
                _postgres_bin("initdb"), "-D", str(self.primary.data), "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--auth=trust", "--no-sync",
            ],
            check=True, capture_output=True, timeout=120, **self._as_postgres,
        )  # fmt: skip
        self.primary.start()
        self.primary.psql(f'CREATE DATABASE "{DATABASE}"')
        migrate(self.config(self.primary))
        subprocess.run(
            [
                _postgres_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                "-U", "postgres", "-D", str(self.standby.data), "-R", "-X", "stream",
                "--no-sync", "-c", "fast",
            ],
            check=True, capture_output=True, timeout=120, **self._as_postgres,
        )  # fmt: skip
        self.standby.start()
        if self.synchronous:
            # Only now: with no standby yet, every commit (the migration's) would wait.
            self.primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.primary.psql("SELECT pg_reload_conf()")
        wanted = "sync" if self.synchronous else "async"
        _until(
            lambda: self.primary.psql("SELECT sync_state FROM pg_stat_replication") == wanted,
            f"the standby streaming ({wanted})",
            log=self.standby.log,
        )
        return self

    def promote(self) -> None:
        """``pg_ctl promote`` on the standby, returning once it accepts writes."""
        subprocess.run(
            [_postgres_bin("pg_ctl"), "promote", "-D", str(self.standby.data), "-w", "-t", "30"],
            check=True, capture_output=True, timeout=60, **self._as_postgres,
        )  # fmt: skip

    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{self.primary.port}", f"127.0.0.1:{self.standby.port}"]

    def url(self) -> str:
        """One URL naming both servers, as SQLAlchemy's asyncpg dialect spells it."""
        query = "&".join(f"host={host}" for host in self.hosts())
        return f"postgresql+asyncpg://postgres@/{DATABASE}?{query}&target_session_attrs=read-write"

    def config(self, node: PostgresNode | None = None, **overrides: Any) -> PostgresBackendConfig:
        if node is not None:  # that server only
            url = f"postgresql+asyncpg://postgres@127.0.0.1:{node.port}/{DATABASE}"
            return PostgresBackendConfig(url=url, **overrides)
        return PostgresBackendConfig(url=self.url(), **overrides)

    def remove(self) -> None:
        _untrack(self)
        for node in (self.primary, self.standby):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- Redis -----------------------------------------------------------------------------

SENTINEL_SERVICE = "chicory-failover"


class KillableRedis(RedisServer):
    """A RedisServer in a process group of its own, so it can die like a host does."""

    def start(self) -> KillableRedis:
        if self.running:
            return self
        with (self.dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready()
        return self

    def kill(self) -> None:
        process, self._process = self._process, None
        _kill_group(process)


def _redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        missing("redis-cli is not installed, so no test-owned Redis Cluster can start")
    return path


class ReplicationProxy:
    """A TCP relay between a replica and its master, so the test can hold the master's
    replication stream back (``hold``) and then drop what it held (``sever``): a replica
    that lags over a slow link, and a master that dies with writes only it had.

    (Blocking the replica itself does not do it: the kernel has already delivered the
    stream into the replica's socket, and the replica reads it when it resumes.)
    """

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._held = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._held.set()

    def sever(self) -> None:
        """Close every relayed connection, discarding what was held; new ones pass."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.close()
        self._held.clear()

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.close()
        self.sever()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                downstream, _address = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(
                target=self._pump, args=(upstream, downstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(downstream, upstream, False), daemon=True
            ).start()

    def _pump(self, source: Any, sink: Any, holdable: bool) -> None:
        try:
            while True:
                while holdable and self._held.is_set():
                    time.sleep(0.005)
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.close()


class SentinelWithReplica:
    """A master, a replica of it and one Sentinel with quorum 1 that fails over after
    ``down_after_ms`` of silence. ``proxied``: the replica reaches its master through a
    :class:`ReplicationProxy` (``self.proxy``), so the test can make it lag."""

    def __init__(self, down_after_ms: int = 1000, *, proxied: bool = False) -> None:
        self.master = KillableRedis()
        self.proxy = ReplicationProxy(self.master.port) if proxied else None
        upstream = self.proxy.port if self.proxy is not None else self.master.port
        self.replica = KillableRedis("--replicaof", "127.0.0.1", str(upstream))
        self.down_after_ms = down_after_ms
        self.sentinel: KillableRedis | None = None
        _track(self)

    def start(self) -> SentinelWithReplica:
        self.master.start()
        self.replica.start()
        _until(
            lambda: self.replica.client().info("replication")["master_link_status"] == "up",
            "the replica linked to its master",
            log=self.replica.log,
        )
        conf = (
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        )
        self.sentinel = KillableRedis(config_text=conf, sentinel=True).start()

        def knows_replica() -> bool:
            assert self.sentinel is not None
            with self.sentinel.client() as client:
                return len(client.sentinel_slaves(SENTINEL_SERVICE)) == 1

        _until(knows_replica, "the sentinel finding the replica", log=self.sentinel.log)
        return self

    def master_port(self) -> int | None:
        assert self.sentinel is not None
        with self.sentinel.client() as client:
            address = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        return None if address is None else int(address[1])

    def config(self, **overrides: Any) -> RedisBackendConfig:
        assert self.sentinel is not None
        fields: dict[str, Any] = {
            "sentinels": [f"127.0.0.1:{self.sentinel.port}"],
            "sentinel_service": SENTINEL_SERVICE,
            "db": 0,
            "socket_timeout": 1.0,
        }
        return RedisBackendConfig(**(fields | overrides))

    def remove(self) -> None:
        _untrack(self)
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.remove()
        if self.proxy is not None:
            self.proxy.close()


class ClusterWithReplicas:
    """Three masters with one replica each (``--cluster-replicas 1``); a replica takes
    over a master that has been silent for ``node_timeout_ms``."""

    def __init__(self, node_timeout_ms: int = 1000) -> None:
        ports = _free_ports(12)
        self.nodes = [
            KillableRedis(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus),
                "--cluster-node-timeout", str(node_timeout_ms),
                port=port,
            )
            for port, bus in zip(ports[:6], ports[6:], strict=True)
        ]  # fmt: skip
        _track(self)

    def start(self) -> ClusterWithReplicas:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                _redis_cli(),
                *("--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes)),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def all_ok() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
                    if node in self.replicas() and (
                        client.info("replication").get("master_link_status") != "up"
                    ):
                        return False
            return True

        _until(all_ok, "the cluster ok with every replica linked", log=self.nodes[0].log)
        return self

    def roles(self) -> dict[int, str]:
        roles: dict[int, str] = {}
        for node in self.nodes:
            if node.running:
                with node.client() as client:
                    roles[node.port] = str(client.info("replication")["role"])
        return roles

    def masters(self) -> list[KillableRedis]:
        roles = self.roles()
        return [node for node in self.nodes if roles.get(node.port) == "master"]

    def replicas(self) -> list[KillableRedis]:
        roles = self.roles()
        return [node for node in self.nodes if roles.get(node.port) == "slave"]

    def replica_of(self, master: KillableRedis) -> KillableRedis:
        for node in self.replicas():
            with node.client() as client:
                if int(client.info("replication")["master_port"]) == master.port:
                    return node
        raise RuntimeError(f"no replica of {master.port}")

    def config(self, **overrides: Any) -> RedisBackendConfig:
        # Every node listed would be nicer; the backend takes one seed, so the seed must
        # not be the master the test kills (the caller picks a survivor).
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.nodes[-1].port,
            "cluster": True,
            "socket_timeout": 1.0,
        }
        return RedisBackendConfig(**(fields | overrides))

    def remove(self) -> None:
        _untrack(self)
        for node in self.nodes:
            node.remove()


# -- MariaDB Galera ----------------------------------------------------------------------

GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
# How long the group waits for a silent node before it drops it and commits resume
# (defaults: suspect 5 s, inactive 15 s, install 7.5 s): shortened, as a deployment on a
# fast, reliable network may; with the defaults, writes stalled ~6 s after a node died.
GALERA_TIMEOUTS = (
    "evs.keepalive_period=PT0.3S;evs.inactive_check_period=PT0.3S;"
    "evs.suspect_timeout=PT1.5S;evs.inactive_timeout=PT3S;evs.install_timeout=PT3S"
)


class GaleraNode:
    def __init__(self, root: Path, index: int) -> None:
        self.index = index
        self.port, self.gcomm, self.ist, self.sst = _free_ports(4)
        self.dir = root / f"n{index}"
        self.data = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.cnf = self.dir / "my.cnf"
        self.log_path = self.dir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_cnf(self, cluster_address: str) -> None:
        self.cnf.write_text(
            "[mysqld]\n"
            f"datadir={self.data}\nport={self.port}\nbind-address=127.0.0.1\n"
            f"socket={self.socket}\npid-file={self.dir / 'mysqld.pid'}\n"
            f"log-error={self.log_path}\n"
            "innodb_buffer_pool_size=32M\ninnodb_log_file_size=16M\n"
            "innodb_flush_log_at_trx_commit=0\nmax_connections=60\n"
            "character-set-server=utf8mb4\n"
            "binlog_format=ROW\ninnodb_autoinc_lock_mode=2\ndefault_storage_engine=InnoDB\n"
            f"wsrep_on=ON\nwsrep_provider={GALERA_PROVIDER}\n"
            f"wsrep_cluster_address={cluster_address}\n"
            f"wsrep_cluster_name=chicory-test\nwsrep_node_name=n{self.index}\n"
            f"wsrep_node_address=127.0.0.1:{self.gcomm}\n"
            f'wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm};'
            f'ist.recv_addr=127.0.0.1:{self.ist};gcache.size=32M;{GALERA_TIMEOUTS}"\n'
            f"wsrep_sst_method=rsync\nwsrep_sst_receive_address=127.0.0.1:{self.sst}\n"
        )

    def start(self, *extra: str) -> None:
        mariadbd = find_binary("mariadbd", "mysqld", extra_dirs=("/usr/sbin",))
        with (self.dir / "stdout.log").open("ab") as log:
            self.process = subprocess.Popen(
                [mariadbd, f"--defaults-file={self.cnf}", f"--user={_galera_user()}", *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def status(self, name: str) -> str:
        import pymysql

        with (
            pymysql.connect(
                unix_socket=str(self.socket), user="root", connect_timeout=2, autocommit=True
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            row = cursor.fetchone()
        return "" if row is None else str(row[1])

    def sql(self, *statements: str) -> None:
        import pymysql

        with (
            pymysql.connect(
                unix_socket=str(self.socket), user="root", connect_timeout=5, autocommit=True
            ) as connection,
            connection.cursor() as cursor,
        ):
            for statement in statements:
                cursor.execute(statement)

    def synced(self, size: int) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise ServerExited(f"galera node {self.index} exited:\n{self.log()}")
        return self.status("wsrep_local_state_comment") == "Synced" and self.status(
            "wsrep_cluster_size"
        ) == str(size)

    def kill(self) -> None:
        _kill_group(self.process)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def url(self) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{DATABASE}"


def _galera_user() -> str:
    """mariadbd drops to this user; as root, rsync's SST fails to create directories."""
    if os.geteuid() != 0:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    return "mysql"


class GaleraCluster:
    """Three Galera nodes on loopback; the first bootstraps (``--wsrep-new-cluster``)."""

    def __init__(self, size: int = 3) -> None:
        if not Path(GALERA_PROVIDER).exists():
            missing(f"{GALERA_PROVIDER} is missing (apt-get install galera-4 rsync)")
        if shutil.which("rsync") is None:
            missing("rsync is missing (apt-get install rsync): Galera's SST needs it")
        self.root = Path(tempfile.mkdtemp(prefix="chicory-galera-"))
        self.nodes = [GaleraNode(self.root, index) for index in range(1, size + 1)]
        _track(self)

    def start(self) -> GaleraCluster:
        install_db = find_binary("mariadb-install-db", "mysql_install_db")
        address = "gcomm://" + ",".join(f"127.0.0.1:{node.gcomm}" for node in self.nodes)
        for node in self.nodes:
            node.data.mkdir(parents=True)  # a joiner's stays empty until its SST fills it
            node.write_cnf(address)
        user = _galera_user()
        if user != "root":  # the SST scripts (rsync) run as the server's user
            for path in (self.root, *self.root.rglob("*")):
                shutil.chown(path, user, user)
        first, *others = self.nodes
        subprocess.run(
            [
                install_db, "--no-defaults", f"--datadir={first.data}", f"--user={user}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
            ],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        first.start("--wsrep-new-cluster")
        _until(lambda: first.synced(1), "the first Galera node", log=first.log)
        first.sql(
            f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4",
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "GRANT ALL ON *.* TO 'root'@'127.0.0.1'",
        )
        for size, node in enumerate(others, start=2):  # one at a time: each takes an SST
            node.start()
            _until(partial(node.synced, size), f"node {node.index} joined", log=node.log)
        for node in self.nodes:
            _until(partial(node.synced, len(self.nodes)), f"node {node.index} synced")
        return self

    def config(self, node: GaleraNode, **overrides: Any) -> MySQLBackendConfig:
        return MySQLBackendConfig(url=node.url(), **overrides)

    def remove(self) -> None:
        _untrack(self)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                try:
                    node.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the measured stream -------------------------------------------------------------------


class FailoverStream:
    """Writers storing results without pause, and waiters blocked on results not stored
    yet, across a fail-over: what callers saw, timed from the kill.

    A call may fail only with BackendUnreachableError (anything else is raised by the
    writer or waiter task, and so by the test). ``acked`` holds the task ids whose store
    returned: each must still be there afterwards, or counts as lost.
    """

    def __init__(self, writer: Any, client: Any, *, call_bound: float = 15.0) -> None:
        import uuid

        self.writer = writer
        self.client = client
        self.call_bound = call_bound
        self.prefix = f"fo-{uuid.uuid4().hex[:8]}"
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.ack_starts: list[float] = []  # when each acknowledged store was called
        self.uncertain: list[str] = []
        self.errors = 0
        self.error_times: list[float] = []
        self.reasons: set[str] = set()
        self.waiter_errors = 0
        self.woken: dict[str, float] = {}
        self.counter = 0
        self.killed_at: float | None = None
        self.promoted_at: float | None = None
        self.failure: BaseException | None = None
        self._stop = False

    @staticmethod
    def result_for(task_id: str) -> Any:
        from chicory_backends.types import TaskResult, TaskState

        return TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"id": task_id})

    def _unreachable(self, error: Exception) -> None:
        self.errors += 1
        self.error_times.append(time.monotonic())
        self.reasons.add(str(error).split(": ", 1)[-1][:90])

    async def writer_loop(self) -> None:
        import asyncio

        from chicory_backends.errors import BackendUnreachableError

        while not self._stop:
            self.counter += 1
            task_id = f"{self.prefix}-{self.counter}"
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    self.writer.store_result(task_id, self.result_for(task_id)), self.call_bound
                )
            except BackendUnreachableError as error:
                self._unreachable(error)
                self.uncertain.append(task_id)
                await asyncio.sleep(0.02)
                continue
            self.acked.append(task_id)
            self.ack_times.append(time.monotonic())
            self.ack_starts.append(started)

    async def store_retrying(self, task_id: str, bound: float = 30.0) -> None:
        """Store one result, retrying while the backend is unreachable (as a worker's
        retry would)."""
        import asyncio

        from chicory_backends.errors import BackendUnreachableError

        deadline = time.monotonic() + bound
        while True:
            try:
                await asyncio.wait_for(
                    self.writer.store_result(task_id, self.result_for(task_id)), self.call_bound
                )
                return
            except BackendUnreachableError as error:
                self._unreachable(error)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def waiter(self, task_id: str, bound: float) -> None:
        """Wait for ``task_id``; a BackendUnreachableError during the fail-over is counted
        and the wait resumed, as a caller that retries does."""
        import asyncio

        from chicory_backends.errors import BackendUnreachableError

        deadline = time.monotonic() + bound
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = await self.client.wait_for_result(task_id, timeout=left)
            except BackendUnreachableError:
                self.waiter_errors += 1
                await asyncio.sleep(0.1)
                continue
            if got is not None:
                assert got.result == {"id": task_id}, got
                self.woken[task_id] = time.monotonic()
            return

    def stop(self) -> None:
        self._stop = True

    async def until(
        self, condition: Callable[[], bool], what: str, tasks: list[Any], limit: float = 30.0
    ) -> None:
        """Wait for one phase of the run (writes acknowledged, a promotion); a writer
        that failed meanwhile (a raw driver error, a hang) fails the test at once."""
        import asyncio

        deadline = time.monotonic() + limit
        while not condition():
            for task in tasks:
                if task.done():
                    task.result()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}", pytrace=False)
            await asyncio.sleep(0.02)

    async def finish(self, writers: list[Any], waiters: list[Any]) -> None:
        """Stop the writers and cancel the waiters still waiting; the first failure any
        of them had (anything but BackendUnreachableError) is raised by ``lost``, where
        the test still disconnects its backends afterwards."""
        import asyncio

        self.stop()
        for task in waiters:
            task.cancel()
        outcomes = await asyncio.gather(*writers, *waiters, return_exceptions=True)
        self.failure = next(
            (
                outcome
                for outcome in outcomes
                if isinstance(outcome, BaseException)
                and not isinstance(outcome, asyncio.CancelledError)
            ),
            None,
        )

    async def lost(self, reader: Any) -> list[str]:
        """The acknowledged task ids whose result is not there any more (after raising
        what ``finish`` found)."""
        if self.failure is not None:
            raise self.failure
        found: dict[str, Any] = {}
        for start in range(0, len(self.acked), 500):
            found.update(await reader.get_results(self.acked[start : start + 500]))
        return [task_id for task_id in self.acked if task_id not in found]

    def first_ack_after(
        self, moment: float, only: Callable[[str], bool] | None = None
    ) -> float | None:
        """When the first store called after ``moment`` returned (a store in flight at
        the kill may still return from the old server's last breath); ``only``: of the
        task ids it accepts (a Cluster's keys on the killed master)."""
        return min(
            (end for task_id, start, end in zip(self.acked, self.ack_starts, self.ack_times,
                                                 strict=True)
             if start > moment and (only is None or only(task_id))),
            default=None,
        )  # fmt: skip

    def acks_after(self, moment: float) -> int:
        return sum(1 for t in self.ack_times if t > moment)

    def figures(
        self, lost: int, waiters: int, only: Callable[[str], bool] | None = None
    ) -> dict[str, Any]:
        assert self.killed_at is not None
        first = self.first_ack_after(self.killed_at, only)
        return {
            "kill_to_first_write_s": None if first is None else round(first - self.killed_at, 3),
            "promotion_to_first_write_s": (
                None
                if first is None or self.promoted_at is None
                else round(max(0.0, first - self.promoted_at), 3)
            ),
            "errors_seen": self.errors,
            "waiter_errors_seen": self.waiter_errors,
            "acked": len(self.acked),
            "acked_lost": lost,
            "waiters": waiters,
            "waiters_never_woken": waiters - len(self.woken),
        }

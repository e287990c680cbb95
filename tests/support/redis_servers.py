"""Redis servers for the tests, and connected RedisBackends on each of the three modes.

For the shared contract suite::

    from tests.support.redis_servers import REDIS_MODES, redis_backend_for, redis_backends

    REDIS_MODES = ("redis", "redis-sentinel", "redis-cluster")

    redis_backend_for(mode: str, **overrides: Any) -> AsyncContextManager[RedisBackend]
        One connected RedisBackend for ``mode``; ``overrides`` are RedisBackendConfig
        fields (e.g. result_ttl=1). Its keys live under a fresh key_prefix and are deleted
        on exit; the backend is disconnected on exit.

    redis_backends(mode: str) -> AsyncContextManager[Callable[..., Awaitable[RedisBackend]]]
        A factory ``await make(**overrides)``: every backend it makes shares one fresh
        key_prefix (so they see each other's data) unless ``key_prefix`` is overridden;
        all are disconnected and their keys deleted on exit.

"redis" uses the already-running server at CHICORY_TEST_REDIS_HOST:PORT (default
127.0.0.1:6379, db 1) and skips, or fails under CHICORY_TEST_REQUIRE_SERVICES=1, when it is
down. "redis-sentinel" (a master and one sentinel, quorum 1) and "redis-cluster" (three
masters, no replicas) are started from the ``redis-server`` binary on free loopback ports
on first use, once per process, and stopped at the end of the session (the
``redis_sentinel`` / ``redis_cluster`` fixtures) or at interpreter exit.
``RedisServer`` is a single throwaway node for restart tests (fixture ``redis_throwaway``).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis, RedisCluster

from chicory_backends.config import RedisBackendConfig
from chicory_backends.redis import RedisBackend
from tests.support.services import REDIS_HOST, REDIS_PORT, free_port, require, services_required

REDIS_MODES = ("redis", "redis-sentinel", "redis-cluster")
SENTINEL_SERVICE = "chicory-test"
SINGLE_NODE_DB = 1
_READY_TIMEOUT = 15.0


def _require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed, so no test-owned Redis server can start"
        if services_required():
            pytest.fail(f"{message} and CHICORY_TEST_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    return path


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class RedisServer:
    """One redis-server process on 127.0.0.1, owned by the test run; restartable in place."""

    def __init__(
        self,
        *extra: str,
        password: str | None = None,
        config_text: str | None = None,
        sentinel: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix=f"chicory-redis-{self.port}-"))
        self.unix_socket = self.dir / "redis.sock"
        self._config_file: Path | None = None
        if config_text is not None:  # sentinel rewrites its config file: it must be writable
            self._config_file = self.dir / "redis.conf"
            self._config_file.write_text(config_text)
        self._sentinel = sentinel
        self._extra = extra
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        args = [_require_binary("redis-server")]
        if self._config_file is not None:
            args.append(str(self._config_file))
        if self._sentinel:
            args.append("--sentinel")
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "no"]
        args += ["--dir", str(self.dir), "--daemonize", "no"]
        if not self._sentinel:
            args += ["--save", "", "--appendonly", "no", "--unixsocket", str(self.unix_socket)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args + list(self._extra)

    def start(self) -> RedisServer:
        if self.running:
            return self
        log = (self.dir / "server.log").open("ab")
        self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if not self.running:
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{self.log()}")
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} not ready:\n{self.log()}"
                    ) from None
                time.sleep(0.05)

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM by pid (nothing is saved: --save ''), SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelTopology:
    """A master and one sentinel watching it with quorum 1."""

    def __init__(self) -> None:
        self.master = RedisServer()
        self.sentinel: RedisServer | None = None

    def start(self) -> SentinelTopology:
        self.master.start()
        conf = (
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 5000\n"
        )
        self.sentinel = RedisServer(config_text=conf, sentinel=True).start()
        deadline = time.monotonic() + _READY_TIMEOUT
        with self.sentinel.client() as client:
            while client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sentinel does not know the master:\n{self.sentinel.log()}")
                time.sleep(0.05)
        return self

    def config(self, **overrides: Any) -> RedisBackendConfig:
        assert self.sentinel is not None
        fields: dict[str, Any] = {
            "sentinels": [f"127.0.0.1:{self.sentinel.port}"],
            "sentinel_service": SENTINEL_SERVICE,
            "db": 0,
        }
        return RedisBackendConfig(**(fields | overrides))

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.remove()
        self.master.remove()


class ClusterTopology:
    """Three cluster-enabled masters, no replicas, joined with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        ports = _free_ports(6)
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(bus),
                "--cluster-node-timeout",
                "5000",
                port=port,
            )
            for port, bus in zip(ports[:3], ports[3:], strict=True)
        ]

    def start(self) -> ClusterTopology:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                _require_binary("redis-cli"),
                *("--cluster", "create", *addresses),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        for node in self.nodes:
            with node.client() as client:
                while client.cluster("INFO").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster not ok on {node.port}:\n{node.log()}")
                    time.sleep(0.05)
        return self

    def config(self, **overrides: Any) -> RedisBackendConfig:
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": self.nodes[0].port, "cluster": True}
        return RedisBackendConfig(**(fields | overrides))

    def stop(self) -> None:
        for node in self.nodes:
            node.remove()


_started: dict[str, SentinelTopology | ClusterTopology] = {}


def _stop_all() -> None:
    while _started:
        _, topology = _started.popitem()
        topology.stop()


atexit.register(_stop_all)


def sentinel_topology() -> SentinelTopology:
    """The process-wide Sentinel topology, started on first use."""
    topology = _started.get("redis-sentinel")
    if not isinstance(topology, SentinelTopology):
        topology = _started["redis-sentinel"] = SentinelTopology()
        try:
            topology.start()
        except BaseException:
            del _started["redis-sentinel"]
            topology.stop()
            raise
    return topology


def cluster_topology() -> ClusterTopology:
    """The process-wide Cluster topology, started on first use."""
    topology = _started.get("redis-cluster")
    if not isinstance(topology, ClusterTopology):
        topology = _started["redis-cluster"] = ClusterTopology()
        try:
            topology.start()
        except BaseException:
            del _started["redis-cluster"]
            topology.stop()
            raise
    return topology


def single_node_config(**overrides: Any) -> RedisBackendConfig:
    require("Redis", REDIS_HOST, REDIS_PORT)
    fields: dict[str, Any] = {"host": REDIS_HOST, "port": REDIS_PORT, "db": SINGLE_NODE_DB}
    return RedisBackendConfig(**(fields | overrides))


def redis_config_for(mode: str, **overrides: Any) -> RedisBackendConfig:
    """A config reaching the server(s) of ``mode``, starting test-owned ones if needed."""
    if mode == "redis":
        return single_node_config(**overrides)
    if mode == "redis-sentinel":
        return sentinel_topology().config(**overrides)
    if mode == "redis-cluster":
        return cluster_topology().config(**overrides)
    raise ValueError(f"unknown Redis mode {mode!r}: choose one of {', '.join(REDIS_MODES)}")


async def delete_prefix(config: RedisBackendConfig) -> None:
    """Delete every key under ``config.key_prefix`` (results and the {prefix:workers} tag)."""
    pattern = f"*{config.key_prefix}*"
    password = config.password.get_secret_value() if config.password else None
    client: Redis | RedisCluster
    if config.cluster:
        client = RedisCluster(host=config.host, port=config.port, password=password)
    elif config.sentinels:
        topology = sentinel_topology()
        client = Redis(host="127.0.0.1", port=topology.master.port, db=config.db)
    else:
        client = Redis(host=config.host, port=config.port, db=config.db, password=password)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_backends(mode: str) -> AsyncIterator[Callable[..., Awaitable[RedisBackend]]]:
    """A factory of connected backends sharing one fresh key prefix; cleans up on exit."""
    prefix = f"chicory-test-{uuid.uuid4().hex[:12]}"
    opened: list[RedisBackend] = []

    async def make(**overrides: Any) -> RedisBackend:
        backend = RedisBackend(redis_config_for(mode, **({"key_prefix": prefix} | overrides)))
        await backend.connect()
        opened.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in opened:
            await backend.disconnect()
        for config in {b.config.key_prefix: b.config for b in opened}.values():
            await delete_prefix(config)


@asynccontextmanager
async def redis_backend_for(mode: str, **overrides: Any) -> AsyncIterator[RedisBackend]:
    """One connected RedisBackend on ``mode`` with a fresh key prefix; cleans up on exit."""
    async with redis_backends(mode) as make:
        yield await make(**overrides)


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    topology = sentinel_topology()
    yield topology
    _started.pop("redis-sentinel", None)
    topology.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    topology = cluster_topology()
    yield topology
    _started.pop("redis-cluster", None)
    topology.stop()


@pytest.fixture
def redis_throwaway() -> Iterator[RedisServer]:
    """A password-protected node of its own, for tests that stop and restart the server."""
    server = RedisServer(password=f"pw-{uuid.uuid4().hex}-secret").start()
    yield server
    server.remove()


def throwaway_config(server: RedisServer, **overrides: Any) -> RedisBackendConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "db": 0,
        "password": server.password,
        "socket_timeout": 2,
        "key_prefix": f"t-{uuid.uuid4().hex[:8]}",
    }
    return RedisBackendConfig(**(fields | overrides))

"""One small object per Redis topology: everything that differs between them.

- ``SingleNode``: one server (``url``, or ``host`` and ``port``).
- ``Sentinel``: the master that Sentinel names (``sentinels``, ``sentinel_service``),
  found again after a fail-over.
- ``Cluster``: keys spread over the nodes by hash slot (``cluster=True``).

What differs: how the pooled client and the listener's connection are made and closed;
what ``open`` does before the first command (Cluster learns its slots); how a batch of
store scripts is sent (one pipeline on one master, the history entry inside each
script; on Cluster one script per write at once, in slots of our own, and one
``index.lua`` per batch); whether WAIT can confirm replicas (it needs the writes'
connection: not on Cluster); how several keys are read (one MGET, or one per slot). The
backend asks its topology and never tests which one it has; ``topology_for`` chooses it
once, from the config.

The pooled client of a single node or Sentinel waits for a free connection
(``max_connections``, ``pool_timeout``) and keeps every connection it opened: redis-py's
pools never close a returned one, so bursts never turn into new server connections.
Cluster's node pools raise instead of waiting: there ``Link.gate`` makes bursts wait.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, parse_url
from redis.asyncio.sentinel import Sentinel as SentinelClient
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import RedisClusterException, RedisError

from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import BackendUnreachableError, ConfigurationError
from chicory_backends.redis.connection import Client, Connector, no_retry, pooled_retry
from chicory_backends.redis.scripts import INDEX_LUA, STORE_LUA, Scripts, Write, index_args

Mode = Literal["redis", "redis-sentinel", "redis-cluster"]


@dataclass(frozen=True, slots=True)
class Link:
    """What one ``open`` made: the pooled client, the scripts registered on it, and the
    bound on commands in flight (None where the client's pool waits by itself)."""

    client: Client
    scripts: Scripts
    gate: asyncio.Semaphore | None


class Topology:
    """How the backend reaches its data. One per backend object, made from its config."""

    mode: ClassVar[Mode]

    def __init__(self, config: RedisBackendConfig) -> None:
        self.config = config
        self.connector = Connector(config)

    # -- clients --------------------------------------------------------------------

    def client(self) -> Client:
        """The pooled client for the backend's commands (a new one each call)."""
        try:
            return self._make_client()
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            raise ConfigurationError(f"Redis {self.mode}: {self.connector.reason(exc)}") from None

    def _make_client(self) -> Client:
        raise NotImplementedError

    def _limits(self) -> dict[str, Any]:
        """A blocking pool's size and how long a command waits for a connection."""
        return {"max_connections": self.config.max_connections, "timeout": self.config.pool_timeout}

    def _listener_options(self) -> dict[str, Any]:
        return self.connector.options(no_retry()) | {"max_connections": 1}

    def listener_client(self, client: Client, attempt: int) -> Redis:
        """A client of its own for the subscription: one connection, no silent retries.
        ``attempt`` counts the subscriptions made so far."""
        raise NotImplementedError

    async def open(self, history_key: str, history_size: int) -> Link:
        """A new pooled client, proven to answer, with the Lua scripts loaded (SCRIPT
        LOAD) and registered on it."""
        client = self.client()
        try:
            with self.connector.translated():
                await self._prepare(client, history_size)
        except BaseException:
            await self.close(client)
            raise
        return Link(client, Scripts.register(client, history_key, history_size), self._gate())

    async def _prepare(self, client: Client, history_size: int) -> None:
        await client.script_load(STORE_LUA)

    def _gate(self) -> asyncio.Semaphore | None:
        return None

    async def close(self, client: Client) -> None:
        with suppress(RedisError, OSError):  # a dead server's connections: nothing to report
            await client.aclose()

    # -- commands -------------------------------------------------------------------

    async def mget(self, client: Client, keys: list[str]) -> list[Any]:
        """The values of ``keys`` in their order (None where missing)."""
        raise NotImplementedError

    async def mget_with(
        self, client: Client, keys: list[str], beside: list[str]
    ) -> tuple[list[Any], list[Any] | None]:
        """The values of ``keys`` and, when one command reads them too, of the keys
        ``beside`` them (else None: the caller reads those it needs)."""
        raise NotImplementedError

    async def store_one(self, link: Link, write: Write) -> Any:
        """One store.lua call: its answer (see store.lua); raises the driver's error."""
        raise NotImplementedError

    async def store_many(self, link: Link, writes: list[Write]) -> list[Any]:
        """Concurrent writes at once: one answer per write, in order, each the script's
        answer or the exception that failed that write alone. Raises when the whole
        batch failed (the connection, the pool)."""
        raise NotImplementedError


class _OneMaster(Topology):
    """One master serves every key (a single node, or Sentinel's): writes go as one
    pipeline with the history entry inside each script, reads as one MGET, and WAIT
    can follow the writes on their own connection."""

    def __init__(self, config: RedisBackendConfig) -> None:
        super().__init__(config)
        self.wait_replicas = config.wait_replicas

    async def mget(self, client: Client, keys: list[str]) -> list[Any]:
        return list(await client.mget(keys))

    async def mget_with(
        self, client: Client, keys: list[str], beside: list[str]
    ) -> tuple[list[Any], list[Any] | None]:
        raws = await self.mget(client, [*keys, *beside])
        return raws[: len(keys)], raws[len(keys) :]

    @staticmethod
    def _keys(scripts: Scripts, write: Write) -> list[str]:
        """store.lua's KEYS: the result key, and the history index when one is kept."""
        return [write.key, scripts.history_key] if write.entry else [write.key]

    async def store_one(self, link: Link, write: Write) -> Any:
        if self.wait_replicas and write.terminal:
            (answer,) = await self.store_many(link, [write])
            if isinstance(answer, BaseException):
                raise answer
            return answer
        scripts = link.scripts
        return await scripts.store(
            keys=self._keys(scripts, write), args=write.args, client=link.client
        )

    async def store_many(self, link: Link, writes: list[Write]) -> list[Any]:
        """One pipeline: one round trip, each script still atomic on its own key; a
        script the server refuses fails its own write only. With ``wait_replicas`` and a
        terminal write among them, WAIT follows on the writes' own connection."""
        scripts = link.scripts
        pipe = cast(Redis, link.client).pipeline(transaction=False)  # the master's client
        for write in writes:
            await scripts.store(keys=self._keys(scripts, write), args=write.args, client=pipe)
        waits = bool(self.wait_replicas) and any(write.terminal for write in writes)
        if waits:
            timeout_ms = int(self.config.wait_timeout * 1000)
            pipe.execute_command("WAIT", self.wait_replicas, timeout_ms)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        if not waits:
            return answers
        *answers, acked = answers
        unconfirmed = self._unconfirmed(acked)
        if unconfirmed is None:
            return answers
        return [
            unconfirmed if write.terminal and not isinstance(answer, BaseException) else answer
            for write, answer in zip(writes, answers, strict=True)
        ]

    def _unconfirmed(self, acked: object) -> BackendUnreachableError | None:
        """WAIT's answer: None when enough replicas have the writes, else the error of
        each terminal write (stored on the master, maybe lost if it fails now)."""
        if isinstance(acked, int) and acked >= self.wait_replicas:
            return None
        got = acked if isinstance(acked, int) else 0
        return BackendUnreachableError(
            self.connector.address,
            f"the result is on the master but only {got} of wait_replicas="
            f"{self.wait_replicas} replicas had it within {self.config.wait_timeout:g}s; "
            "it may be lost if the master fails now",
        )


class SingleNode(_OneMaster):
    """One server, by ``url`` or ``host`` and ``port``."""

    mode = "redis"

    def _make_client(self) -> Redis:
        cfg, url = self.config, self.connector.url()
        options = self.connector.options(pooled_retry()) | self._limits()
        if url is not None:
            pool = BlockingConnectionPool.from_url(url, db=cfg.db, **options)
        else:
            pool = BlockingConnectionPool(host=cfg.host, port=cfg.port, db=cfg.db, **options)
        return Redis.from_pool(pool)

    def listener_client(self, client: Client, attempt: int) -> Redis:
        cfg, url, options = self.config, self.connector.url(), self._listener_options()
        if url is not None:
            return Redis.from_pool(ConnectionPool.from_url(url, db=cfg.db, **options))
        return Redis.from_pool(ConnectionPool(host=cfg.host, port=cfg.port, db=cfg.db, **options))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-discovered master, with the blocking pool's wait-instead-of-fail behaviour."""


def _sentinel_nodes(sentinels: list[str]) -> list[tuple[str, int]]:
    nodes = []
    for entry in sentinels:
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigurationError(f"Redis sentinel {entry!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


class Sentinel(_OneMaster):
    """The master Sentinel names: every connection asks the sentinels where it is, so a
    fail-over moves the pool (and the listener, at its next subscription) to the new one."""

    mode = "redis-sentinel"

    def __init__(self, config: RedisBackendConfig) -> None:
        super().__init__(config)
        self._sentinel: SentinelClient | None = None

    def _make_client(self) -> Redis:
        cfg, common = self.config, self.connector.options(pooled_retry())
        timeouts = {k: v for k, v in common.items() if k.startswith("socket_")}
        self._sentinel = SentinelClient(  # type: ignore[no-untyped-call,unused-ignore]
            _sentinel_nodes(cfg.sentinels), sentinel_kwargs=timeouts, **common
        )
        master: Redis = self._sentinel.master_for(
            cfg.sentinel_service,
            connection_pool_class=_BlockingSentinelPool,
            db=cfg.db,
            **self._limits(),
        )
        return master

    def listener_client(self, client: Client, attempt: int) -> Redis:
        assert self._sentinel is not None  # made with the pooled client
        options = self._listener_options()
        listener: Redis = self._sentinel.master_for(
            self.config.sentinel_service, db=self.config.db, **options
        )
        return listener

    async def close(self, client: Client) -> None:
        sentinel, self._sentinel = self._sentinel, None
        try:
            await client.aclose()
            if sentinel is not None:
                await sentinel.aclose()
        except (RedisError, OSError):
            pass  # closing connections to a dead server has nothing to report


class Cluster(Topology):
    """Keys spread over the nodes by hash slot. A script reaches only its own slot, so
    the history index (another slot than the result keys) gets its entries from
    ``index.lua``, one call per batch; pipelines split by node and cannot load scripts,
    so a batch sends its scripts at once, one call each; MGET goes per slot."""

    mode = "redis-cluster"

    def __init__(self, config: RedisBackendConfig) -> None:
        if config.db != 0 and "db" in config.model_fields_set:
            raise ConfigurationError(
                "Redis Cluster has only database 0: set db=0 or leave it unset"
            )
        super().__init__(config)
        # WAIT needs the writes and itself on one connection: a pipeline, which Cluster
        # cannot give to scripts (see store_many).
        if config.wait_replicas:
            raise ConfigurationError(
                "wait_replicas is not supported on Redis Cluster: its scripts cannot share "
                "one connection with WAIT; use Sentinel or a single node with replicas"
            )

    def _make_client(self) -> RedisCluster:
        cfg, url = self.config, self.connector.url()
        options = self.connector.options(pooled_retry()) | {"max_connections": cfg.max_connections}
        if url is not None:
            return RedisCluster.from_url(url, **options)
        return RedisCluster(host=cfg.host, port=cfg.port, **options)

    def listener_client(self, client: Client, attempt: int) -> Redis:
        """Any node will do (PUBLISH reaches them all); each attempt takes the next
        primary, so a node that died is not tried again and again."""
        cluster = cast(RedisCluster, client)  # the one this topology made
        nodes = cluster.get_primaries() or cluster.get_nodes()
        node = nodes[attempt % len(nodes)]
        url = self.connector.url()
        url_options: dict[str, Any] = dict(parse_url(url)) if url is not None else {}
        url_options.pop("db", None)
        options = self._listener_options() | url_options | {"host": node.host, "port": node.port}
        return Redis.from_pool(ConnectionPool(**options))

    async def _prepare(self, client: Client, history_size: int) -> None:
        await cast(RedisCluster, client).initialize()
        await client.script_load(STORE_LUA)
        if history_size:
            await client.script_load(INDEX_LUA)

    def _gate(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.config.max_connections)

    async def mget(self, client: Client, keys: list[str]) -> list[Any]:
        """One MGET per slot (one pipeline), in the order of ``keys``."""
        return list(await cast(RedisCluster, client).mget_nonatomic(keys))

    async def mget_with(
        self, client: Client, keys: list[str], beside: list[str]
    ) -> tuple[list[Any], list[Any] | None]:
        return await self.mget(client, keys), None

    async def store_one(self, link: Link, write: Write) -> Any:
        scripts, client = link.scripts, link.client
        stored = scripts.store(keys=[write.key], args=write.args, client=client)
        if write.entry is None:
            return await stored
        written, _ = await asyncio.gather(stored, self._index(link, [write]))
        return written

    async def store_many(self, link: Link, writes: list[Write]) -> list[Any]:
        """Every script at once, each in a slot of the gate, and one ``index.lua`` for
        the batch's index entries. When that fails, so do the writes that needed it
        (written again, they are added)."""
        scripts, client, gate = link.scripts, link.client, link.gate
        sends = [
            _slotted(gate, scripts.store(keys=[write.key], args=write.args, client=client))
            for write in writes
        ]
        indexed = any(write.entry for write in writes)
        if indexed:
            sends.append(_slotted(gate, self._index(link, writes)))
        sent: list[Any] = await asyncio.gather(*sends, return_exceptions=True)
        answers = sent[: len(writes)]
        failed = sent[len(writes)] if indexed else None
        if isinstance(failed, BaseException):
            answers = [
                failed if write.entry and not isinstance(answer, BaseException) else answer
                for write, answer in zip(writes, answers, strict=True)
            ]
        return answers

    @staticmethod
    async def _index(link: Link, writes: list[Write]) -> Any:
        scripts = link.scripts
        args = index_args(scripts.history_size, writes)
        return await scripts.index(keys=[scripts.history_key], args=args, client=link.client)


async def _slotted(gate: asyncio.Semaphore | None, call: Any) -> Any:
    """One script of a Cluster batch, in a slot of its own: the batch sends them at
    once, and a node's pool (max_connections) raises instead of waiting when more calls
    than that reach it (a burst of hundreds of writes)."""
    if gate is None:
        return await call
    async with gate:
        return await call


def topology_for(config: RedisBackendConfig) -> Topology:
    """The topology the config asks for; raises ConfigurationError for a config that
    asks for two, or for what its topology cannot do."""
    if config.cluster and config.sentinels:
        raise ConfigurationError("Redis: choose either cluster=True or sentinels, not both")
    if config.sentinels and config.url is not None:
        raise ConfigurationError(
            "Redis: url and sentinels are exclusive; Sentinel finds the master"
        )
    if config.cluster:
        return Cluster(config)
    return Sentinel(config) if config.sentinels else SingleNode(config)

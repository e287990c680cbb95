"""Redis settings to clients: the three modes, their pools, and errors as ours.

Everything that depends on the mode (single node, Sentinel, Cluster) is decided here,
once per backend object; the backend and the listener only ask for a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    ConfigurationError,
    DatabaseError,
    NotConnectedError,
    PoolExhaustedError,
)

Mode = Literal["redis", "redis-sentinel", "redis-cluster"]
Client = Redis | RedisCluster

# Failures that mean "the server is not serving us right now": retrying later may work.
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,  # includes asyncio.TimeoutError
    ReadOnlyError,  # a Sentinel fail-over in progress: we still talk to the old master
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-discovered master, with the blocking pool's wait-instead-of-fail behaviour."""


def _retry() -> Retry:
    # Short: one quick retry survives a dropped idle connection or a fail-over blip,
    # while a server that is down still fails within about a second.
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def _no_retry() -> Retry:
    # For the subscribed connection: redis-py would reconnect and re-subscribe silently,
    # losing what was published meanwhile without telling us. Every failure surfaces
    # instead, and the listener re-subscribes itself and has every waiter re-read.
    return Retry(NoBackoff(), retries=0, supported_errors=())


def mode_of(config: RedisBackendConfig) -> Mode:
    if config.cluster and config.sentinels:
        raise ConfigurationError("Redis: choose either cluster=True or sentinels, not both")
    if config.sentinels and config.url is not None:
        raise ConfigurationError(
            "Redis: url and sentinels are exclusive; Sentinel finds the master"
        )
    if config.cluster:
        if config.db != 0 and "db" in config.model_fields_set:
            raise ConfigurationError(
                "Redis Cluster has only database 0: set db=0 or leave it unset"
            )
        return "redis-cluster"
    return "redis-sentinel" if config.sentinels else "redis"


def _sentinel_nodes(sentinels: list[str]) -> list[tuple[str, int]]:
    nodes = []
    for entry in sentinels:
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigurationError(f"Redis sentinel {entry!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


class Connector:
    """The clients of one backend object, made from its config, and its error rule.

    The pooled client waits for a free connection (``max_connections``, ``pool_timeout``)
    and keeps every connection it opened: redis-py's pools never close a returned one,
    so bursts never turn into new server connections.
    """

    def __init__(self, config: RedisBackendConfig) -> None:
        self.config = config
        self.mode: Mode = mode_of(config)
        try:
            self.address = config.address()
        except ValueError as exc:  # a URL urlsplit cannot read, e.g. a bad port
            raise ConfigurationError(f"Redis url is not valid: {exc}") from None
        self._secrets = self._find_secrets()
        self.sentinel: Sentinel | None = None

    def _options(self, retry: Retry) -> dict[str, Any]:
        """What every connection of every mode is made with."""
        cfg = self.config
        options: dict[str, Any] = {
            "socket_timeout": cfg.socket_timeout,
            "socket_connect_timeout": cfg.socket_timeout,
            "retry": retry,
        }
        if cfg.username:
            options["username"] = cfg.username
        if cfg.password is not None:
            options["password"] = cfg.password.get_secret_value()
        return options

    def _url(self) -> str | None:
        return self.config.url.get_secret_value() if self.config.url is not None else None

    def client(self) -> Client:
        """The pooled client for the backend's commands (a new one each call)."""
        cfg, common, url = self.config, self._options(_retry()), self._url()
        try:
            if self.mode == "redis-cluster":
                common["max_connections"] = cfg.max_connections
                if url is not None:
                    return RedisCluster.from_url(url, **common)
                return RedisCluster(host=cfg.host, port=cfg.port, **common)
            limits: dict[str, Any] = {
                "max_connections": cfg.max_connections,
                "timeout": cfg.pool_timeout,
            }
            if self.mode == "redis-sentinel":
                timeouts = {k: v for k, v in common.items() if k.startswith("socket_")}
                self.sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                    _sentinel_nodes(cfg.sentinels), sentinel_kwargs=timeouts, **common
                )
                master: Redis = self.sentinel.master_for(
                    cfg.sentinel_service,
                    connection_pool_class=_BlockingSentinelPool,
                    db=cfg.db,
                    **limits,
                )
                return master
            if url is not None:
                pool = BlockingConnectionPool.from_url(url, db=cfg.db, **common, **limits)
            else:
                pool = BlockingConnectionPool(
                    host=cfg.host, port=cfg.port, db=cfg.db, **common, **limits
                )
            return Redis.from_pool(pool)
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            raise ConfigurationError(f"Redis {self.mode}: {self.reason(exc)}") from None

    def listener_client(self, client: Client | None, attempt: int) -> Redis:
        """A client of its own for the subscription: one connection, no silent retries.

        On Cluster any node will do (PUBLISH reaches them all); each attempt takes the
        next primary, so a node that died is not tried again and again.
        """
        cfg, url = self.config, self._url()
        options = self._options(_no_retry()) | {"max_connections": 1}
        if client is None:
            raise NotConnectedError("RedisBackend")
        if isinstance(client, RedisCluster):
            nodes = client.get_primaries() or client.get_nodes()
            node = nodes[attempt % len(nodes)]
            url_options: dict[str, Any] = dict(parse_url(url)) if url is not None else {}
            url_options.pop("db", None)
            pool = ConnectionPool(
                **(options | url_options | {"host": node.host, "port": node.port})
            )
            return Redis.from_pool(pool)
        if self.mode == "redis-sentinel":
            assert self.sentinel is not None
            listener: Redis = self.sentinel.master_for(cfg.sentinel_service, db=cfg.db, **options)
            return listener
        if url is not None:
            return Redis.from_pool(ConnectionPool.from_url(url, db=cfg.db, **options))
        return Redis.from_pool(ConnectionPool(host=cfg.host, port=cfg.port, db=cfg.db, **options))

    async def close(self, client: Client) -> None:
        sentinel, self.sentinel = self.sentinel, None
        try:
            await client.aclose()
            if sentinel is not None:
                await sentinel.aclose()
        except (RedisError, OSError):
            pass  # closing connections to a dead server has nothing to report

    def _find_secrets(self) -> list[str]:
        secrets = []
        if self.config.password is not None:
            secrets.append(self.config.password.get_secret_value())
        if self.config.url is not None:
            password = urlsplit(self.config.url.get_secret_value()).password
            if password:
                secrets += [password, unquote(password)]
        return [s for s in secrets if s]

    def reason(self, exc: BaseException) -> str:
        """The driver's message without any credential in it."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def translated(self) -> Iterator[None]:
        """Every driver error as ours, without credentials in the message."""
        try:
            yield
        except MaxConnectionsError:
            raise self.exhausted() from None
        except UNREACHABLE as exc:
            if isinstance(exc, RedisConnectionError) and isinstance(
                exc.__cause__, asyncio.TimeoutError
            ):
                # Internal: redis-py tells a BlockingConnectionPool timeout only by raising
                # ConnectionError from asyncio.TimeoutError (no class of its own). Pinned
                # in pyproject.toml; test_a_full_pool_waits_then_reports_exhaustion.
                raise self.exhausted() from None
            raise BackendUnreachableError(self.address, self.reason(exc)) from None
        except (RedisError, RedisClusterException) as exc:
            raise DatabaseError(
                f"redis at {self.address} refused the command: {self.reason(exc)}"
            ) from None

    def refused(self, error: BaseException) -> BaseException:
        """One failed command of a pipeline, as ours (the others stand)."""
        try:
            with self.translated():
                raise error
        except Exception as translated:
            return translated
        raise AssertionError("unreachable")

    def exhausted(self) -> PoolExhaustedError:
        return PoolExhaustedError(self.config.max_connections, 0, self.config.pool_timeout)

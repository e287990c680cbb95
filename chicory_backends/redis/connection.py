"""What every Redis connection shares, whatever the topology: its options (timeouts,
credentials, retries), the errors as ours, and credentials kept out of messages.

The topologies (topology.py) make the clients from these options; the backend and the
listener translate every driver error through ``Connector.translated``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
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
    PoolExhaustedError,
)

# The client of every topology: Cluster's, or one for a single node or Sentinel's master.
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


def pooled_retry() -> Retry:
    """For the pooled client. Short: one quick retry survives a dropped idle connection
    or a fail-over blip, while a server that is down still fails within about a second."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def no_retry() -> Retry:
    """For the subscribed connection: redis-py would reconnect and re-subscribe silently,
    losing what was published meanwhile without telling us. Every failure surfaces
    instead, and the listener re-subscribes itself and has every waiter re-read."""
    return Retry(NoBackoff(), retries=0, supported_errors=())


class Connector:
    """The connection options of one backend object, made from its config, and its
    error rule. Every topology makes its clients with ``options``."""

    def __init__(self, config: RedisBackendConfig) -> None:
        self.config = config
        try:
            self.address = config.address()
        except ValueError as exc:  # a URL urlsplit cannot read, e.g. a bad port
            raise ConfigurationError(f"Redis url is not valid: {exc}") from None
        self._secrets = self._find_secrets()

    def options(self, retry: Retry) -> dict[str, Any]:
        """What every connection of every topology is made with."""
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

    def url(self) -> str | None:
        return self.config.url.get_secret_value() if self.config.url is not None else None

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

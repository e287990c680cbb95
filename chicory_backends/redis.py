"""Redis result backend: one JSON document per task, guarded by one Lua script.

Layout (``P`` is ``config.key_prefix``)::

    P:result:<task_id>         JSON {"state", "result" (JSON text), "error", "traceback"}
    {P:workers}:hb:<worker_id> WorkerStats JSON, expires with the heartbeat TTL
    {P:workers}:index          sorted set: worker id -> heartbeat expiry (epoch seconds)

The heartbeat keys share one hash tag so that, on Cluster, the index and the
heartbeats live in one slot: a heartbeat is one MULTI/EXEC and the active-worker
read is one MGET. Result keys carry no tag and spread over the cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
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

from chicory_backends.base import Backend
from chicory_backends.codec import (
    build_result,
    check_task_id,
    decode_stats,
    encode_stats,
    encode_value,
)
from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    ChicoryBackendError,
    ConfigurationError,
    CorruptResultError,
    NotConnectedError,
    PoolExhaustedError,
    ResultNotSerializableError,
)
from chicory_backends.types import (
    TERMINAL_STATES,
    BackendStatus,
    TaskResult,
    TaskState,
    WorkerStats,
)

__all__ = ["RedisBackend"]

Mode = Literal["redis", "redis-sentinel", "redis-cluster"]
Client = Redis | RedisCluster

# The terminal-state rule, built from TERMINAL_STATES so the Lua and Python never disagree.
_LUA_TERMINAL = (
    "{" + ", ".join(f"[{json.dumps(s.value)}] = true" for s in sorted(TERMINAL_STATES)) + "}"
)

# KEYS[1] result key; ARGV[1] new state; ARGV[2] whole document, or "" to change only the
# state (keeping result/error/traceback); ARGV[3] TTL in seconds, "0" = keep forever.
# GET, check and SET run as one script, so no late write can slip between them.
_STORE_LUA = f"""
local terminal = {_LUA_TERMINAL}
local state, doc, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = nil
local old = redis.call('GET', KEYS[1])
if old then
  local ok, decoded = pcall(cjson.decode, old)
  if ok and type(decoded) == 'table' then current = decoded end
end
if current and terminal[current.state] and not terminal[state] then
  return 0
end
if doc == '' then
  current = current or {{}}
  current.state = state
  doc = cjson.encode(current)
end
if ttl > 0 then
  redis.call('SET', KEYS[1], doc, 'EX', ttl)
else
  redis.call('SET', KEYS[1], doc)
end
return 1
"""

# Failures that mean "the server is not serving us right now": retrying later may work.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,  # includes asyncio.TimeoutError
    ReadOnlyError,  # a Sentinel fail-over in progress: we still talk to the old master
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)

_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-discovered master, with the blocking pool's wait-instead-of-fail behaviour."""


def _retry() -> Retry:
    # Short: one quick retry survives a dropped idle connection or a fail-over blip,
    # while a server that is down still fails within about a second.
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def _mode(config: RedisBackendConfig) -> Mode:
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


async def _close(client: Client, sentinel: Sentinel | None) -> None:
    try:
        await client.aclose()
        if sentinel is not None:
            await sentinel.aclose()
    except (RedisError, OSError):
        pass  # closing connections to a dead server has nothing to report


def _document(task_id: str, result: TaskResult, max_bytes: int | None) -> bytes:
    """The stored JSON; raises before any I/O when it cannot round-trip."""
    doc = {
        "state": TaskState(result.state).value,
        "result": encode_value(task_id, result.result, max_bytes),
        "error": result.error,
        "traceback": result.traceback,
    }
    try:
        return _json.encode(doc).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
        raise ResultNotSerializableError(task_id, str(exc)) from None


def _read_document(task_id: str, raw: bytes | str) -> TaskResult:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptResultError(task_id, f"invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        raise CorruptResultError(task_id, "not a result document")
    texts = [doc.get(name) for name in ("result", "error", "traceback")]
    if not all(text is None or isinstance(text, str) for text in texts):
        raise CorruptResultError(task_id, "result, error and traceback must be text or null")
    return build_result(task_id, doc["state"], *texts)


class RedisBackend(Backend):
    """Results and heartbeats on a single Redis node, a Sentinel-managed master or a Cluster."""

    def __init__(self, config: RedisBackendConfig | None = None) -> None:
        self.config = config if config is not None else RedisBackendConfig()
        self.mode: Mode = _mode(self.config)
        try:
            self._address = self.config.address()
        except ValueError as exc:  # a URL urlsplit cannot read, e.g. a bad port
            raise ConfigurationError(f"Redis url is not valid: {exc}") from None
        self._secrets = self._find_secrets()
        prefix = self.config.key_prefix
        self._result_prefix = f"{prefix}:result:"
        self._workers_tag = f"{{{prefix}:workers}}"
        self._index_key = f"{self._workers_tag}:index"
        self._ttl = str(self.config.result_ttl)
        self._client: Client | None = None
        self._sentinel: Sentinel | None = None
        self._store: AsyncScript | None = None
        # Cluster nodes raise instead of waiting when their pool is full; this makes
        # bursts wait there too, as the blocking pool does on the other modes.
        self._slots: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"RedisBackend(mode={self.mode!r}, address={self._address!r})"

    # -- connection -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool, prove the server answers, and load the Lua script once."""
        if self._client is not None:
            return
        client, sentinel = self._build_client()
        try:
            async with self._io(client):
                if isinstance(client, RedisCluster):
                    await client.initialize()
                await client.script_load(_STORE_LUA)
        except BaseException:
            await _close(client, sentinel)
            raise
        if self._client is not None:  # a concurrent connect() finished first: keep its pool
            await _close(client, sentinel)
            return
        self._client, self._sentinel = client, sentinel
        self._store = client.register_script(_STORE_LUA)
        if isinstance(client, RedisCluster):
            self._slots = asyncio.Semaphore(self.config.max_connections)

    async def disconnect(self) -> None:
        client, sentinel = self._client, self._sentinel
        # _store stays: it is only a SHA and the script text, and a call already past
        # the connection check must not find it gone.
        self._client, self._sentinel, self._slots = None, None, None
        if client is not None:
            await _close(client, sentinel)

    def _build_client(self) -> tuple[Client, Sentinel | None]:
        cfg = self.config
        common: dict[str, Any] = {
            "socket_timeout": cfg.socket_timeout,
            "socket_connect_timeout": cfg.socket_timeout,
            "retry": _retry(),
        }
        if cfg.username:
            common["username"] = cfg.username
        if cfg.password is not None:
            common["password"] = cfg.password.get_secret_value()
        url = cfg.url.get_secret_value() if cfg.url is not None else None
        try:
            if self.mode == "redis-cluster":
                common["max_connections"] = cfg.max_connections
                if url is not None:
                    return RedisCluster.from_url(url, **common), None
                return RedisCluster(host=cfg.host, port=cfg.port, **common), None
            pool_limits: dict[str, Any] = {
                "max_connections": cfg.max_connections,
                "timeout": cfg.pool_timeout,
            }
            if self.mode == "redis-sentinel":
                timeouts = {k: v for k, v in common.items() if k.startswith("socket_")}
                sentinel = Sentinel(  # type: ignore[no-untyped-call]
                    _sentinel_nodes(cfg.sentinels), sentinel_kwargs=timeouts, **common
                )
                master: Redis = sentinel.master_for(
                    cfg.sentinel_service,
                    connection_pool_class=_BlockingSentinelPool,
                    db=cfg.db,
                    **pool_limits,
                )
                return master, sentinel
            if url is not None:
                pool = BlockingConnectionPool.from_url(url, db=cfg.db, **common, **pool_limits)
            else:
                pool = BlockingConnectionPool(
                    host=cfg.host, port=cfg.port, db=cfg.db, **common, **pool_limits
                )
            return Redis.from_pool(pool), None
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            raise ConfigurationError(f"Redis {self.mode}: {self._reason(exc)}") from None

    def _find_secrets(self) -> list[str]:
        secrets = []
        if self.config.password is not None:
            secrets.append(self.config.password.get_secret_value())
        if self.config.url is not None:
            password = urlsplit(self.config.url.get_secret_value()).password
            if password:
                secrets += [password, unquote(password)]
        return [s for s in secrets if s]

    def _reason(self, exc: BaseException) -> str:
        """The driver's message without any credential in it."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @asynccontextmanager
    async def _io(self, client: Client | None = None) -> AsyncIterator[Client]:
        """Lend the client for one operation and turn every driver error into ours."""
        if client is None:
            client = self._client
            if client is None:
                raise NotConnectedError("RedisBackend")
        slots = self._slots
        if slots is not None:
            try:
                async with asyncio.timeout(self.config.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise self._exhausted() from None
        try:
            yield client
        except MaxConnectionsError:
            raise self._exhausted() from None
        except _UNREACHABLE as exc:
            if isinstance(exc, RedisConnectionError) and isinstance(
                exc.__cause__, asyncio.TimeoutError
            ):
                raise self._exhausted() from None  # BlockingConnectionPool timed out
            raise BackendUnreachableError(self._address, self._reason(exc)) from None
        except (RedisError, RedisClusterException) as exc:
            raise ChicoryBackendError(
                f"redis at {self._address} refused the command: {self._reason(exc)}"
            ) from None
        finally:
            if slots is not None:
                slots.release()

    def _exhausted(self) -> PoolExhaustedError:
        return PoolExhaustedError(self.config.max_connections, 0, self.config.pool_timeout)

    # -- results ----------------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return self._result_prefix + check_task_id(task_id)

    async def _run_store(self, key: str, state: TaskState, doc: bytes) -> None:
        async with self._io() as client:
            assert self._store is not None
            await self._store(keys=[key], args=[state.value, doc, self._ttl], client=client)

    async def set_state(self, task_id: str, state: TaskState) -> None:
        """Change only the state; refused when it would replace a terminal one."""
        await self._run_store(self._result_key(task_id), TaskState(state), b"")

    async def store_result(self, task_id: str, result: TaskResult) -> None:
        """Write state, result, error and traceback together, with the result TTL."""
        key = self._result_key(task_id)
        doc = _document(task_id, result, self.config.max_result_bytes)
        await self._run_store(key, TaskState(result.state), doc)

    async def get_result(self, task_id: str) -> TaskResult | None:
        key = self._result_key(task_id)
        async with self._io() as client:
            raw = await client.get(key)
        return None if raw is None else _read_document(task_id, raw)

    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """One MGET (one per slot on Cluster); unknown or expired ids are absent."""
        ids = list(dict.fromkeys(task_ids))
        keys = [self._result_key(task_id) for task_id in ids]
        if not keys:
            return {}
        async with self._io() as client:
            if isinstance(client, RedisCluster):
                raws = await client.mget_nonatomic(keys)
            else:
                raws = await client.mget(keys)
        return {
            task_id: _read_document(task_id, raw)
            for task_id, raw in zip(ids, raws, strict=True)
            if raw is not None
        }

    async def delete_result(self, task_id: str) -> None:
        key = self._result_key(task_id)
        async with self._io() as client:
            await client.delete(key)

    # -- heartbeats -------------------------------------------------------------------

    def _heartbeat_key(self, worker_id: str) -> str:
        return f"{self._workers_tag}:hb:{worker_id}"

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        """The heartbeat expires by itself; the index entry records when, for the listing."""
        if ttl < 1:
            raise ValueError(f"heartbeat ttl must be at least 1 second, not {ttl}")
        payload = encode_stats(stats)
        async with self._io() as client:
            pipe = client.pipeline(transaction=True)
            pipe.set(self._heartbeat_key(worker_id), payload, ex=ttl)
            pipe.zadd(self._index_key, {worker_id: time.time() + ttl})
            await pipe.execute()

    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None:
        async with self._io() as client:
            raw = await client.get(self._heartbeat_key(worker_id))
        return None if raw is None else decode_stats(worker_id, raw)

    async def get_active_workers(self) -> list[WorkerStats]:
        """One ZRANGEBYSCORE for unexpired entries, one MGET for their heartbeats."""
        async with self._io() as client:
            members = await client.zrangebyscore(self._index_key, f"({time.time()!r}", "+inf")
            if not members:
                return []
            ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            raws = await client.mget([self._heartbeat_key(w) for w in ids])
        # A heartbeat that expired after the range read is simply left out.
        return [decode_stats(w, raw) for w, raw in zip(ids, raws, strict=True) if raw is not None]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Drop index entries whose heartbeat expired over ``stale_seconds`` ago."""
        cutoff = time.time() - stale_seconds
        async with self._io() as client:
            removed = await client.zremrangebyscore(self._index_key, "-inf", f"({cutoff!r}")
        return int(removed)

    async def healthcheck(self) -> BackendStatus:
        """PING round trip; reports a failure instead of raising it."""
        started = time.perf_counter()
        try:
            async with self._io() as client:
                await client.ping()
        except Exception as exc:
            return BackendStatus(connected=False, error=self._reason(exc))
        return BackendStatus(connected=True, latency_ms=(time.perf_counter() - started) * 1000)

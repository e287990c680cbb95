"""Redis result backend: one JSON document per task, guarded by one Lua script.

Layout (``P`` is ``config.key_prefix``)::

    P:result:<task_id>         JSON {"state", "result" (JSON text), "error", "traceback"}
    {P:workers}:hb:<worker_id> WorkerStats JSON, expires with the heartbeat TTL
    {P:workers}:index          sorted set: worker id -> heartbeat expiry (epoch seconds)
    P:done                     pub/sub channel: the task id, each time a terminal state is written

The heartbeat keys share one hash tag so that, on Cluster, the index and the
heartbeats live in one slot: a heartbeat is one MULTI/EXEC and the active-worker
read is one MGET. Result keys carry no tag and spread over the cluster.

Waiting (``wait_for_result``) is pushed, not polled: the store script PUBLISHes the task
id in the same atomic step that writes a terminal state, and each backend keeps ONE
subscribed connection (its own, outside the pool; opened at the first wait, closed at
disconnect, re-opened when lost) that wakes the waiters of that id. On Cluster this is a
plain PUBLISH, which the cluster bus delivers to subscribers on every node, so the
subscription can sit on any node; SPUBLISH cannot be used because a script may only
touch its own slot and the result keys spread over all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chicory_backends.base import Backend
from chicory_backends.codec import (
    build_result,
    check_task_id,
    check_text,
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
from chicory_backends.waiting import ReadBatcher

__all__ = ["LISTENER_CLIENT_NAME", "RedisBackend"]

logger = logging.getLogger(__name__)

# CLIENT SETNAME of the subscribed connection, to tell it apart in CLIENT LIST.
LISTENER_CLIENT_NAME = "chicory-backends-listener"

Mode = Literal["redis", "redis-sentinel", "redis-cluster"]
Client = Redis | RedisCluster

# The terminal-state rule, built from TERMINAL_STATES so the Lua and Python never disagree.
_LUA_TERMINAL = (
    "{" + ", ".join(f"[{json.dumps(s.value)}] = true" for s in sorted(TERMINAL_STATES)) + "}"
)

# KEYS[1] result key; ARGV[1] new state; ARGV[2] whole document, or "" to change only the
# state (keeping result/error/traceback); ARGV[3] TTL in seconds, "0" = keep forever;
# ARGV[4] the channel to PUBLISH the task id ARGV[5] on when the written state is terminal.
# GET, check, SET and PUBLISH run as one script, so no late write can slip between them
# and a waiter that reads a non-terminal state is sure to be sent the terminal one.
# PUBLISH goes through pcall: a user whose ACL denies the channel still stores results
# (the script returns 2 instead of 1; waiters then rely on RedisBackend.recheck_interval).
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
if terminal[state] and ARGV[4] then
  local sent = redis.pcall('PUBLISH', ARGV[4], ARGV[5])
  if type(sent) == 'table' and sent.err then return 2 end
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


def _no_retry() -> Retry:
    # For the subscribed connection: redis-py would reconnect and re-subscribe silently,
    # losing what was published meanwhile without telling us. Every failure surfaces
    # instead, and the listener re-subscribes itself and has every waiter re-read.
    return Retry(NoBackoff(), retries=0, supported_errors=())


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
        "error": check_text(task_id, "error", result.error),
        "traceback": check_text(task_id, "traceback", result.traceback),
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


class _PubSubRefused(Exception):
    """The server (or a proxy, or the ACL) refuses SUBSCRIBE: waiting has to poll."""


class _Listener:
    """One subscribed connection for a backend, and the futures of the ids waited for.

    ``subscribe`` returns once the server has confirmed the SUBSCRIBE, with a future that
    the task's notification resolves, or the loss of the connection (a cue to subscribe
    again and re-read: whatever was published while nobody listened is found by that
    read). Several waiters of one id each get their own future and all wake.
    """

    # With no traffic for this long, PING; no answer within the socket timeout means the
    # connection died silently (no RST, e.g. behind NAT) and is dropped like a lost one.
    ping_interval = 15.0

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._channel = backend._channel
        self._waiters: dict[bytes, set[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._client: Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._attempts = 0
        self.closed = False

    @property
    def active(self) -> bool:
        return self._pubsub is not None

    @property
    def waiting(self) -> int:
        """How many distinct task ids are waited for right now."""
        return len(self._waiters)

    async def subscribe(self, member: bytes) -> asyncio.Future[None]:
        # Re-check after every await: the connection may be lost again before we resume,
        # and a future added to a dead subscription would never be resolved.
        while self._pubsub is None:
            if self.closed:
                raise NotConnectedError("RedisBackend")
            try:
                await self._start_shared()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.closed and task is not None and not task.cancelling():
                    raise NotConnectedError("RedisBackend") from None  # close() stopped it
                raise
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(member, set()).add(future)
        return future

    def unsubscribe(self, member: bytes, future: asyncio.Future[None]) -> None:
        futures = self._waiters.get(member)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[member]
        if not future.done():
            future.cancel()

    async def close(self) -> None:
        """For good (the backend disconnects); the waiters wake and find it closed."""
        self.closed = True
        reader, pubsub, client = self._reader, self._pubsub, self._client
        self._reader = self._pubsub = self._client = None
        for task in (reader, self._starting):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._wake_all()
        await _dispose(pubsub, client)

    def _start_shared(self) -> asyncio.Future[None]:
        """The one connection attempt in flight, shared by every waiter that needs it.

        Shielded: a waiter whose own timeout expires must not cancel it for the others.
        """
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._start())
            self._starting.add_done_callback(_retrieve)
        return asyncio.shield(self._starting)

    async def _start(self) -> None:
        """Subscribe, with the same short retry as the other calls: a blip (a dropped
        connection, a fail-over) is ridden out, a server that is down is reported."""
        for pause in (0.05, 0.2, None):
            try:
                return await self._start_once()
            except BackendUnreachableError:
                if pause is None or self.closed:
                    raise
            await asyncio.sleep(pause)

    async def _start_once(self) -> None:
        backend = self._backend
        client = backend._listener_client(self._attempts)
        self._attempts += 1
        pubsub = client.pubsub()
        try:
            with backend._translated():
                await self._subscribe(client, pubsub)
            if self.closed:  # the backend was disconnected while we subscribed
                raise NotConnectedError("RedisBackend")
        except BaseException:
            await _dispose(pubsub, client)
            raise
        self._pubsub, self._client = pubsub, client
        self._reader = asyncio.get_running_loop().create_task(self._read(pubsub, client))

    async def _subscribe(self, client: Redis, pubsub: PubSub) -> None:
        """SUBSCRIBE and wait for the server's confirmation: only then is a publish
        after our next read certain to reach us."""
        timeout = self._backend.config.socket_timeout
        try:
            # Named for CLIENT LIST; on the pool's only connection, which the pub/sub
            # then takes. A user the ACL denies CLIENT SETNAME can still wait.
            with suppress(ResponseError):
                await client.client_setname(LISTENER_CLIENT_NAME)
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=timeout)
                if message is None:
                    raise RedisTimeoutError(f"no SUBSCRIBE confirmation within {timeout:g}s")
                if message["type"] == "subscribe":
                    return
        except ResponseError as exc:  # NOPERM, or a proxy without pub/sub
            raise _PubSubRefused(self._backend._reason(exc)) from None

    async def _read(self, pubsub: PubSub, client: Redis) -> None:
        loop = asyncio.get_running_loop()
        ping_timeout = self._backend.config.socket_timeout
        ping_sent: float | None = None
        try:
            while True:
                if ping_sent is None:
                    wait = self.ping_interval
                else:
                    wait = max(0.0, ping_sent + ping_timeout - loop.time())
                message = await pubsub.get_message(timeout=wait)
                if message is None:
                    if ping_sent is not None:
                        raise RedisTimeoutError("no answer to PING on the subscription")
                    await pubsub.ping()
                    ping_sent = loop.time()
                    continue
                ping_sent = None
                if message["type"] == "message":
                    self._wake(message["data"])
                elif message["type"] != "pong":  # an unsubscribe: we did not ask for it
                    raise RedisConnectionError(f"unexpected {message['type']} message")
        except asyncio.CancelledError:
            raise  # close() owns the connection now
        except Exception as exc:
            logger.info("redis result subscription lost: %s", self._backend._reason(exc))
        if self._pubsub is pubsub:
            self._reader = self._pubsub = self._client = None
            self._wake_all()
        await _dispose(pubsub, client)

    def _wake(self, member: bytes) -> None:
        for future in self._waiters.pop(member, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a start's failure as seen even when every waiter timed out before it ended."""
    if not task.cancelled():
        task.exception()


async def _dispose(pubsub: PubSub | None, client: Redis | None) -> None:
    try:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        if client is not None:
            await client.aclose()
    except (RedisError, OSError):
        pass  # closing connections to a dead server has nothing to report


class RedisBackend(Backend):
    """Results and heartbeats on a single Redis node, a Sentinel-managed master or a Cluster."""

    # While subscribed, a waiter still re-reads its result this often (give or take 10%),
    # in case its notification was never sent: a writer running an older version of this
    # library, an ACL that denies PUBLISH, a subscription left on a fenced-off node.
    recheck_interval: float = 30.0

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
        self._channel = f"{prefix}:done"
        self._ttl = str(self.config.result_ttl)
        self._client: Client | None = None
        self._sentinel: Sentinel | None = None
        self._store: AsyncScript | None = None
        # Cluster nodes raise instead of waiting when their pool is full; this makes
        # bursts wait there too, as the blocking pool does on the other modes.
        self._slots: asyncio.Semaphore | None = None
        # The subscription that wakes waiters, made at the first wait; and why SUBSCRIBE
        # was refused, when it was (then waiting polls until the next connect()).
        self._listener: _Listener | None = None
        self._pubsub_refused: str | None = None
        self._publish_refused = False  # warned once that stores cannot announce results
        self._reads = ReadBatcher(lambda task_ids: self.get_results(task_ids), max_batch=100)

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
        listener, self._listener, self._pubsub_refused = self._listener, None, None
        if listener is not None:
            await listener.close()
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

    def _listener_client(self, attempt: int) -> Redis:
        """A client of its own for the subscription: one connection, no silent retries.

        On Cluster any node will do (PUBLISH reaches them all); each attempt takes the
        next primary, so a node that died is not tried again and again.
        """
        cfg = self.config
        options: dict[str, Any] = {
            "socket_timeout": cfg.socket_timeout,
            "socket_connect_timeout": cfg.socket_timeout,
            "retry": _no_retry(),
            "max_connections": 1,
        }
        if cfg.username:
            options["username"] = cfg.username
        if cfg.password is not None:
            options["password"] = cfg.password.get_secret_value()
        url = cfg.url.get_secret_value() if cfg.url is not None else None
        client = self._client
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
            assert self._sentinel is not None
            listener: Redis = self._sentinel.master_for(cfg.sentinel_service, db=cfg.db, **options)
            return listener
        if url is not None:
            return Redis.from_pool(ConnectionPool.from_url(url, db=cfg.db, **options))
        return Redis.from_pool(ConnectionPool(host=cfg.host, port=cfg.port, db=cfg.db, **options))

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
            with self._translated():
                yield client
        finally:
            if slots is not None:
                slots.release()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Every driver error as ours, without credentials in the message."""
        try:
            yield
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

    def _exhausted(self) -> PoolExhaustedError:
        return PoolExhaustedError(self.config.max_connections, 0, self.config.pool_timeout)

    # -- results ----------------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return self._result_prefix + check_task_id(task_id)

    async def _run_store(self, key: str, task_id: str, state: TaskState, doc: bytes) -> None:
        args = [state.value, doc, self._ttl, self._channel, task_id]
        async with self._io() as client:
            assert self._store is not None
            written = await self._store(keys=[key], args=args, client=client)
        if written == 2 and not self._publish_refused:
            self._publish_refused = True
            logger.warning(
                "redis at %s refused PUBLISH on %r: results are stored, but waiting clients "
                "only see them at their re-check (every %gs); grant the channel to this user",
                self._address,
                self._channel,
                self.recheck_interval,
            )

    async def set_state(self, task_id: str, state: TaskState) -> None:
        """Change only the state; refused when it would replace a terminal one.

        A terminal state wakes the waiters of the task, here and in every other process.
        """
        await self._run_store(self._result_key(task_id), task_id, TaskState(state), b"")

    async def store_result(self, task_id: str, result: TaskResult) -> None:
        """Write state, result, error and traceback together, with the result TTL.

        A terminal state wakes the waiters of the task, here and in every other process.
        """
        key = self._result_key(task_id)
        doc = _document(task_id, result, self.config.max_result_bytes)
        await self._run_store(key, task_id, TaskState(result.state), doc)

    async def get_result(self, task_id: str) -> TaskResult | None:
        key = self._result_key(task_id)
        async with self._io() as client:
            raw = await client.get(key)
        return None if raw is None else _read_document(task_id, raw)

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        """Woken by the notification the store script publishes with a terminal state.

        Waiting is "subscribe, then read, then sleep": the waiter is registered and the
        subscription confirmed before the one read, so a result stored before it is seen
        by the read and one stored after it is published to us. Ten thousand waiters
        share one subscribed connection; their reads go out together as ``get_results``
        (MGET) calls on the ordinary pool. When the subscription is lost every waiter
        subscribes again and re-reads; when the server cannot be reached that raises
        BackendUnreachableError. If the server refuses SUBSCRIBE (ACL, proxy) this polls
        like the default does.
        """
        self._result_key(task_id)  # an invalid id fails before any I/O
        if timeout is not None and timeout <= 0:
            result = await self.get_result(task_id)
            return result if result is not None and result.state.is_terminal else None
        if self._client is None:
            raise NotConnectedError("RedisBackend")
        if self._pubsub_refused is not None:
            return await super().wait_for_result(task_id, timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                return await self._wait_notified(task_id)
        except TimeoutError:
            if scope.expired():
                return None
            raise
        except _PubSubRefused as exc:
            if self._pubsub_refused is None:
                self._pubsub_refused = str(exc)
                logger.warning(
                    "redis at %s refused SUBSCRIBE (%s): waiting for results polls instead",
                    self._address,
                    exc,
                )
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            return await super().wait_for_result(task_id, remaining)

    async def _wait_notified(self, task_id: str) -> TaskResult:
        member = task_id.encode("utf-8", "surrogatepass")  # as PUBLISH sends it
        while True:
            listener = self._listener
            if listener is None or listener.closed:
                if self._client is None:
                    raise NotConnectedError("RedisBackend")
                listener = self._listener = _Listener(self)
            waiter = await listener.subscribe(member)
            try:
                result = await self._reads.get(task_id)
                if result is not None and result.state.is_terminal:
                    return result
                recheck = self.recheck_interval * random.uniform(0.9, 1.1)
                await asyncio.wait((waiter,), timeout=recheck)
            finally:
                listener.unsubscribe(member, waiter)

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
        return f"{self._workers_tag}:hb:{check_task_id(worker_id)}"

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        """The heartbeat expires by itself; the index entry records when, for the listing."""
        if ttl < 1:
            raise ValueError(f"heartbeat ttl must be at least 1 second, not {ttl}")
        key = self._heartbeat_key(worker_id)
        payload = encode_stats(stats)
        async with self._io() as client:
            pipe = client.pipeline(transaction=True)
            pipe.set(key, payload, ex=ttl)
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

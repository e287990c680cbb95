"""RedisBackend: one JSON document per task, guarded by one Lua script.

Layout (``P`` is ``config.key_prefix``)::

    P:result:<task_id>         JSON {"state", "result" (JSON text), "error", "traceback"}
    {P:workers}:hb:<worker_id> WorkerStats JSON, expires with the heartbeat TTL
    {P:workers}:index          sorted set: worker id -> heartbeat expiry (epoch seconds)
    P:done                     pub/sub channel: the task id, each time a terminal state is written

The heartbeat keys share one hash tag so that, on Cluster, the index and the
heartbeats live in one slot: a heartbeat is one MULTI/EXEC and the active-worker
read is one MGET. Result keys carry no tag and spread over the cluster.

Waiting (``wait_for_result``) is pushed, not polled: the store script PUBLISHes the task
id in the same atomic step that writes a terminal state, and the shared Listener
(waiting.py) keeps ONE subscribed connection per backend (listener.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript

from chicory_backends import coalesce
from chicory_backends.base import Backend, check_heartbeat_ttl
from chicory_backends.coalesce import Coalescer
from chicory_backends.codec import (
    check_task_id,
    decode_document,
    decode_stats,
    encode_document,
    encode_stats,
)
from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import CorruptResultError, NotConnectedError
from chicory_backends.redis import listener as subscription
from chicory_backends.redis.connection import Client, Connector
from chicory_backends.redis.listener import PubSubRefused
from chicory_backends.types import (
    TERMINAL_STATES,
    BackendStatus,
    TaskResult,
    TaskState,
    WorkerStats,
)
from chicory_backends.waiting import (
    RECHECK_INTERVAL,
    Listener,
    OnLost,
    OnMessage,
    wait_for,
    woken_reads,
)

logger = logging.getLogger(__name__)

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


class RedisBackend(Backend):
    """Results and heartbeats on a single Redis node, a Sentinel-managed master or a Cluster.

    Concurrent writes go out together as one pipeline of store scripts, and concurrent
    ``get_result`` calls as one MGET (coalesce.py); a lone call is sent at once.
    """

    # While subscribed, a waiter still re-reads its result this often (give or take 10%),
    # in case its notification was never sent: a writer running an older version of this
    # library, an ACL that denies PUBLISH, a subscription left on a fenced-off node.
    recheck_interval: float = RECHECK_INTERVAL

    def __init__(self, config: RedisBackendConfig | None = None) -> None:
        self.config = config if config is not None else RedisBackendConfig()
        self._connector = Connector(self.config)
        self.mode = self._connector.mode
        self._address = self._connector.address
        prefix = self.config.key_prefix
        self._result_prefix = f"{prefix}:result:"
        self._workers_tag = f"{{{prefix}:workers}}"
        self._index_key = f"{self._workers_tag}:index"
        self._channel = f"{prefix}:done"
        self._ttl = str(self.config.result_ttl)
        self._client: Client | None = None
        self._store: AsyncScript | None = None
        self._connecting = asyncio.Lock()
        # Cluster nodes raise instead of waiting when their pool is full; this makes
        # bursts wait there too, as the blocking pool does on the other modes.
        self._slots: asyncio.Semaphore | None = None
        # The subscription that wakes waiters, made at the first wait; and why SUBSCRIBE
        # was refused, when it was (then waiting polls until the next connect()).
        self._listener: Listener | None = None
        self._listen_attempts = 0
        self._pubsub_refused: str | None = None
        self._publish_refused = False  # warned once that stores cannot announce results
        self._write_calls: Coalescer[tuple[str, list[Any]], None] = coalesce.writes(
            self._store_one, self._store_batch
        )
        # Looked up at each call, so a wrapped get_results (a test's, a tracer's) sees them.
        self._woken_read = woken_reads(lambda task_ids: self.get_results(task_ids))
        self._read_calls: Coalescer[str, TaskResult | None] = coalesce.reads(
            self._read_one, self._read_batch, lambda error: isinstance(error, CorruptResultError)
        )

    def __repr__(self) -> str:
        return f"RedisBackend(mode={self.mode!r}, address={self._address!r})"

    # -- connection -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool, prove the server answers, and load the Lua script once."""
        async with self._connecting:  # callers racing here share one pool
            if self._client is not None:
                return
            client = self._connector.client()
            try:
                async with self._io(client):
                    if isinstance(client, RedisCluster):
                        await client.initialize()
                    await client.script_load(_STORE_LUA)
            except BaseException:
                await self._connector.close(client)
                raise
            self._client = client
            self._store = client.register_script(_STORE_LUA)
            if isinstance(client, RedisCluster):
                self._slots = asyncio.Semaphore(self.config.max_connections)

    async def disconnect(self) -> None:
        await self._write_calls.drain()  # what was acknowledged-to-be is written first
        await self._read_calls.drain()
        client = self._client
        # _store stays: it is only a SHA and the script text, and a call already past
        # the connection check must not find it gone.
        self._client, self._slots = None, None
        listener, self._listener, self._pubsub_refused = self._listener, None, None
        if listener is not None:
            await listener.close()
        if client is not None:
            await self._connector.close(client)

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
                raise self._connector.exhausted() from None
        try:
            with self._connector.translated():
                yield client
        finally:
            if slots is not None:
                slots.release()

    # -- results ----------------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return self._result_prefix + check_task_id(task_id)

    async def _run_store(self, key: str, task_id: str, state: TaskState, doc: bytes) -> None:
        args = [state.value, doc, self._ttl, self._channel, task_id]
        await self._write_calls.submit(None, task_id, (key, args), len(doc))

    async def _store_one(self, _group: Hashable, call: tuple[str, list[Any]]) -> None:
        key, args = call
        async with self._io() as client:
            assert self._store is not None
            self._stored(await self._store(keys=[key], args=args, client=client))

    async def _store_batch(
        self, _group: Hashable, calls: list[tuple[str, list[Any]]]
    ) -> list[BaseException | None]:
        """Concurrent writes as one pipeline: one round trip, each script still atomic on
        its own key. A script the server refuses fails its own call only. Cluster
        pipelines split by node and cannot load scripts, so there the calls go at once,
        one script each."""
        assert self._store is not None
        store = self._store
        async with self._io() as client:
            if isinstance(client, RedisCluster):
                answers = await asyncio.gather(
                    *(store(keys=[key], args=args, client=client) for key, args in calls),
                    return_exceptions=True,
                )
            else:
                pipe = client.pipeline(transaction=False)
                for key, args in calls:
                    await store(keys=[key], args=args, client=pipe)
                answers = await pipe.execute(raise_on_error=False)
        outcomes: list[BaseException | None] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                outcomes.append(self._connector.refused(answer))
            else:
                self._stored(answer)
                outcomes.append(None)
        return outcomes

    def _stored(self, written: object) -> None:
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
        doc = encode_document(task_id, result, self.config.max_result_bytes)
        await self._run_store(key, task_id, TaskState(result.state), doc)

    async def get_result(self, task_id: str) -> TaskResult | None:
        self._result_key(task_id)  # an invalid id fails before any I/O
        return await self._read_calls.submit(None, task_id, task_id)

    async def _read_one(self, _group: Hashable, task_id: str) -> TaskResult | None:
        async with self._io() as client:  # the id was checked by get_result
            raw = await client.get(self._result_prefix + task_id)
        return None if raw is None else decode_document(task_id, raw)

    async def _read_batch(self, _group: Hashable, task_ids: list[str]) -> list[TaskResult | None]:
        found = await self._read_many(task_ids)
        return [found.get(task_id) for task_id in task_ids]

    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """One MGET (one per slot on Cluster); unknown or expired ids are absent."""
        return await self._read_many(task_ids)

    async def _read_many(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
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
            task_id: decode_document(task_id, raw)
            for task_id, raw in zip(ids, raws, strict=True)
            if raw is not None
        }

    async def delete_result(self, task_id: str) -> None:
        key = self._result_key(task_id)
        async with self._io() as client:
            await client.delete(key)

    # -- waiting ----------------------------------------------------------------------

    async def wait_for_result(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskResult | None:
        """Woken by the notification the store script publishes with a terminal state.

        Waiting is "subscribe, then read, then sleep" (waiting.wait_for). Ten thousand
        waiters share one subscribed connection; their reads go out together as MGETs on
        the ordinary pool. When the subscription is lost every waiter subscribes again
        and re-reads; when the server cannot be reached that raises
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
        started = loop.time()
        try:
            return await wait_for(
                self._result_listener(),
                task_id,
                self._woken_read,
                timeout,
                recheck_interval=self.recheck_interval,
            )
        except PubSubRefused as exc:
            if self._pubsub_refused is None:
                self._pubsub_refused = str(exc)
                logger.warning(
                    "redis at %s refused SUBSCRIBE (%s): waiting for results polls instead",
                    self._address,
                    exc,
                )
            remaining = None if timeout is None else max(0.0, started + timeout - loop.time())
            return await super().wait_for_result(task_id, remaining)

    def _result_listener(self) -> Listener:
        listener = self._listener
        if listener is None or listener.closed:
            listener = self._listener = Listener(
                self._listen,
                backend_name=type(self).__name__,
                ping_timeout=self.config.socket_timeout,
            )
        return listener

    async def _listen(self, on_message: OnMessage, on_lost: OnLost) -> Any:
        client = self._connector.listener_client(self._client, self._listen_attempts)
        self._listen_attempts += 1
        return await subscription.subscribe(
            self._connector, client, self._channel, on_message, on_lost
        )

    # -- heartbeats -------------------------------------------------------------------

    def _heartbeat_key(self, worker_id: str) -> str:
        return f"{self._workers_tag}:hb:{check_task_id(worker_id)}"

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        """The heartbeat expires by itself; the index entry records when, for the listing."""
        check_heartbeat_ttl(ttl)
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
            return BackendStatus(connected=False, error=self._connector.reason(exc))
        return BackendStatus(connected=True, latency_ms=(time.perf_counter() - started) * 1000)

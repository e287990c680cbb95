"""RedisBackend: one JSON document per task, guarded by one Lua script.

Layout (``P`` is ``config.key_prefix``)::

    P:result:<task_id>         JSON document of the task (codec.encode_document): "state",
                               "result" (JSON text), "error", "traceback", and the
                               history: "name", "queue", "worker_id", "attempts", "args"
                               (JSON text), the times "enqueued_at", "started_at",
                               "finished_at", "created_at", "updated_at" (ISO-8601 text)
    P:history                  sorted set: task id -> created_at in integer microseconds
                               since the epoch, the newest ``history_size`` tasks
    {P:workers}:hb:<worker_id> WorkerStats JSON, expires with the heartbeat TTL
    {P:workers}:index          sorted set: worker id -> heartbeat expiry (epoch seconds)
    P:done                     pub/sub channel: the task id, each time a terminal state is written
    P:state:<task_id>          Chicory 0.1.0's own: the bare state its set_state writes
    P:heartbeat:<worker_id>    Chicory 0.1.0's own heartbeats (WorkerStats JSON), listed in
    P:workers                  the set of its worker ids (same slot as {P:workers}:index)

The heartbeat keys share one hash tag so that, on Cluster, the index and the
heartbeats live in one slot: a heartbeat is one MULTI/EXEC and the active-worker
read is one MGET. Result keys carry no tag and spread over the cluster.

Waiting (``wait_for_result``) is pushed, not polled: the store script PUBLISHes the task
id in the same atomic step that writes a terminal state, and the shared Listener
(waiting.py) keeps ONE subscribed connection per backend (listener.py).

History (``get_task``, ``list_tasks``, ``task_summary``). Every write merges into the
task's document by the rules of the SQL backends (the store script, store.lua).
``get_task`` is one GET. ``list_tasks`` and ``task_summary`` read the recent-history
index ``P:history``, so they reach back over the newest ``history_size`` tasks (default
100,000; 0 = no index, and both find nothing) and, of those, only the ones whose result
key still lives: a result expires ``result_ttl`` seconds after its last write, and then
leaves the history too. Filters other than the time window are applied while walking
the index newest first, so a filter that matches few of the indexed tasks reads many
documents. What the index costs: ``MEMORY USAGE`` of ``P:history`` with 100,000 members
(Redis 7.0, skiplist encoding) is 13.6 MB for uuid4 task ids, 136 bytes per entry (104
bytes for ~10-character ids); with the default ``history_size`` that is the most it
holds. The result documents are extra fields in keys that exist anyway.

The index entry is added by the store script, in the same atomic step as the write that
creates the document: no extra command on a single node or Sentinel. On Cluster the
index key is in another slot than the result keys, which a script cannot reach: there
every batch of writes sends ONE extra command alongside the store scripts
(index.lua: ZADD NX of each write's task, then the trim; a no-op for the tasks
already listed). On Cluster the entry's score is the time of the first write to reach
the index, which can differ by a little from ``created_at``
(writers racing, or a result written again after it expired); pages are ordered and
their cursors positioned by the score, so they stay exact.

Chicory 0.1.0's own RedisBackend writes ``chicory:result:<id>`` too (the same key with
the default prefix; it ignores its own key_prefix setting), holding the JSON of its
TaskResult, the value as plain JSON. Both shapes read exactly: a document with a
"task_id" key is Chicory-shaped (chicory_format.is_chicory_shaped). A task Chicory only
set_state'd has no document, only ``P:state:<id>``: get_result and get_task return
that state (no value, get_task without times), and a terminal state there beats a
non-terminal document of ours (a task our client enqueued and an old worker finished with
ignore_result). get_results on a single node or Sentinel reads both keys in one MGET;
get_result and get_task (one GET, as before) and Cluster read the state keys only for
tasks without a terminal document, as a second command. Chicory's writes
announce nothing on ``P:done``: waiters see them at their re-check. The history
(list_tasks, task_summary) lists only tasks in ``P:history``: a task Chicory alone wrote is
not there until a write of ours reaches it. Heartbeats: get_heartbeat, get_active_workers
(and cleanup_stale_clients) also see Chicory's, a worker alive while its key exists.

With ``write_chicory_format`` every write also serves Chicory's own client: the document
is Chicory-shaped (our fields plus "task_id", the value as plain JSON; see
chicory_format.chicory_shaped_document), and heartbeats are written to Chicory's key and
set too. ``P:state:<id>`` is not written: nothing in Chicory 0.1.0 reads it (only its
delete_result deletes it, as ours does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from chicory_backends import coalesce
from chicory_backends.base import Backend, check_heartbeat_ttl
from chicory_backends.chicory_format import (
    check_chicory_fields,
    chicory_record,
    chicory_result,
    chicory_shaped_document,
    is_chicory_shaped,
)
from chicory_backends.coalesce import Coalescer
from chicory_backends.codec import (
    UNKNOWN_TIME,
    check_task_id,
    decode_state,
    decode_stats,
    document_record,
    document_result,
    encode_document,
    encode_state_document,
    encode_stats,
    load_document,
)
from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import (
    BackendUnreachableError,
    CorruptResultError,
    NotConnectedError,
)
from chicory_backends.history import (
    HistoryQuery,
    Position,
    encode_cursor,
    summarize,
    write_fields,
)
from chicory_backends.redis import listener as subscription
from chicory_backends.redis.connection import Client
from chicory_backends.redis.listener import PubSubRefused
from chicory_backends.redis.scripts import CHICORY_SHAPED, OURS, Write, store_write
from chicory_backends.redis.topology import Link, topology_for
from chicory_backends.types import (
    BackendStatus,
    ProgressUpdate,
    QueueStatus,
    TaskDetails,
    TaskPage,
    TaskProgress,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    WorkerStats,
    WriteKind,
)
from chicory_backends.waiting import (
    RECHECK_INTERVAL,
    SWITCH_RECHECK_INTERVAL,
    Listener,
    OnLost,
    OnMessage,
    wait_for,
    woken_reads,
)

logger = logging.getLogger(__name__)

_MICROSECOND = timedelta(microseconds=1)

# Documents fetched per MGET when listing or summarising the history.
_SUMMARY_CHUNK = 1000


def _score_of(when: datetime) -> int:
    """A time as the index score: integer microseconds since the epoch (exact in a double)."""
    return (when - UNKNOWN_TIME) // _MICROSECOND


def _time_of(score: float) -> datetime:
    return UNKNOWN_TIME + timedelta(microseconds=int(score))


def _entries(members: Any) -> list[tuple[str, int]]:
    """(task id, score) from a WITHSCORES range: ids as text, scores as exact ints."""
    return [
        (member.decode() if isinstance(member, bytes) else str(member), int(score))
        for member, score in members
    ]


def _matches(record: TaskRecord, query: HistoryQuery) -> bool:
    return (
        (query.state is None or record.state is query.state)
        and (query.name is None or record.name == query.name)
        and (query.worker_id is None or record.worker_id == query.worker_id)
    )


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


def _decode_result(task_id: str, raw: bytes) -> TaskResult:
    """A stored document of either shape (chicory_format.is_chicory_shaped), the value
    exactly as stored; raises CorruptResultError."""
    doc = load_document(task_id, raw)
    if is_chicory_shaped(doc):
        return chicory_result(task_id, check_chicory_fields(task_id, doc))
    return document_result(task_id, doc)


def _decode_record(task_id: str, raw: bytes, *, whole: bool = True) -> TaskRecord:
    """``_decode_result`` as a TaskRecord (a Chicory document's times at UNKNOWN_TIME)."""
    doc = load_document(task_id, raw)
    if is_chicory_shaped(doc):
        return chicory_record(task_id, doc, whole=whole)
    return document_record(task_id, doc, whole=whole)


def _bare_result(task_id: str, state: TaskState) -> TaskResult:
    return TaskResult(task_id=task_id, state=state)


def _bare_record(task_id: str, state: TaskState) -> TaskRecord:
    return TaskRecord(
        task_id=task_id, state=state, created_at=UNKNOWN_TIME, updated_at=UNKNOWN_TIME
    )


_Doc = TypeVar("_Doc", TaskResult, TaskRecord)


def _settle(
    task_id: str,
    found: _Doc | None,
    chicory_state: bytes | None,
    bare: Callable[[str, TaskState], _Doc],
) -> _Doc | None:
    """A task as read from its document and Chicory's ``P:state:<id>`` beside it: the
    document, unless there is none or it is not terminal while Chicory's state is; then
    Chicory's state alone (``bare``), keeping the history of a document of ours.
    Raises CorruptResultError for a state Chicory does not have."""
    if chicory_state is None or (found is not None and found.state.is_terminal):
        return found
    state = decode_state(task_id, _text(chicory_state))
    if found is None:
        return bare(task_id, state)
    if not state.is_terminal:
        return found
    cleared = {"state": state, "result": None, "error": None, "traceback": None}
    return found.model_copy(update=cleared)


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
        if self.config.write_chicory_format:  # Chicory's own workers store without PUBLISH
            self.recheck_interval = SWITCH_RECHECK_INTERVAL
        # Single node, Sentinel or Cluster: everything that differs between them.
        self._topology = topology_for(self.config)
        self._connector = self._topology.connector
        self.mode = self._topology.mode
        self._address = self._connector.address
        prefix = self.config.key_prefix
        self._result_prefix = f"{prefix}:result:"
        self._workers_tag = f"{{{prefix}:workers}}"
        self._index_key = f"{self._workers_tag}:index"
        self._channel = f"{prefix}:done"
        self._history_key = f"{prefix}:history"
        self._history_size = self.config.history_size
        # Chicory 0.1.0's own keys (with prefix "chicory", which it always uses).
        self._state_prefix = f"{prefix}:state:"
        self._chicory_heartbeat_prefix = f"{prefix}:heartbeat:"
        self._chicory_workers = f"{prefix}:workers"
        self._chicory_format = self.config.write_chicory_format
        if self._chicory_format and prefix != "chicory":
            logger.warning(
                "write_chicory_format is on with key_prefix=%r: Chicory 0.1.0's own clients "
                "read only the prefix 'chicory', so they will not see these writes",
                prefix,
            )
        self._ttl = str(self.config.result_ttl)
        self._shape = CHICORY_SHAPED if self._chicory_format else OURS
        # The client, its scripts and its gate, from connect() to disconnect().
        self._link: Link | None = None
        self._connecting = asyncio.Lock()
        # The subscription that wakes waiters, made at the first wait; and why SUBSCRIBE
        # was refused, when it was (then waiting polls until the next connect()).
        self._listener: Listener | None = None
        self._listen_attempts = 0
        self._pubsub_refused: str | None = None
        self._publish_refused = False  # warned once that stores cannot announce results
        self._write_calls: Coalescer[Write, None] = coalesce.writes(
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
        """Open the pool, prove the server answers, and load the Lua scripts once."""
        async with self._connecting:  # callers racing here share one pool
            if self._link is None:
                self._link = await self._topology.open(self._history_key, self._history_size)

    async def disconnect(self) -> None:
        await self._write_calls.drain()  # what was acknowledged-to-be is written first
        await self._read_calls.drain()
        # A call already past the connection check keeps the link it was lent.
        link, self._link = self._link, None
        listener, self._listener, self._pubsub_refused = self._listener, None, None
        if listener is not None:
            await listener.close()
        if link is not None:
            await self._topology.close(link.client)

    @property
    def _client(self) -> Client | None:
        """The pooled client while connected (for tests and tools that look inside)."""
        link = self._link
        return None if link is None else link.client

    @asynccontextmanager
    async def _io(self) -> AsyncIterator[Link]:
        """Lend the link for one operation and turn every driver error into ours. Where
        the link has a gate (Cluster), the operation first takes a slot of it."""
        link = self._link
        if link is None:
            raise NotConnectedError("RedisBackend")
        gate = link.gate
        if gate is not None:
            try:
                async with asyncio.timeout(self.config.pool_timeout):
                    await gate.acquire()
            except TimeoutError:
                raise self._connector.exhausted() from None
        try:
            with self._connector.translated():
                yield link
        finally:
            if gate is not None:
                gate.release()

    # -- results ----------------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return self._result_prefix + check_task_id(task_id)

    def _write(
        self, key: str, task_id: str, state: TaskState, kind: WriteKind, doc: bytes, now: datetime
    ) -> Write:
        """A write's store.lua call, which the topology sends."""
        return store_write(
            key=key,
            state=state,
            document=doc,
            ttl=self._ttl,
            channel=self._channel,
            task_id=task_id,
            kind=kind,
            score=_score_of(now),
            history_size=self._history_size,
            shape=self._shape,
        )

    async def _store_one(self, _group: Hashable, write: Write) -> None:
        async with self._io() as link:
            self._stored(await self._topology.store_one(link, write))

    async def _store_batch(
        self, _group: Hashable, writes: list[Write]
    ) -> list[BaseException | None]:
        """Concurrent writes sent together (``Topology.store_many``); a write the server
        refuses fails alone."""
        async with self._io() as link:
            answers = await self._topology.store_many(link, writes)
        outcomes: list[BaseException | None] = []
        for answer in answers:
            if isinstance(answer, BackendUnreachableError):
                outcomes.append(answer)
            elif isinstance(answer, BaseException):
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

    async def set_state(
        self, task_id: str, state: TaskState, details: TaskDetails | None = None
    ) -> None:
        """Change the state and the history fields, keeping result, error and traceback;
        refused when it would replace a terminal state or a newer attempt's write.

        A terminal state wakes the waiters of the task, here and in every other process.
        """
        key = self._result_key(task_id)
        state = TaskState(state)
        now = datetime.now(UTC)
        history = self._history_fields(task_id, state, details, now)
        doc = encode_state_document(task_id, state, history)
        if self._chicory_format:
            doc = chicory_shaped_document(task_id, doc)
        await self._write_calls.submit(
            None, task_id, self._write(key, task_id, state, WriteKind.STATE, doc, now), len(doc)
        )

    async def store_result(
        self, task_id: str, result: TaskResult, details: TaskDetails | None = None
    ) -> None:
        """Write state, result, error, traceback and the history fields together, with
        the result TTL.

        A terminal state wakes the waiters of the task, here and in every other process.
        """
        key = self._result_key(task_id)
        state = TaskState(result.state)
        now = datetime.now(UTC)
        history = self._history_fields(task_id, state, details, now)
        doc = encode_document(task_id, result, self.config.max_result_bytes, history)
        if self._chicory_format:
            doc = chicory_shaped_document(task_id, doc)
        await self._write_calls.submit(
            None, task_id, self._write(key, task_id, state, WriteKind.RESULT, doc, now), len(doc)
        )

    @staticmethod
    def _history_fields(
        task_id: str, state: TaskState, details: TaskDetails | None, now: datetime
    ) -> dict[str, Any]:
        return {
            **write_fields(task_id, state, details, now),
            "created_at": now,
            "updated_at": now,
        }

    async def get_result(self, task_id: str) -> TaskResult | None:
        self._result_key(task_id)  # an invalid id fails before any I/O
        return await self._read_calls.submit(None, task_id, task_id)

    async def _read_one(self, _group: Hashable, task_id: str) -> TaskResult | None:
        # the id was checked by get_result
        (found,) = await self._documents([task_id], _decode_result, _bare_result)
        return found

    async def _read_batch(self, _group: Hashable, task_ids: list[str]) -> list[TaskResult | None]:
        found = await self._read_many(task_ids)
        return [found.get(task_id) for task_id in task_ids]

    async def get_results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """One MGET of every task's document and Chicory's state key (on Cluster: of the
        documents per slot, then of the state keys of the tasks without a terminal
        document); unknown or expired ids are absent."""
        return await self._read_many(task_ids)

    async def _read_many(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        ids = list(dict.fromkeys(task_ids))
        for task_id in ids:
            check_task_id(task_id)
        if not ids:
            return {}
        found = await self._documents(ids, _decode_result, _bare_result)
        return {task_id: item for task_id, item in zip(ids, found, strict=True) if item is not None}

    async def _documents(
        self,
        task_ids: list[str],
        decode: Callable[[str, bytes], _Doc],
        bare: Callable[[str, TaskState], _Doc],
    ) -> list[_Doc | None]:
        """Each task as stored (``decode`` of its document), settled with Chicory's state
        key beside it (``_settle``); None when neither exists. Several tasks on a single
        node or Sentinel: one MGET of both keys of every task. One task (get_result,
        get_task: the GET it always was, so a finished task costs what it did) and
        Cluster (one MGET per slot): the documents first, then, only when some task has
        no terminal document, the state keys of those. Raises CorruptResultError for a
        document or state that does not decode."""
        count = len(task_ids)
        keys: list[str] = [self._result_prefix + task_id for task_id in task_ids]
        state_keys: list[str] = [self._state_prefix + task_id for task_id in task_ids]
        raws: list[Any]
        states: list[Any] | None
        async with self._io() as link:
            if count == 1:
                raws, states = [await link.client.get(keys[0])], None
            else:
                raws, states = await self._topology.mget_with(link.client, keys, state_keys)
        found = [
            None if raw is None else decode(task_id, raw)
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]
        if states is None:  # one task, or Cluster: the state keys only where they can matter
            states = [None] * count
            wanted = [
                i for i, item in enumerate(found) if item is None or not item.state.is_terminal
            ]
            if wanted:
                async with self._io() as link:
                    got = await self._topology.mget(link.client, [state_keys[i] for i in wanted])
                for i, raw in zip(wanted, got, strict=True):
                    states[i] = raw
                await self._reread_finished(task_ids, keys, found, states, decode)
        return [
            _settle(task_id, item, state, bare)
            for task_id, item, state in zip(task_ids, found, states, strict=True)
        ]

    async def _reread_finished(
        self,
        task_ids: list[str],
        keys: list[str],
        found: list[_Doc | None],
        states: list[Any],
        decode: Callable[[str, bytes], _Doc],
    ) -> None:
        """Read again the documents of tasks whose Chicory state, read after them, is
        terminal: Chicory's worker writes that state and its document in one MULTI, so a
        terminal state read after a missing (or unfinished) document means the document
        came in between, and the second read has it. Without this the task would read as
        finished with no value (a torn read)."""
        again = [
            i
            for i, raw in enumerate(states)
            if raw is not None
            and decode_state(task_ids[i], _text(raw)).is_terminal
            and (found[i] is None or not found[i].state.is_terminal)  # type: ignore[union-attr]
        ]
        if not again:
            return
        async with self._io() as link:
            raws = await self._topology.mget(link.client, [keys[i] for i in again])
        for i, raw in zip(again, raws, strict=True):
            if raw is not None:
                found[i] = decode(task_ids[i], raw)

    async def delete_result(self, task_id: str) -> None:
        """Deletes the document and Chicory's state key beside it."""
        key = self._result_key(task_id)
        async with self._io() as link:
            await link.client.delete(key, self._state_prefix + task_id)

    # -- history ----------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The whole document, result and arguments decoded, read as ``get_result`` reads
        it: one GET, and Chicory's state key only when that finds no terminal document
        (``_documents``)."""
        self._result_key(task_id)  # an invalid id fails before any I/O
        (found,) = await self._documents([task_id], _decode_record, _bare_record)
        return found

    async def query_tasks(self, query: HistoryQuery) -> TaskPage:
        """The history index newest first, in chunks (ZREVRANGEBYSCORE .. LIMIT, then one
        MGET of the chunk's documents), filtered here, until ``limit + 1`` match or the
        index ends. Expired documents are left out. A position is the index score and
        the task id: equal scores come in reverse byte order of the ids, which is the
        page order (created_at, task_id descending)."""
        chunk = max(2 * query.limit, 100)
        # The walk: scores at most ``high`` (below it when exclusive), skipping ``offset``
        # members of score ``high`` already seen, and at the cursor's score the ids at
        # or after the cursor's.
        high: int | None = None
        exclusive = False
        skip_from: str | None = None
        if query.until is not None:
            high, exclusive = _score_of(query.until), True
        after = query.after
        if after is not None:
            at = _score_of(after.created_at)
            if high is None or at < high or (at == high and not exclusive):
                high, exclusive, skip_from = at, False, after.task_id
            # else the cursor lies beyond ``until``: the window's bound is the tighter one
        low = "-inf" if query.since is None else str(_score_of(query.since))
        offset = 0
        matched: list[tuple[TaskRecord, int]] = []
        while len(matched) <= query.limit:
            top = "+inf" if high is None else f"({high}" if exclusive else str(high)
            async with self._io() as link:
                members = await link.client.zrevrangebyscore(
                    self._history_key, top, low, start=offset, num=chunk, withscores=True
                )
            if not members:
                break
            entries = _entries(members)
            candidates = [
                entry
                for entry in entries
                if not (skip_from is not None and entry[1] == high and entry[0] >= skip_from)
            ]
            for record, score in await self._records(candidates, whole=False):
                if _matches(record, query):
                    matched.append((record, score))
                    if len(matched) > query.limit:
                        break
            if len(members) < chunk:
                break
            last_score = entries[-1][1]
            if last_score == high and not exclusive:
                offset += len(entries)
            else:
                high, exclusive = last_score, False
                offset = sum(1 for _member, score in entries if score == last_score)
                skip_from = None
        items = [record for record, _score in matched[: query.limit]]
        next_cursor = None
        if len(matched) > query.limit:
            last, score = matched[query.limit - 1]
            next_cursor = encode_cursor(Position(_time_of(score), last.task_id))
        return TaskPage(items=items, next_cursor=next_cursor)

    # -- issue 23: placeholders until the queue views land (replaced, not kept) ---------

    async def queue_status(self) -> list[QueueStatus]:
        raise NotImplementedError("queue_status: issue 23 in progress")

    async def orphaned_tasks(self, limit: int) -> list[TaskRecord]:
        raise NotImplementedError("orphaned_tasks: issue 23 in progress")

    async def fail_orphan(self, task_id: str, worker_id: str) -> bool:
        raise NotImplementedError("fail_orphan: issue 23 in progress")

    async def store_progress(self, task_id: str, update: ProgressUpdate) -> bool:
        raise NotImplementedError("store_progress: issue 23 in progress")

    async def get_progress(self, task_id: str) -> TaskProgress | None:
        raise NotImplementedError("get_progress: issue 23 in progress")

    async def summarize_tasks(
        self, since: datetime | None, until: datetime | None
    ) -> list[TaskSummary]:
        """ZRANGEBYSCORE of the window on the history index, the documents by MGETs of
        a thousand, and the summary built here (history.summarize)."""
        low = "-inf" if since is None else str(_score_of(since))
        high = "+inf" if until is None else f"({_score_of(until)}"
        async with self._io() as link:
            members = await link.client.zrangebyscore(self._history_key, low, high, withscores=True)
        entries = _entries(members)
        records: list[TaskRecord] = []
        for start in range(0, len(entries), _SUMMARY_CHUNK):
            found = await self._records(entries[start : start + _SUMMARY_CHUNK], whole=False)
            records.extend(record for record, _ in found)
        return summarize(records)

    async def _records(
        self, entries: list[tuple[str, int]], *, whole: bool
    ) -> list[tuple[TaskRecord, int]]:
        """The records of index entries (task id, score) in their order, by one MGET (one
        per slot on Cluster); entries whose document expired or was deleted are left out."""
        if not entries:
            return []
        keys = [self._result_prefix + task_id for task_id, _score in entries]
        async with self._io() as link:
            raws = await self._topology.mget(link.client, keys)
        return [
            (_decode_record(task_id, raw, whole=whole), score)
            for (task_id, score), raw in zip(entries, raws, strict=True)
            if raw is not None
        ]

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
        link = self._link
        if link is None:
            raise NotConnectedError("RedisBackend")
        client = self._topology.listener_client(link.client, self._listen_attempts)
        self._listen_attempts += 1
        return await subscription.subscribe(
            self._connector, client, self._channel, on_message, on_lost
        )

    # -- heartbeats -------------------------------------------------------------------

    def _heartbeat_key(self, worker_id: str) -> str:
        return f"{self._workers_tag}:hb:{check_task_id(worker_id)}"

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        """The heartbeat expires by itself; the index entry records when, for the listing.
        With write_chicory_format, first Chicory's heartbeat key (another slot on Cluster:
        a command of its own), then its worker set in our transaction (the set ``P:workers``
        hashes to the slot of ``{P:workers}``)."""
        check_heartbeat_ttl(ttl)
        key = self._heartbeat_key(worker_id)
        payload = encode_stats(stats)
        async with self._io() as link:
            client = link.client
            if self._chicory_format:
                await client.set(self._chicory_heartbeat_prefix + worker_id, payload, ex=ttl)
            pipe = client.pipeline(transaction=True)
            pipe.set(key, payload, ex=ttl)
            pipe.zadd(self._index_key, {worker_id: time.time() + ttl})
            if self._chicory_format:
                pipe.sadd(self._chicory_workers, worker_id)
            await pipe.execute()

    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None:
        """Ours, else Chicory's (one MGET; per slot on Cluster)."""
        keys = [self._heartbeat_key(worker_id), self._chicory_heartbeat_prefix + worker_id]
        async with self._io() as link:
            ours, chicorys = await self._topology.mget(link.client, keys)
        raw = ours if ours is not None else chicorys
        return None if raw is None else decode_stats(worker_id, raw)

    async def get_active_workers(self) -> list[WorkerStats]:
        """One pipeline for the unexpired index entries and Chicory's worker set (one
        slot), one MGET for their heartbeats: ours, then those of Chicory's workers that
        are not ours and whose key still exists."""
        async with self._io() as link:
            pipe = link.client.pipeline(transaction=False)
            pipe.zrangebyscore(self._index_key, f"({time.time()!r}", "+inf")
            pipe.smembers(self._chicory_workers)
            members, chicory_members = await pipe.execute()
            ids = [_text(m) for m in members]
            chicory_ids = sorted({_text(m) for m in chicory_members}.difference(ids))
            if not ids and not chicory_ids:
                return []
            keys = [self._heartbeat_key(w) for w in ids]
            keys += [self._chicory_heartbeat_prefix + w for w in chicory_ids]
            raws = await self._topology.mget(link.client, keys)
        # A heartbeat that expired after the range read is simply left out.
        workers = [*ids, *chicory_ids]
        return [
            decode_stats(w, raw) for w, raw in zip(workers, raws, strict=True) if raw is not None
        ]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Drop index entries whose heartbeat expired over ``stale_seconds`` ago, and (as
        Chicory's own cleanup does, whatever ``stale_seconds``) the members of Chicory's
        worker set whose heartbeat key is gone. Returns how many were dropped."""
        cutoff = time.time() - stale_seconds
        async with self._io() as link:
            client = link.client
            pipe = client.pipeline(transaction=False)
            pipe.zremrangebyscore(self._index_key, "-inf", f"({cutoff!r}")
            pipe.smembers(self._chicory_workers)
            removed, members = await pipe.execute()
            chicory_ids = [_text(m) for m in members]
            if chicory_ids:
                keys = [self._chicory_heartbeat_prefix + w for w in chicory_ids]
                raws = await self._topology.mget(client, keys)
                gone = [w for w, raw in zip(chicory_ids, raws, strict=True) if raw is None]
                if gone:
                    removed += await client.srem(self._chicory_workers, *gone)
        return int(removed)

    async def healthcheck(self) -> BackendStatus:
        """PING round trip; reports a failure instead of raising it."""
        started = time.perf_counter()
        try:
            async with self._io() as link:
                await link.client.ping()
        except Exception as exc:
            return BackendStatus(connected=False, error=self._connector.reason(exc))
        return BackendStatus(connected=True, latency_ms=(time.perf_counter() - started) * 1000)

"""Group commit: calls that arrive while the backend is busy go to the server together.

A worker at Chicory's default concurrency (32) has dozens of ``set_state``,
``store_result`` and ``get_result`` calls in flight. Sent one by one they cost a pooled
connection and a commit each; the server then spends its time on commits and the pool on
connections. A :class:`Coalescer` sends a lone call at once, on the caller's own task
(no added latency when nothing else is pending), and gathers every call that arrives
while ``max_in_flight`` sends are already running into one batch (one statement, one
round trip, one commit), sent as soon as a send finishes.

The rules it keeps, whatever the backend:

- a call returns only once its own batch is done (durability unchanged);
- with ``exclusive`` keys (writes), two calls on one key never share a batch or run at
  once, and a later call on a key never overtakes an earlier one, so the outcome equals
  applying the calls one by one in call order; calls on different keys touch different
  rows, and their relative order cannot show;
- a batch the server refuses as a whole for a reason that may belong to one row
  (``isolate``) is sent again one call at a time, so only that row's call fails; any
  other error fails every call of the batch: never a silent loss, never a hang;
- a caller cancelled while waiting only gives up its own wait: a call not yet sent is
  dropped, one already sent finishes for the others;
- at most ``max_calls`` calls and about ``max_bytes`` of payload per batch.

With ``linger``, nothing is sent at once: the calls of one event-loop turn are gathered
first. That suits the reads of waiters that one burst of notifications woke together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Call = TypeVar("Call")
Outcome = TypeVar("Outcome")

SendOne = Callable[[Hashable, Call], Awaitable[Outcome]]
# Answers one outcome per call, in order (an exception instance fails that call alone).
SendBatch = Callable[[Hashable, list[Call]], Awaitable[Sequence[Outcome | BaseException]]]


@dataclass(slots=True, eq=False)
class _Pending(Generic[Call, Outcome]):
    group: Hashable
    key: str
    call: Call
    size: int
    future: asyncio.Future[Outcome] = field(repr=False)


class Coalescer(Generic[Call, Outcome]):
    """Sends calls of one ``group`` (one statement shape) alone or in batches."""

    def __init__(
        self,
        send_one: SendOne[Call, Outcome],
        send_batch: SendBatch[Call, Outcome],
        *,
        exclusive: bool,
        max_in_flight: int = 1,
        max_calls: int = 500,
        max_bytes: int = 1 << 20,
        isolate: Callable[[BaseException], bool] = lambda _error: False,
        linger: bool = False,
    ) -> None:
        if max_in_flight < 1 or max_calls < 1:
            raise ValueError("max_in_flight and max_calls must be at least 1")
        self._send_one = send_one
        self._send_batch = send_batch
        self._exclusive = exclusive
        self._max_in_flight = max_in_flight
        self._max_calls = max_calls
        self._max_bytes = max_bytes
        self._isolate = isolate
        self._linger = linger
        self._scheduled = False  # a lingering pump is due at the end of this loop turn
        self._pending: list[_Pending[Call, Outcome]] = []
        self._busy_keys: set[str] = set()  # keys being sent (exclusive mode only)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: list[asyncio.Future[None]] = []  # drain() callers (no Event: loop-free)

    async def submit(self, group: Hashable, key: str, call: Call, size: int = 0) -> Outcome:
        if (
            self._in_flight < self._max_in_flight
            and not self._pending
            and key not in self._busy_keys
            and not self._linger
        ):
            return await self._send_alone(group, key, call)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append(_Pending(group, key, call, size, future))
        if not self._linger:
            self._pump()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pump_lingered)
        return await future

    def _pump_lingered(self) -> None:
        self._scheduled = False
        self._pump()

    async def drain(self) -> None:
        """Wait until every call submitted so far has been sent and answered."""
        while self._in_flight or self._pending:
            future = asyncio.get_running_loop().create_future()
            self._drained.append(future)
            await future

    async def _send_alone(self, group: Hashable, key: str, call: Call) -> Outcome:
        self._start([key])
        try:
            return await self._send_one(group, call)
        finally:
            self._finish([key])

    def _start(self, keys: list[str]) -> None:
        self._in_flight += 1
        if self._exclusive:
            self._busy_keys.update(keys)

    def _finish(self, keys: list[str]) -> None:
        self._in_flight -= 1
        if self._exclusive:
            self._busy_keys.difference_update(keys)
        self._pump()
        if not self._in_flight and not self._pending:
            drained, self._drained = self._drained, []
            for future in drained:
                if not future.done():
                    future.set_result(None)

    def _pump(self) -> None:
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._take()
            if not batch:
                return  # everything pending waits for a key that is being sent
            self._start([item.key for item in batch])
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending[Call, Outcome]]:
        """The oldest sendable call and every later one that may share its batch."""
        batch: list[_Pending[Call, Outcome]] = []
        kept: list[_Pending[Call, Outcome]] = []
        blocked = set(self._busy_keys)
        group: Hashable = None
        size = 0
        for item in self._pending:
            if item.future.done():  # its caller gave up before it was sent
                continue
            fits = (
                len(batch) < self._max_calls
                and (not batch or size + item.size <= self._max_bytes)
                and (group is None or item.group == group)
            )
            if not fits or (self._exclusive and item.key in blocked):
                kept.append(item)
                blocked.add(item.key)  # nothing later on this key may overtake it
                continue
            group = item.group
            size += item.size
            batch.append(item)
            blocked.add(item.key)
        self._pending = kept
        return batch

    async def _send(self, batch: list[_Pending[Call, Outcome]]) -> None:
        try:
            outcomes = await self._outcomes(batch)
        except BaseException as error:  # the backend went away, or the loop is closing
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for item, outcome in zip(batch, outcomes, strict=True):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
        finally:
            for item in batch:  # a waiter cancelled meanwhile must not log "never retrieved"
                if item.future.done() and not item.future.cancelled():
                    item.future.exception()
            self._finish([item.key for item in batch])

    async def _outcomes(
        self, batch: list[_Pending[Call, Outcome]]
    ) -> Sequence[Outcome | BaseException]:
        group = batch[0].group
        if len(batch) == 1:
            return [await self._send_one(group, batch[0].call)]
        try:
            return await self._send_batch(group, [item.call for item in batch])
        except Exception as error:
            if not self._isolate(error):
                raise
        # One call of the batch may be at fault: find it by sending them one at a time.
        outcomes: list[Any] = []
        for item in batch:
            try:
                outcomes.append(await self._send_one(group, item.call))
            except Exception as error:
                outcomes.append(error)
        return outcomes


# The tuning both backends share. One write batch at the server at once: a call that
# finds one in flight waits for it and goes with everything that arrived meanwhile (group
# commit); measured with the real worker (python -m bench e2e), one beats two and four,
# whose smaller batches cost the worker more round trips and the server more commits.
# Reads are cheap on the server: two may overlap.
WRITE_SENDS = 1
READ_SENDS = 2
MAX_BATCH_CALLS = 500  # well under every driver's parameter limit for one statement
MAX_BATCH_BYTES = 1 << 20  # results, errors and tracebacks of one write batch


def writes(
    send_one: SendOne[Call, None],
    send_batch: SendBatch[Call, None],
    isolate: Callable[[BaseException], bool] = lambda _error: False,
) -> Coalescer[Call, None]:
    """A backend's writes: one task id never twice in a batch, never overtaken."""
    return Coalescer(
        send_one,
        send_batch,
        exclusive=True,
        max_in_flight=WRITE_SENDS,
        max_calls=MAX_BATCH_CALLS,
        max_bytes=MAX_BATCH_BYTES,
        isolate=isolate,
    )


def reads(
    send_one: SendOne[str, Outcome],
    send_batch: SendBatch[str, Outcome],
    isolate: Callable[[BaseException], bool] = lambda _error: False,
) -> Coalescer[str, Outcome]:
    """A backend's ``get_result`` calls: ids read together, one id as often as asked."""
    return Coalescer(
        send_one,
        send_batch,
        exclusive=False,
        max_in_flight=READ_SENDS,
        max_calls=MAX_BATCH_CALLS,
        isolate=isolate,
    )

"""Driver-free pieces of waiting for results, shared by the backends that push wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from chicory_backends.errors import CorruptResultError
from chicory_backends.types import TaskResult

FetchMany = Callable[[list[str]], Awaitable[dict[str, TaskResult]]]


class ReadBatcher:
    """Coalesces the reads of many concurrent waiters into few ``get_results`` calls.

    Reads asked for in the same event-loop turn go out together, ``max_batch`` ids per
    statement: ten thousand waiters woken at once cost ten round trips, not ten thousand.
    """

    def __init__(self, fetch: FetchMany, max_batch: int = 1000) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._pending: dict[str, list[asyncio.Future[TaskResult | None]]] = {}
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def get(self, task_id: str) -> TaskResult | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskResult | None] = loop.create_future()
        self._pending.setdefault(task_id, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        self._scheduled = False
        ids = list(pending)
        loop = asyncio.get_running_loop()
        for start in range(0, len(ids), self._max_batch):
            chunk = {task_id: pending[task_id] for task_id in ids[start : start + self._max_batch]}
            task = loop.create_task(self._read(chunk))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _read(self, chunk: dict[str, list[asyncio.Future[TaskResult | None]]]) -> None:
        # Waiters that timed out meanwhile need no read.
        chunk = {task_id: fs for task_id, fs in chunk.items() if not all(f.done() for f in fs)}
        if not chunk:
            return
        try:
            found = await self._fetch(list(chunk))
        except CorruptResultError as error:
            if len(chunk) > 1:  # one bad row must fail only its own waiters: read one by one
                await asyncio.gather(*(self._read({key: fs}) for key, fs in chunk.items()))
            else:
                _fail(chunk, error)
            return
        except Exception as error:
            _fail(chunk, error)
            return
        except BaseException:
            for future in _flatten(chunk.values()):
                future.cancel()
            raise
        for task_id, futures in chunk.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(task_id))


def _fail(chunk: dict[str, list[asyncio.Future[TaskResult | None]]], error: Exception) -> None:
    for future in _flatten(chunk.values()):
        if not future.done():
            future.set_exception(error)


def _flatten(
    groups: Iterable[list[asyncio.Future[TaskResult | None]]],
) -> Iterable[asyncio.Future[TaskResult | None]]:
    for group in groups:
        yield from group

"""Live updates: server-sent events pushed when the newest task changes.

One poller per application (not one per open page) asks the backend for the newest
task (``list_tasks(limit=1)``) every ``interval`` seconds while anyone listens, and
wakes every listener when it changed: a new task, or the newest one moving on to
another state. A poll works on every backend alike; it is one indexed read a second,
whoever is watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from functools import partial

from chicory_backends.types import TaskRecord
from chicory_backends.web.metrics import TimedBackend

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0


def signature(newest: TaskRecord | None) -> str:
    """A short fingerprint of the newest task (its id, state and last write), which a page
    carries so that its event stream can tell at once whether it missed a change."""
    if newest is None:
        return "none"
    seen = f"{newest.task_id}\x00{newest.state.value}\x00{newest.updated_at.isoformat()}"
    return hashlib.sha256(seen.encode()).hexdigest()[:16]


class NewestTaskWatcher:
    def __init__(self, ops: TimedBackend, interval: float = 1.0) -> None:
        self.ops = ops
        self.interval = interval
        self.version = 0
        self.signature: str | None = None
        self._listeners = 0
        self._changed: asyncio.Condition | None = None
        self._primed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
            self._primed = asyncio.Event()
        return self._changed

    async def current(self) -> str:
        """The signature of the newest task now (for a page to carry)."""
        page = await self.ops.list_tasks(limit=1)
        return signature(page.items[0] if page.items else None)

    async def _poll(self) -> None:
        changed = self._condition()
        assert self._primed is not None
        while self._listeners > 0 and not self._closed:
            try:
                now = await self.current()
            except Exception:  # the backend is down for a moment: try again next time
                log.warning("dashboard: polling for the newest task failed", exc_info=True)
            else:
                if now != self.signature:
                    self.signature = now
                    self.version += 1
                    async with changed:
                        changed.notify_all()
                self._primed.set()
            await asyncio.sleep(self.interval)

    async def events(self, since: str | None = None) -> AsyncIterator[str]:
        """The text of a ``text/event-stream``: ``event: tasks`` on each change, and at
        once if the newest task is no longer the one of ``since`` (the page's signature)."""
        changed = self._condition()
        assert self._primed is not None
        self._listeners += 1
        if self._task is None or self._task.done():
            self._primed.clear()
            self._task = asyncio.create_task(self._poll())
        try:
            yield "retry: 2000\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._primed.wait(), KEEPALIVE_SECONDS)
            known = self.version
            if since is not None and self.signature is not None and since != self.signature:
                yield _event(known)
            while not self._closed:
                with contextlib.suppress(TimeoutError):
                    async with changed:
                        await asyncio.wait_for(
                            changed.wait_for(partial(self._moved, known)), KEEPALIVE_SECONDS
                        )
                if self._closed:
                    break
                if self.version != known:
                    known = self.version
                    yield _event(known)
                else:
                    yield ": keep-alive\n\n"
        finally:
            self._listeners -= 1

    def _moved(self, known: int) -> bool:
        return self.version != known or self._closed

    async def close(self) -> None:
        """Stop the poller and end every stream (the application's shutdown)."""
        self._closed = True
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _event(version: int) -> str:
    return f"event: tasks\ndata: {json.dumps({'version': version})}\n\n"

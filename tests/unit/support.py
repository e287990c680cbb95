"""Small tools shared by the unit tests: event-loop turns and gates, no wall-clock time."""

from __future__ import annotations

import asyncio


async def settle(turns: int = 20) -> None:
    """Let every task that can run, run: a few event-loop turns."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Gate:
    """Holds the fake sends back until the test opens it (a fake server that is busy)."""

    def __init__(self, is_open: bool = True) -> None:
        self._event = asyncio.Event()
        if is_open:
            self._event.set()

    def open(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.clear()

    async def passed(self) -> None:
        await self._event.wait()

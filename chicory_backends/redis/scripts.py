"""The Lua scripts and the Python side of their interfaces.

``store.lua`` (one write: guard, merge, SET, history entry, PUBLISH) and ``index.lua``
(Cluster's history entries of a batch) are package data, read once at import; each
documents its KEYS and ARGV at the top, and the functions here build them in that
order. ``Scripts`` holds them registered on one client (``register_script``: the SHA
and the text, loaded again by redis-py after a SCRIPT FLUSH); which keys go with a
write is the topology's (topology.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from chicory_backends.redis.connection import Client
from chicory_backends.types import TaskState, WriteKind


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


STORE_LUA = _read("store.lua")
INDEX_LUA = _read("index.lua")

# store.lua ARGV[9]: the shape of the merged document.
CHICORY_SHAPED = "c"
OURS = ""


@dataclass(frozen=True, slots=True)
class Write:
    """One store.lua call as the coalescer carries it, before a topology sends it.

    ``args`` is store.lua's ARGV; its KEYS are ``key`` and, where the topology lets the
    script reach the history index, that index. ``entry`` is the write's index entry
    (task id, score), None when no history is kept.
    """

    key: str
    args: list[Any]
    entry: tuple[str, int] | None
    terminal: bool  # the written state is terminal (WAIT confirms only those)


def store_write(
    *,
    key: str,
    state: TaskState,
    document: bytes,
    ttl: str,
    channel: str,
    task_id: str,
    kind: WriteKind,
    score: int,
    history_size: int,
    shape: str,
) -> Write:
    """store.lua's call for one write, ARGV in the order the script documents."""
    args = [state.value, document, ttl, channel, task_id, kind, score, history_size, shape]
    entry = (task_id, score) if history_size else None
    return Write(key, args, entry, state.is_terminal)


def index_args(history_size: int, writes: list[Write]) -> list[Any]:
    """index.lua's ARGV for the writes that add an index entry: the size, then (task
    id, score) pairs. Only history size when none does."""
    return [history_size, *(part for write in writes if write.entry for part in write.entry)]


@dataclass(slots=True)
class Scripts:
    """The scripts registered on one client, and the history index they keep."""

    store: AsyncScript
    index: AsyncScript
    history_key: str
    history_size: int

    @classmethod
    def register(cls, client: Client, history_key: str, history_size: int) -> Scripts:
        return cls(
            client.register_script(STORE_LUA),
            client.register_script(INDEX_LUA),
            history_key,
            history_size,
        )

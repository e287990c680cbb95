"""The unit tier: the driver-free pieces, fed fake callables; no server, runs in seconds.

``pytest tests/unit`` runs it alone. The parent conftest is imported too (its helpers
only describe servers; nothing connects at import), and every test here fails loudly
if it tries to open a network connection, so a server can never creep in unnoticed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(_socket: socket.socket, address: Any, *_args: Any) -> Any:
        raise AssertionError(f"a unit test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield

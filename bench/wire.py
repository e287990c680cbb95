"""A loopback TCP proxy that counts client->server round trips on the wire.

PostgreSQL: every client ``Q`` (simple query) and every ``S`` (Sync, the end of one
extended-query exchange: Parse/Bind/Describe/Execute ... Sync) waits for the server's
ReadyForQuery, so each is one round trip; so does ``H`` (Flush), with which asyncpg ends
the Parse/Describe exchange of a statement it prepares (an uncached statement costs two).
MySQL/MariaDB: every client packet with sequence id 0 starts a new command (COM_QUERY,
COM_PING, COM_STMT_*...), so each is one round trip.
The counters see only the client->server direction; the other is forwarded untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from typing import Literal

Protocol = Literal["postgres", "mysql"]

_PG_SSL_REQUEST = 80877103
_PG_GSSENC_REQUEST = 80877104
_PG_CANCEL_REQUEST = 80877102

_MYSQL_COMMANDS = {
    0x01: "COM_QUIT",
    0x02: "COM_INIT_DB",
    0x03: "COM_QUERY",
    0x0E: "COM_PING",
    0x11: "COM_CHANGE_USER",
    0x16: "COM_STMT_PREPARE",
    0x17: "COM_STMT_EXECUTE",
    0x19: "COM_STMT_CLOSE",
    0x1A: "COM_STMT_RESET",
    0x1F: "COM_RESET_CONNECTION",
}


class _PostgresParser:
    """Splits the client stream into messages; counts their type bytes."""

    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts
        self._buffer = bytearray()
        self._started = False  # the untyped startup phase is over

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while True:
            if not self._started:
                if len(buf) < 8:
                    return
                length, code = struct.unpack_from("!ii", buf, 0)
                if len(buf) < length:
                    return
                del buf[:length]
                if code not in (_PG_SSL_REQUEST, _PG_GSSENC_REQUEST, _PG_CANCEL_REQUEST):
                    self._started = True  # the StartupMessage itself
                continue
            if len(buf) < 5:
                return
            (length,) = struct.unpack_from("!i", buf, 1)
            if len(buf) < 1 + length:
                return
            kind = chr(buf[0])
            del buf[: 1 + length]
            self._counts["msg:" + kind] += 1
            if kind in ("Q", "S", "H"):
                self._counts["round_trips"] += 1


class _MySQLParser:
    """Splits the client stream into packets; a sequence id of 0 starts a command."""

    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= 4:
            length = buf[0] | (buf[1] << 8) | (buf[2] << 16)
            if len(buf) < 4 + length:
                return
            sequence = buf[3]
            command = buf[4] if length else -1
            del buf[: 4 + length]
            if sequence == 0:
                self._counts["round_trips"] += 1
                self._counts[_MYSQL_COMMANDS.get(command, f"COM_0x{command:02x}")] += 1


class CountingProxy:
    """``async with CountingProxy("postgres", host, port) as proxy:`` then connect to
    ``proxy.port``; ``proxy.counts`` accumulates over every connection made through it."""

    def __init__(self, protocol: Protocol, host: str, port: int) -> None:
        self.protocol = protocol
        self.upstream = (host, port)
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def reset(self) -> None:
        self.counts.clear()

    @property
    def round_trips(self) -> int:
        return self.counts["round_trips"]

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        parser = (
            _PostgresParser(self.counts)
            if self.protocol == "postgres"
            else _MySQLParser(self.counts)
        )
        to_server = asyncio.create_task(self._pump(reader, up_writer, parser))
        to_client = asyncio.create_task(self._pump(up_reader, writer, None))
        self._tasks.update((to_server, to_client))
        try:
            await asyncio.wait((to_server, to_client), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_server, to_client):
                task.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.difference_update((to_server, to_client))

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: _PostgresParser | _MySQLParser | None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if parser is not None:
                    parser.feed(data)
                writer.write(data)
                await writer.drain()

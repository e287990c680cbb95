"""Redis's part of the shared Listener (waiting.py): a confirmed SUBSCRIBE on a connection
of its own, a reader that turns messages into wake-ups, and PING.

The store script PUBLISHes the task id in the same atomic step that writes a terminal
state. On Cluster this is a plain PUBLISH, which the cluster bus delivers to subscribers
on every node, so the subscription can sit on any node; SPUBLISH cannot be used because a
script may only touch its own slot and the result keys spread over all of them.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chicory_backends.redis.connection import Connector
from chicory_backends.waiting import OnLost, OnMessage

logger = logging.getLogger(__name__)

# CLIENT SETNAME of the subscribed connection, to tell it apart in CLIENT LIST.
LISTENER_CLIENT_NAME = "chicory-backends-listener"
_READ_SLICE = 1.0


class PubSubRefused(Exception):
    """The server (or a proxy, or the ACL) refuses SUBSCRIBE: waiting has to poll."""


class Subscription:
    """One subscribed connection; its reader wakes waiters and reports the loss."""

    def __init__(
        self, connector: Connector, client: Redis, pubsub: PubSub, on_message: OnMessage,
        on_lost: OnLost,
    ) -> None:  # fmt: skip
        self._connector = connector
        self._client = client
        self._pubsub = pubsub
        self._on_message = on_message
        self._on_lost = on_lost
        self._pongs: list[asyncio.Future[None]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def ping(self) -> None:
        """PING on the subscription; its PONG comes back through the reader."""
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        with self._connector.translated():
            await self._pubsub.ping()
        await pong

    async def close(self) -> None:
        if self._reader is not asyncio.current_task() and not self._reader.done():
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await _dispose(self._pubsub, self._client)

    async def _read(self) -> None:
        try:
            while True:
                # A bounded read, looped: ``timeout=None`` blocks forever only on newer
                # redis-py, and older ones would apply the socket timeout and fail.
                message = await self._pubsub.get_message(timeout=_READ_SLICE)
                if message is None:
                    continue
                if message["type"] == "message":
                    self._on_message(message["data"].decode("utf-8", "surrogatepass"))
                elif message["type"] == "pong":
                    if self._pongs:
                        pong = self._pongs.pop(0)
                        if not pong.done():
                            pong.set_result(None)
                else:  # an unsubscribe: we did not ask for it
                    raise RedisConnectionError(f"unexpected {message['type']} message")
        except asyncio.CancelledError:
            raise  # close() owns the connection now
        except Exception as exc:
            logger.info("redis result subscription lost: %s", self._connector.reason(exc))
        for pong in self._pongs:
            if not pong.done():
                pong.set_exception(RedisConnectionError("the subscription was lost"))
        self._on_lost()


async def subscribe(
    connector: Connector, client: Redis, channel: str, on_message: OnMessage, on_lost: OnLost
) -> Subscription:
    """SUBSCRIBE and wait for the server's confirmation: only then is a publish after
    our next read certain to reach us."""
    pubsub = client.pubsub()
    timeout = connector.config.socket_timeout
    try:
        with connector.translated():
            try:
                # Named for CLIENT LIST; on the pool's only connection, which the pub/sub
                # then takes. A user the ACL denies CLIENT SETNAME can still wait.
                with suppress(ResponseError):
                    await client.client_setname(LISTENER_CLIENT_NAME)
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(timeout=timeout)
                    if message is None:
                        raise RedisTimeoutError(f"no SUBSCRIBE confirmation within {timeout:g}s")
                    if message["type"] == "subscribe":
                        break
            except ResponseError as exc:  # NOPERM, or a proxy without pub/sub
                raise PubSubRefused(connector.reason(exc)) from None
    except BaseException:
        await _dispose(pubsub, client)
        raise
    return Subscription(connector, client, pubsub, on_message, on_lost)


async def _dispose(pubsub: PubSub | None, client: Redis | None) -> None:
    try:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        if client is not None:
            await client.aclose()
    except (RedisError, OSError):
        pass  # closing connections to a dead server has nothing to report

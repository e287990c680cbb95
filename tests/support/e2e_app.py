"""The Chicory app the end-to-end tests run in a real worker process (and as the client).

Started as ``chicory worker e2e_app:app`` from this directory. What it connects to comes
from the environment the test sets:

- ``E2E_BROKER``: ``redis`` or ``rabbitmq`` (Chicory's own brokers, configured by the
  usual ``CHICORY_BROKER_*`` variables);
- ``E2E_BACKEND``: ``postgres``, ``mysql``, ``sqlite``, ``redis`` (ours, through
  ``chicory_backend()`` and the ``CHICORY_BACKEND_*`` variables) or ``none``;
- ``E2E_NAMESPACE``: a prefix for every broker key and queue, so concurrent runs and
  leftovers of earlier ones never meet. Chicory 0.1.0 always publishes ``delay()`` and
  retries to the queue named "default", so a per-test queue name has to be made at the
  broker level: the two subclasses below only rename the keys/queues;
- ``E2E_TRACK=1``: ``track(app)`` (the task history), and ``E2E_RECORD_ARGS=1`` with it
  records the arguments too. ``make_app(tracked=..., record_args=...)`` overrides both,
  so a client can dispatch with and without arguments to the same worker.

No ``from __future__ import annotations``: Chicory builds its argument models from the
annotations at run time.
"""

import asyncio
import os
from pathlib import Path

from chicory import (
    Chicory,
    ChicoryConfig,
    RetryBackoff,
    RetryPolicy,
    TaskContext,
)
from chicory.broker.base import Broker
from chicory.broker.redis import RedisBroker

from chicory_backends.chicory import chicory_backend, track

# How long e2e.timeout lets its work run before asyncio.timeout cancels it.
TIMEOUT_SECONDS = 0.05


class NamespacedRedisBroker(RedisBroker):
    def __init__(self, namespace: str, config: ChicoryConfig) -> None:
        super().__init__(config.broker.redis, delivery_mode=config.delivery_mode)
        self.namespace = namespace

    def _stream_key(self, queue: str) -> str:
        return f"chicory:stream:{self.namespace}.{queue}"

    def _delayed_key(self, queue: str) -> str:
        return f"chicory:delayed:{self.namespace}.{queue}"

    def _dlq_key(self, queue: str) -> str:
        return f"chicory:dlq:{self.namespace}.{queue}"


def namespaced_rabbitmq_broker(namespace: str, config: ChicoryConfig) -> Broker:
    # Imported here: chicory.broker.rabbitmq needs aio-pika (chicory[rabbitmq]).
    from chicory.broker.rabbitmq import RabbitMQBroker

    class NamespacedRabbitMQBroker(RabbitMQBroker):
        def _queue_name(self, queue: str) -> str:
            return f"chicory.queue.{namespace}.{queue}"

        def _dlq_name(self, queue: str) -> str:
            return f"chicory.dlq.{namespace}.{queue}"

        def _delayed_exchange_name(self, queue: str) -> str:
            return f"chicory.delayed.{namespace}.{queue}"

        def _delayed_queue_name(self, queue: str) -> str:
            return f"chicory.delayed-queue.{namespace}.{queue}"

    return NamespacedRabbitMQBroker(config.broker.rabbitmq, delivery_mode=config.delivery_mode)


def record(path: str, line: str) -> None:
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


def make_app(*, tracked: bool | None = None, record_args: bool | None = None) -> Chicory:
    config = ChicoryConfig()
    namespace = os.environ["E2E_NAMESPACE"]
    broker: Broker
    if os.environ["E2E_BROKER"] == "rabbitmq":
        broker = namespaced_rabbitmq_broker(namespace, config)
    else:
        broker = NamespacedRedisBroker(namespace, config)
    kind = os.environ["E2E_BACKEND"]
    backend = None if kind == "none" else chicory_backend(kind)
    app = Chicory(broker=broker, backend=backend, config=config)

    @app.task(name="e2e.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="e2e.fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(
        name="e2e.flaky",
        retry_policy=RetryPolicy(
            max_retries=3, retry_delay=0.05, backoff=RetryBackoff.FIXED, jitter=False
        ),
    )
    async def flaky(ctx: TaskContext, path: str) -> int:
        record(path, f"attempt {ctx.retries}")
        if ctx.retries == 0:
            raise RuntimeError("the first attempt fails on purpose")
        return ctx.retries

    @app.task(name="e2e.record")
    async def record_line(path: str, line: str) -> None:
        record(path, line)

    @app.task(name="e2e.timeout")
    async def timeout(seconds: float) -> None:
        # Fails with TimeoutError: the work takes longer than its own time limit.
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await asyncio.sleep(seconds)

    if tracked is None:
        tracked = _flag("E2E_TRACK")
    if record_args is None:
        record_args = _flag("E2E_RECORD_ARGS")
    if tracked:
        track(app, record_args=record_args)
    return app


def __getattr__(name: str) -> Chicory:
    # Built on first access, after the test has set the environment.
    if name == "app":
        return make_app()
    raise AttributeError(name)

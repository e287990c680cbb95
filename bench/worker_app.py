"""The Chicory app of the end-to-end benchmark, run by ``chicory worker bench.worker_app:app``.

The same ``make_app()`` builds the worker's app (in the subprocess, from its environment)
and the bench's client app (under the same variables), so both sides are configured alike:

- ``BENCH_E2E_BROKER``: ``redis`` or ``rabbitmq``, Chicory's own brokers configured by the
  usual ``CHICORY_BROKER_*`` variables;
- ``BENCH_E2E_NAMESPACE``: a prefix for the broker's keys and queues. Chicory 0.1.0 always
  publishes to the queue named "default", so a run of its own needs the names changed at
  the broker level (the subclasses below rename, nothing else);
- ``BENCH_E2E_BACKEND``: ``none``, ``ours:<kind>`` (ours through ``chicory_backend()``),
  ``tracked:<kind>`` (the same with ``track(app)``), ``tracked-worker:<kind>`` (with
  ``track(app)`` in the worker process only) or
  ``chicory:<kind>`` (Chicory's own backend, built by Chicory from ``BackendType`` and its
  ``CHICORY_BACKEND_*`` settings, exactly as an app would get it);
- ``BENCH_E2E_DONE_FILE``: the task appends one byte to it, so the file's size is the number
  of tasks executed. That is the completion signal, and it costs the same in every case,
  with a backend or without;
- ``BENCH_E2E_CONNECTS_FILE``: when set, the process counts the connections it opens
  (``bench.connects``) and keeps the counts in that file.

No ``from __future__ import annotations``: Chicory builds its argument models from the
annotations at run time.
"""

import os
from pathlib import Path
from typing import Any, cast

from chicory import BackendType, Chicory, ChicoryConfig
from chicory.broker.base import Broker
from chicory.broker.redis import RedisBroker

TASK_NAME = "bench.add"


def _redis_broker(namespace: str, config: ChicoryConfig) -> Broker:
    class NamespacedRedisBroker(RedisBroker):
        def _stream_key(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory:stream:{namespace}.{queue}"

        def _delayed_key(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory:delayed:{namespace}.{queue}"

        def _dlq_key(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory:dlq:{namespace}.{queue}"

    return NamespacedRedisBroker(config.broker.redis, delivery_mode=config.delivery_mode)


def _rabbitmq_broker(namespace: str, config: ChicoryConfig) -> Broker:
    from chicory.broker.rabbitmq import RabbitMQBroker  # needs aio-pika

    class NamespacedRabbitMQBroker(RabbitMQBroker):
        def _queue_name(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory.queue.{namespace}.{queue}"

        def _dlq_name(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory.dlq.{namespace}.{queue}"

        def _delayed_exchange_name(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory.delayed.{namespace}.{queue}"

        def _delayed_queue_name(self, queue: str) -> str:  # type: ignore[override]
            return f"chicory.delayed-queue.{namespace}.{queue}"

    return NamespacedRabbitMQBroker(config.broker.rabbitmq, delivery_mode=config.delivery_mode)


def rabbitmq_queue_names(namespace: str) -> list[str]:
    """Every queue the namespaced RabbitMQ broker may declare (for the cleanup)."""
    return [f"chicory.{kind}.{namespace}.default" for kind in ("queue", "dlq", "delayed-queue")]


def redis_key_patterns(namespace: str) -> list[str]:
    """Every key the namespaced Redis broker may write (for the cleanup)."""
    return [f"chicory:{kind}:{namespace}.*" for kind in ("stream", "delayed", "dlq")]


class _Signal:
    """One byte per executed task, appended (O_APPEND writes of one byte are atomic)."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None

    def mark(self) -> None:
        if self._path is None:
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, b".")


def make_app() -> Chicory:
    """The app as the environment describes it (see the module docstring)."""
    connects = os.environ.get("BENCH_E2E_CONNECTS_FILE")
    if connects:
        from bench import connects as counting

        counting.install(Path(connects))
    config = ChicoryConfig()
    namespace = os.environ["BENCH_E2E_NAMESPACE"]
    if os.environ.get("BENCH_E2E_BROKER", "redis") == "rabbitmq":
        broker = _rabbitmq_broker(namespace, config)
    else:
        broker = _redis_broker(namespace, config)
    spec = os.environ.get("BENCH_E2E_BACKEND", "none")
    backend: Any = None
    if spec.startswith("ours:"):
        from chicory_backends.chicory import chicory_backend

        backend = chicory_backend(spec.removeprefix("ours:"))
    elif spec.startswith(("tracked:", "tracked-worker:")):
        from chicory_backends.chicory import chicory_backend

        backend = chicory_backend(spec.partition(":")[2])
    elif spec.startswith("chicory:"):
        backend = BackendType(spec.removeprefix("chicory:"))  # Chicory builds its own
    elif spec != "none":
        raise ValueError(
            f"BENCH_E2E_BACKEND={spec!r}: none, ours:<kind>, tracked:<kind>, "
            "tracked-worker:<kind> or chicory:<kind>"
        )
    # cast: Chicory's overloads pair a Broker instance with a Backend instance only, but
    # Chicory() itself takes a BackendType beside any broker.
    app = Chicory(broker=cast(Any, broker), backend=backend, config=config)
    # The task history: client and worker alike, or (tracked-worker) only in the worker
    # process, the one that has a done file.
    in_worker = bool(os.environ.get("BENCH_E2E_DONE_FILE"))
    if spec.startswith("tracked:") or (spec.startswith("tracked-worker:") and in_worker):
        from chicory_backends.chicory import track

        track(app)
    signal = _Signal(os.environ.get("BENCH_E2E_DONE_FILE"))

    @app.task(name=TASK_NAME)
    async def add(x: int, y: int) -> int:
        signal.mark()
        return x + y

    return app


def __getattr__(name: str) -> Chicory:
    # Built when the CLI looks it up, after the bench has set the environment.
    if name == "app":
        return make_app()
    raise AttributeError(name)

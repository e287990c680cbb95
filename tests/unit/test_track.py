"""track(app) (chicory.py) with Chicory's real Worker and app, over an in-memory broker and
a fake backend that records every write: which details each write carries, that the
dispatch writes PENDING before it publishes, and that the worker's first heartbeat comes
before its first task even when the queue already holds one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import pytest
from chicory import Chicory, RetryBackoff, RetryPolicy, TaskContext
from chicory.broker.base import DEFAULT_QUEUE, Broker, TaskEnvelope
from chicory.config import WorkerConfig
from chicory.types import BrokerStatus, TaskMessage
from chicory.worker import Worker

from chicory_backends.base import Backend
from chicory_backends.chicory import ChicoryBackendAdapter, async_result, track
from chicory_backends.errors import ArgumentsNotRecordableError, ConfigurationError
from chicory_backends.types import TaskDetails, TaskResult, TaskState, WorkerStats

Write = tuple[str, str, TaskState, TaskDetails | None]


class FakeBackend:
    """Records writes and heartbeats, in order; answers get_result from the last write."""

    def __init__(self) -> None:
        self.log: list[Write] = []
        self.heartbeats: list[str] = []
        self.deleted: list[str] = []
        self.states: dict[str, TaskState] = {}
        self.wrote = asyncio.Event()

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def set_state(self, task_id: str, state: TaskState, *rest: TaskDetails | None) -> None:
        assert len(rest) <= 1
        self.log.append(("set_state", task_id, state, rest[0] if rest else None))
        self.states[task_id] = state
        self.wrote.set()

    async def store_result(
        self, task_id: str, result: TaskResult, *rest: TaskDetails | None
    ) -> None:
        assert len(rest) <= 1
        self.log.append(("store_result", task_id, result.state, rest[0] if rest else None))
        self.states[task_id] = result.state
        self.wrote.set()

    async def get_result(self, task_id: str) -> TaskResult | None:
        state = self.states.get(task_id)
        return None if state is None else TaskResult(task_id=task_id, state=state)

    async def delete_result(self, task_id: str) -> None:
        self.deleted.append(task_id)
        self.states.pop(task_id, None)

    async def store_heartbeat(self, worker_id: str, stats: WorkerStats, ttl: int = 30) -> None:
        self.log.append(("heartbeat", worker_id, TaskState.PENDING, None))
        self.heartbeats.append(worker_id)

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        return 0

    def writes(self, task_id: str) -> list[Write]:
        return [entry for entry in self.log if entry[0] != "heartbeat" and entry[1] == task_id]


class MemoryBroker(Broker):
    """One in-memory queue per name; ``publish`` can be told to fail."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[TaskMessage]] = {}
        self.published: list[tuple[TaskMessage, str]] = []
        self.fail_publish: Exception | None = None
        self.before_publish: Callable[[TaskMessage], None] | None = None
        self.running = True

    def _queue(self, name: str) -> asyncio.Queue[TaskMessage]:
        return self.queues.setdefault(name, asyncio.Queue())

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def publish(self, message: TaskMessage, queue: str = DEFAULT_QUEUE) -> None:
        if self.before_publish is not None:
            self.before_publish(message)
        if self.fail_publish is not None:
            raise self.fail_publish
        self.published.append((message, queue))
        self._queue(queue).put_nowait(message)

    async def consume(self, queue: str = DEFAULT_QUEUE) -> AsyncGenerator[TaskEnvelope]:
        source = self._queue(queue)
        while self.running:
            if source.empty():
                try:
                    message = await asyncio.wait_for(source.get(), 0.05)
                except TimeoutError:
                    continue
            else:  # no suspension at all: the worst case for the heartbeat's head start
                message = source.get_nowait()
            yield TaskEnvelope(message=message, delivery_tag=message.id)

    async def ack(self, envelope: TaskEnvelope, queue: str = DEFAULT_QUEUE) -> None:
        pass

    async def nack(
        self, envelope: TaskEnvelope, requeue: bool = True, queue: str = DEFAULT_QUEUE
    ) -> None:
        pass

    def stop(self) -> None:
        self.running = False

    async def move_to_dlq(
        self, envelope: TaskEnvelope, error: str | None = None, queue: str = DEFAULT_QUEUE
    ) -> None:
        pass

    async def cleanup_stale_clients(
        self, queue: str = DEFAULT_QUEUE, stale_seconds: float = 60.0
    ) -> int:
        return 0

    async def healthcheck(self) -> BrokerStatus:
        return BrokerStatus(connected=True)

    # Not used here.
    async def get_dlq_messages(self, queue: str = DEFAULT_QUEUE, count: int = 100) -> Any:
        raise NotImplementedError

    async def replay_from_dlq(
        self, message_id: str, queue: str = DEFAULT_QUEUE, reset_retries: bool = True
    ) -> bool:
        raise NotImplementedError

    async def delete_from_dlq(self, message_id: str, queue: str = DEFAULT_QUEUE) -> bool:
        raise NotImplementedError

    async def purge_dlq(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError

    async def get_dlq_count(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError

    async def get_pending_count(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError

    async def get_queue_size(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError

    async def get_consumer_count(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError

    async def purge_queue(self, queue: str = DEFAULT_QUEUE) -> int:
        raise NotImplementedError


def make_app(*, tracked: bool = True, record_args: bool = False) -> tuple[Chicory, FakeBackend]:
    backend = FakeBackend()
    app = Chicory(broker=MemoryBroker(), backend=ChicoryBackendAdapter(cast(Backend, backend)))

    @app.task(name="t.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="t.echo")
    async def echo(value: object) -> None:
        pass

    @app.task(name="t.fail")
    async def fail() -> None:
        raise ValueError("no")

    @app.task(
        name="t.flaky",
        retry_policy=RetryPolicy(
            max_retries=2, retry_delay=0, backoff=RetryBackoff.FIXED, jitter=False
        ),
    )
    async def flaky(ctx: TaskContext) -> int:
        if ctx.retries == 0:
            raise RuntimeError("first attempt")
        return ctx.retries

    if tracked:
        track(app, record_args=record_args)
    return app, backend


def broker_of(app: Chicory) -> MemoryBroker:
    return cast(MemoryBroker, app.broker)


async def run_worker(app: Chicory, backend: FakeBackend, finished: set[str]) -> str:
    """Chicory's Worker until every id in ``finished`` has a terminal write; its id."""
    worker = Worker(
        app, WorkerConfig(concurrency=4, heartbeat_interval=0.05, use_dead_letter_queue=False)
    )
    await worker.start()
    try:
        async with asyncio.timeout(5):
            while not all(
                backend.states.get(task_id, TaskState.PENDING).is_terminal for task_id in finished
            ):
                backend.wrote.clear()
                await backend.wrote.wait()
    finally:
        await worker.stop(timeout=2)
    return worker.worker_id


# -- configuration ----------------------------------------------------------------------


def test_track_needs_our_backend() -> None:
    with pytest.raises(ConfigurationError, match="no backend"):
        track(Chicory(broker=MemoryBroker()))


def test_track_twice_changes_nothing() -> None:
    app, _ = make_app(record_args=False)
    publish, consume = app.broker.publish, app.broker.consume
    adapter = cast(ChicoryBackendAdapter, app.backend)
    tracking = adapter.tracking
    assert track(app, record_args=True, max_args_bytes=10) is app
    assert (app.broker.publish, app.broker.consume) == (publish, consume)
    assert adapter.tracking is tracking
    assert tracking is not None and not tracking.record_args


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_args_bytes_must_be_a_positive_int(bad: Any) -> None:
    app, _ = make_app(tracked=False)
    with pytest.raises(ConfigurationError, match="max_args_bytes"):
        track(app, max_args_bytes=bad)


# -- dispatch ---------------------------------------------------------------------------


async def test_delay_writes_pending_with_name_and_queue_before_publishing() -> None:
    app, backend = make_app()
    seen: list[TaskState | None] = []
    broker_of(app).before_publish = lambda message: seen.append(backend.states.get(message.id))
    result = await app.get_task("t.add").delay(1, 2)
    assert seen == [TaskState.PENDING]
    pending = TaskDetails(name="t.add", queue="default")
    assert backend.writes(result.task_id) == [
        ("set_state", result.task_id, TaskState.PENDING, pending)
    ]
    assert broker_of(app).published[0][1] == "default"


async def test_arguments_are_recorded_only_when_asked() -> None:
    app, backend = make_app(record_args=True)
    result = await app.get_task("t.add").delay(1, b=2)
    (_, _, _, details), *_ = backend.writes(result.task_id)
    assert details is not None and details.args_json == '{"args":[1],"kwargs":{"b":2}}'

    plain, plain_backend = make_app()
    result = await plain.get_task("t.add").delay(1, b=2)
    (_, _, _, details), *_ = plain_backend.writes(result.task_id)
    assert details is not None and details.args_json is None


async def test_arguments_that_cannot_be_recorded_are_not_published() -> None:
    app, backend = make_app(record_args=True)
    echo = app.get_task("t.echo")
    with pytest.raises(ArgumentsNotRecordableError, match="max_args_bytes"):
        await echo.delay("x" * 20000)
    with pytest.raises(ArgumentsNotRecordableError, match="come back as a plain list"):
        await echo.delay((1, 2))
    assert broker_of(app).published == []
    assert backend.log == []


async def test_a_failed_publish_deletes_its_pending_record() -> None:
    app, backend = make_app()
    broker_of(app).fail_publish = ConnectionError("broker down")
    with pytest.raises(ConnectionError, match="broker down"):
        await app.get_task("t.add").delay(1, 2)
    [(_, task_id, state, _)] = backend.log
    assert state is TaskState.PENDING and backend.deleted == [task_id]


async def test_without_track_no_details_and_no_pending() -> None:
    app, backend = make_app(tracked=False)
    done = await app.get_task("t.add").delay(1, 2)
    assert backend.log == []
    await run_worker(app, backend, {done.task_id})
    writes = backend.writes(done.task_id)
    assert [state for _, _, state, _ in writes] == [TaskState.STARTED, TaskState.SUCCESS]
    assert all(details is None for *_, details in writes)


# -- the worker's writes ------------------------------------------------------------------


async def test_worker_writes_carry_the_delivery_attempt_and_worker_id() -> None:
    app, backend = make_app()
    # Queued before the worker starts: the first envelope arrives without a wait.
    done = await app.get_task("t.add").delay(1, 2)
    failed = await app.get_task("t.fail").delay()
    retried = await app.get_task("t.flaky").delay()

    worker_id = await run_worker(app, backend, {done.task_id, failed.task_id, retried.task_id})

    first_task_write = next(
        i for i, entry in enumerate(backend.log) if entry[2] is TaskState.STARTED
    )
    first_heartbeat = next(i for i, entry in enumerate(backend.log) if entry[0] == "heartbeat")
    assert first_heartbeat < first_task_write
    assert backend.heartbeats[0] == worker_id

    def ran(name: str, attempt: int) -> TaskDetails:
        return TaskDetails(name=name, queue="default", worker_id=worker_id, attempt=attempt)

    pending = TaskDetails(name="t.add", queue="default")
    assert backend.writes(done.task_id) == [
        ("set_state", done.task_id, TaskState.PENDING, pending),
        ("set_state", done.task_id, TaskState.STARTED, ran("t.add", 1)),
        ("store_result", done.task_id, TaskState.SUCCESS, ran("t.add", 1)),
    ]
    assert [(state, d and d.attempt) for _, _, state, d in backend.writes(failed.task_id)] == [
        (TaskState.PENDING, 0),
        (TaskState.STARTED, 1),
        (TaskState.FAILURE, 1),
    ]
    assert backend.writes(retried.task_id) == [
        (
            "set_state",
            retried.task_id,
            TaskState.PENDING,
            TaskDetails(name="t.flaky", queue="default"),
        ),
        ("set_state", retried.task_id, TaskState.STARTED, ran("t.flaky", 1)),
        ("set_state", retried.task_id, TaskState.RETRY, ran("t.flaky", 1)),
        ("set_state", retried.task_id, TaskState.STARTED, ran("t.flaky", 2)),
        ("store_result", retried.task_id, TaskState.SUCCESS, ran("t.flaky", 2)),
    ]
    # The retry's republish wrote nothing of its own (no second PENDING).
    assert [m.retries for m, _ in broker_of(app).published if m.id == retried.task_id] == [0, 1]


async def test_a_task_dispatched_from_a_task_gets_its_own_pending_without_the_worker() -> None:
    app, backend = make_app()
    inner: list[str] = []

    @app.task(name="t.parent")
    async def parent() -> None:
        child = await app.get_task("t.add").delay(1, 1)
        inner.append(child.task_id)

    outer = await app.get_task("t.parent").delay()
    await run_worker(app, backend, {outer.task_id})
    # PENDING of the child: a dispatch, so no worker id and attempt 0 (the parent's
    # delivery is current, but its id is not the child's).
    (kind, _, state, details), *_ = backend.writes(inner[0])
    assert (kind, state, details) == (
        "set_state",
        TaskState.PENDING,
        TaskDetails(name="t.add", queue="default"),
    )


# -- AsyncResult.exists -------------------------------------------------------------------


async def test_exists_tells_a_queued_task_from_an_unknown_id() -> None:
    app, _ = make_app()
    queued = await app.get_task("t.add").delay(1, 2)
    ours = async_result(app, queued.task_id)
    assert await ours.exists() and await ours.state() is TaskState.PENDING
    nobody = async_result(app, "never-dispatched")
    assert not await nobody.exists() and await nobody.state() is TaskState.PENDING
    await ours.forget()
    assert not await ours.exists()

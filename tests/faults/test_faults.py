"""Server faults on servers the tests own: stopped and killed mid-stream, and a killed writer.

Each server (see owned_servers.py) runs on a free loopback port with its data in a
temporary directory, starts once per module and is stopped by pid at the end. The shared
servers on the usual ports are never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chicory_backends.base import Backend
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.errors import BackendUnreachableError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.schema import task_results
from chicory_backends.types import TaskResult, TaskState
from tests.support.owned_servers import OWNED_PASSWORD, OwnedServer, owned

pytestmark = pytest.mark.slow

# Every call is bounded well above what the configured timeouts allow (a retry on a
# fresh connection included), so a hang fails the test instead of stalling it.
CONNECT_TIMEOUT = 2.0
CALL_BOUND = 4 * CONNECT_TIMEOUT + 2
WORKERS = 3
PHASE_TIMEOUT = 60.0


def _redis_available() -> bool:
    try:
        from chicory_backends.redis import RedisBackend  # noqa: F401
    except Exception:
        return False
    return True


# -- servers (module scope: each starts once) -------------------------------------------


@pytest.fixture(scope="module")
def owned_postgres() -> Iterator[OwnedServer]:
    with owned("postgres") as server:
        yield server


@pytest.fixture(scope="module")
def owned_mysql() -> Iterator[OwnedServer]:
    with owned("mysql") as server:
        yield server


@pytest.fixture(scope="module")
def owned_redis() -> Iterator[OwnedServer]:
    if not _redis_available():
        pytest.skip("chicory_backends.redis (RedisBackend) is not importable yet")
    with owned("redis") as server:
        yield server


@pytest.fixture(params=["postgres", "mysql", "redis"])
def server(request: pytest.FixtureRequest) -> OwnedServer:
    owned_server: OwnedServer = request.getfixturevalue(f"owned_{request.param}")
    if not owned_server.running:  # a failed test may have left it stopped
        owned_server.start()
    return owned_server


def make_backend(server: OwnedServer, **overrides: Any) -> Backend:
    if server.kind == "redis":
        from chicory_backends.redis import RedisBackend

        prefix = overrides.pop("key_prefix", f"fault-{uuid.uuid4().hex[:8]}")
        return RedisBackend(server.config(key_prefix=prefix, **overrides))  # type: ignore[attr-defined]
    settings = {"connect_timeout": CONNECT_TIMEOUT, "pool_size": 4, "pool_timeout": 5.0}
    return DatabaseBackend(server.config(**(settings | overrides)))  # type: ignore[attr-defined]


@pytest.fixture
async def backend(server: OwnedServer) -> AsyncIterator[Backend]:
    backend = make_backend(server)
    await backend.connect()
    yield backend
    await backend.disconnect()


# -- the stream ----------------------------------------------------------------------------


def payload(task_id: str, n: int) -> dict[str, Any]:
    return {"id": task_id, "n": n, "items": list(range(n % 40)), "text": "ü✓" * (n % 300)}


@dataclass
class Stream:
    """Workers storing then reading results until told to stop; counts what happened."""

    backend: Backend
    prefix: str = field(default_factory=lambda: f"s-{uuid.uuid4().hex[:8]}")
    stored: list[str] = field(default_factory=list)  # store returned: must be durable
    uncertain: list[str] = field(default_factory=list)  # store raised: may or may not exist
    failures: int = 0
    reasons: set[str] = field(default_factory=set)  # what the failures said, for debugging
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    counter: int = 0

    async def call(self, awaitable: Any, what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, CALL_BOUND)
        except TimeoutError:
            pytest.fail(f"{what} hung for more than {CALL_BOUND}s", pytrace=False)

    async def worker(self) -> None:
        while not self.stop.is_set():
            self.counter += 1
            n = self.counter
            task_id = f"{self.prefix}-{n}"
            expected = TaskResult(
                task_id=task_id, state=TaskState.SUCCESS, result=payload(task_id, n)
            )
            try:
                await self.call(self.backend.store_result(task_id, expected), "store_result")
            except BackendUnreachableError as error:
                self.failures += 1
                self.reasons.add(str(error).split(": ", 1)[1][:80])
                self.uncertain.append(task_id)
                await asyncio.sleep(0.05)
                continue
            self.stored.append(task_id)
            try:
                got = await self.call(self.backend.get_result(task_id), "get_result")
            except BackendUnreachableError as error:
                self.failures += 1
                self.reasons.add(str(error).split(": ", 1)[1][:80])
                await asyncio.sleep(0.05)
                continue
            assert got == expected

    async def until(self, condition: Any, what: str, workers: list[asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT
        while not condition():
            for worker in workers:
                if worker.done():
                    worker.result()  # a worker's own failure, raised here
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out waiting for {what}: {len(self.stored)} stored, "
                    f"{self.failures} failures",
                    pytrace=False,
                )
            await asyncio.sleep(0.02)


async def read_all(backend: Backend, task_ids: list[str]) -> dict[str, TaskResult]:
    found: dict[str, TaskResult] = {}
    for start in range(0, len(task_ids), 200):
        found.update(await backend.get_results(task_ids[start : start + 200]))
    return found


@pytest.mark.parametrize("crash", [False, True], ids=["clean-stop", "crash"])
async def test_server_stopped_mid_stream(
    server: OwnedServer, backend: Backend, crash: bool
) -> None:
    """Calls fail fast with BackendUnreachableError, then the same object recovers.

    The stop is a clean shutdown or an immediate one (PostgreSQL SIGQUIT, MariaDB and
    Redis SIGKILL); every store that returned before it is still there afterwards.
    """
    stream = Stream(backend)
    workers = [asyncio.create_task(stream.worker()) for _ in range(WORKERS)]
    try:
        await stream.until(lambda: len(stream.stored) >= 40, "stores before the stop", workers)
        await asyncio.to_thread(server.stop, crash=crash)
        stored_before_stop = list(stream.stored)
        failures_at_stop = stream.failures
        await stream.until(lambda: stream.failures >= failures_at_stop + 6, "failures", workers)
        await asyncio.to_thread(server.start)
        stored_at_restart = len(stream.stored)
        await stream.until(
            lambda: len(stream.stored) >= stored_at_restart + 40,
            "stores after the restart",
            workers,
        )
    finally:
        stream.stop.set()
        done = await asyncio.gather(*workers, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome  # a raw driver exception, a hang or a wrong read back
    assert stream.failures > 0 and len(stream.stored) > len(stored_before_stop)
    print(
        f"{server.kind} crash={crash}: {stream.failures} failures:", *sorted(stream.reasons)
    )  # -s

    # Durable: everything acknowledged before the stop reads back exactly.
    found = await read_all(backend, stream.stored)
    missing = [task_id for task_id in stream.stored if task_id not in found]
    assert not missing, f"{len(missing)} acknowledged stores lost, e.g. {missing[:3]}"
    for task_id in stream.stored:
        n = int(task_id.rsplit("-", 1)[1])
        assert found[task_id].result == payload(task_id, n)
    # A store that failed may have landed or not, but never half.
    maybe = await read_all(backend, stream.uncertain)
    for task_id, got in maybe.items():
        n = int(task_id.rsplit("-", 1)[1])
        assert got.state is TaskState.SUCCESS and got.result == payload(task_id, n)
    assert (await backend.healthcheck()).connected


@pytest.mark.parametrize("server", ["postgres", "mysql"], indirect=True)
async def test_server_restarted_mid_batch(server: OwnedServer, backend: Backend) -> None:
    """32 writers, as a Chicory worker runs them, so stores travel in coalesced batches
    while the server is killed and started again: every acknowledged store reads back."""
    stream = Stream(backend)
    workers = [asyncio.create_task(stream.worker()) for _ in range(32)]
    try:
        await stream.until(lambda: len(stream.stored) >= 300, "stores before the kill", workers)
        await asyncio.to_thread(server.restart, crash=True)
        stored_at_restart = len(stream.stored)
        await stream.until(
            lambda: len(stream.stored) >= stored_at_restart + 300, "stores after", workers
        )
    finally:
        stream.stop.set()
        done = await asyncio.gather(*workers, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    found = await read_all(backend, stream.stored)
    missing = [task_id for task_id in stream.stored if task_id not in found]
    assert not missing, f"{len(missing)} acknowledged stores lost, e.g. {missing[:3]}"
    for task_id in stream.stored:
        assert found[task_id].result == payload(task_id, int(task_id.rsplit("-", 1)[1]))


async def test_calls_while_down_fail_fast_and_name_the_address(
    server: OwnedServer, backend: Backend
) -> None:
    """Every operation, on a backend whose pooled connections all died, while the server is down."""
    task_id = f"down-{uuid.uuid4().hex[:8]}"
    await backend.store_result(task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS))
    await asyncio.to_thread(server.stop, crash=True)
    try:
        calls = {
            "set_state": lambda: backend.set_state(task_id, TaskState.STARTED),
            "store_result": lambda: backend.store_result(
                task_id, TaskResult(task_id=task_id, state=TaskState.FAILURE)
            ),
            "get_result": lambda: backend.get_result(task_id),
            "get_results": lambda: backend.get_results([task_id, "other"]),
            "delete_result": lambda: backend.delete_result(task_id),
            "get_active_workers": lambda: backend.get_active_workers(),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(BackendUnreachableError) as raised:
                await asyncio.wait_for(call(), CALL_BOUND)
            assert time.monotonic() - started < CALL_BOUND, name
            assert f"127.0.0.1:{server.port}" in str(raised.value), name
        status = await asyncio.wait_for(backend.healthcheck(), CALL_BOUND)
        assert not status.connected
    finally:
        await asyncio.to_thread(server.start)
    got = await backend.get_result(task_id)
    assert got is not None and got.state is TaskState.SUCCESS
    assert (await backend.healthcheck()).connected


FROZEN_BOUND = 5.0  # above every configured timeout of this test, far below "forever"


async def test_frozen_server_fails_calls_within_a_bound(server: OwnedServer) -> None:
    """SIGSTOP on the server (a hung host, a partition): no RST, no FIN, just silence."""
    # Redis: socket_timeout 1 s, at most 3 tries with a short backoff; SQL: command_timeout.
    timeouts = {"socket_timeout": 1.0} if server.kind == "redis" else {"command_timeout": 2.0}
    backend = make_backend(server, **timeouts)
    await backend.connect()
    try:
        await backend.get_result("warm-up")  # a pooled connection, then silence on it
        pids = await asyncio.to_thread(server.freeze)
        outcome: BaseException | None = None
        started = time.monotonic()
        try:
            await asyncio.wait_for(backend.get_result("frozen"), FROZEN_BOUND)
        except BaseException as error:
            outcome = error
        finally:
            server.thaw(pids)
        elapsed = time.monotonic() - started
        # Whatever happened, the same object works once the server runs again.
        assert await asyncio.wait_for(backend.get_result("after-thaw"), CALL_BOUND) is None
    finally:
        await backend.disconnect()
    assert isinstance(outcome, BackendUnreachableError), f"{outcome!r} after {elapsed:.1f}s"


async def test_frozen_server_fails_writes_within_a_bound(server: OwnedServer) -> None:
    """The same silence during writes, which SQL sends on the writes' held connection."""
    timeouts = {"socket_timeout": 1.0} if server.kind == "redis" else {"command_timeout": 2.0}
    backend = make_backend(server, **timeouts)
    await backend.connect()
    done = TaskResult(task_id="w", state=TaskState.SUCCESS, result=1)
    try:
        await backend.store_result("warm-up", done)  # the connection, then silence on it
        pids = await asyncio.to_thread(server.freeze)
        outcome: BaseException | None = None
        try:
            await asyncio.wait_for(backend.store_result("frozen", done), FROZEN_BOUND)
        except BaseException as error:
            outcome = error
        finally:
            server.thaw(pids)
        await asyncio.wait_for(backend.store_result("after-thaw", done), CALL_BOUND)
        found = await backend.get_result("after-thaw")
        assert found is not None and (found.state, found.result) == (done.state, done.result)
    finally:
        await backend.disconnect()
    assert isinstance(outcome, BackendUnreachableError), repr(outcome)


# -- a writer process killed with SIGKILL mid-stream ---------------------------------------

_WRITER = r"""
import asyncio, os, sys
from chicory_backends.types import TaskResult, TaskState

def payload(task_id, n):
    return {"id": task_id, "n": n, "blob": "x" * ((n % 5) * 60000), "items": list(range(n % 50))}

async def main():
    kind, prefix = os.environ["W_KIND"], os.environ["W_PREFIX"]
    if kind == "redis":
        from chicory_backends.config import RedisBackendConfig
        from chicory_backends.redis import RedisBackend
        backend = RedisBackend(RedisBackendConfig(url=os.environ["W_URL"], key_prefix=prefix))
    else:
        from chicory_backends.factory import sql_config_from_url
        from chicory_backends.sql.backend import DatabaseBackend
        backend = DatabaseBackend(sql_config_from_url(os.environ["W_URL"]))
    await backend.connect()
    counter = 0

    async def worker():
        nonlocal counter
        while True:
            counter += 1
            n = counter
            task_id = f"{prefix}-{n}"
            await backend.set_state(task_id, TaskState.STARTED)
            result = TaskResult(task_id=task_id, state=TaskState.SUCCESS,
                                result=payload(task_id, n), error=f"e{n}", traceback="t" * n)
            await backend.store_result(task_id, result)
            sys.stdout.write(task_id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker() for _ in range(4)))

asyncio.run(main())
"""


def writer_payload(task_id: str, n: int) -> dict[str, Any]:
    """The writer's payload(), as the script above defines it."""
    return {"id": task_id, "n": n, "blob": "x" * ((n % 5) * 60000), "items": list(range(n % 50))}


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis"])
async def target(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, str, Backend, str]]:
    """(kind, url for the writer, a connected reader backend, the task id prefix)."""
    kind: str = request.param
    prefix = f"w-{uuid.uuid4().hex[:8]}"
    reader: Backend
    if kind == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="chicory-kill-")) / "results.db"
        config = SQLiteBackendConfig(file_path=str(path), auto_migrate=True)
        async with DatabaseBackend(config):
            pass
        url = f"sqlite+aiosqlite:///{path}"
        reader = DatabaseBackend(config.model_copy(update={"auto_migrate": False}))
    else:
        owned_server: OwnedServer = request.getfixturevalue(f"owned_{kind}")
        if not owned_server.running:
            owned_server.start()
        if kind == "redis":
            url = f"redis://:{OWNED_PASSWORD}@127.0.0.1:{owned_server.port}/0"
        else:
            url = owned_server.url()  # type: ignore[attr-defined]
        reader = make_backend(owned_server, key_prefix=prefix)
    await reader.connect()
    yield kind, url, reader, prefix
    await reader.disconnect()


async def stored_ids(reader: Backend, prefix: str) -> list[str]:
    """Every task id under ``prefix`` the storage holds, found without the backend's reads."""
    if isinstance(reader, DatabaseBackend):
        assert reader._engine is not None
        async with reader._engine.connect() as connection:
            rows = await connection.execute(
                select(task_results.c.task_id).where(task_results.c.task_id.like(f"{prefix}-%"))
            )
            return [row[0] for row in rows]
    client = reader._client  # type: ignore[attr-defined]
    key_prefix = reader._result_prefix  # type: ignore[attr-defined]
    keys = [key async for key in client.scan_iter(match=f"{key_prefix}{prefix}-*", count=1000)]
    return [key.decode()[len(key_prefix) :] for key in keys]


async def test_writer_killed_mid_stream_leaves_no_partial_row(target: Any) -> None:
    kind, url, reader, prefix = target
    env = dict(os.environ, W_KIND=kind, W_URL=url, W_PREFIX=prefix)
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    acknowledged: list[str] = []
    try:
        assert writer.stdout is not None
        while len(acknowledged) < 60:
            line = await asyncio.wait_for(writer.stdout.readline(), 60)
            if not line:
                assert writer.stderr is not None
                pytest.fail(f"writer exited early: {(await writer.stderr.read()).decode()}")
            acknowledged.append(line.decode().strip())
    finally:
        if writer.returncode is None:
            os.kill(writer.pid, signal.SIGKILL)
        await writer.wait()
    assert writer.returncode == -signal.SIGKILL

    ids = await stored_ids(reader, prefix)
    assert set(acknowledged) <= set(ids)
    found = await reader.get_results(ids)  # raises CorruptResultError on any bad row
    assert set(found) == set(ids)
    for task_id, got in found.items():
        n = int(task_id.rsplit("-", 1)[1])
        assert got.task_id == task_id
        if got.state is TaskState.SUCCESS:
            assert got.result == writer_payload(task_id, n)
            assert (got.error, got.traceback) == (f"e{n}", "t" * n)
        else:
            assert got.state is TaskState.STARTED, got.state
            assert (got.result, got.error, got.traceback) == (None, None, None)
    assert all(found[task_id].state is TaskState.SUCCESS for task_id in acknowledged)

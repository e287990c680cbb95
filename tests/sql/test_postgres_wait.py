"""DatabaseBackend.wait_for_result on PostgreSQL: woken by LISTEN/NOTIFY, not by polling.

The LISTEN connection and its recovery, batched reads, and the waiter registry of
revision 0003 (notify only when someone waits, the fence against a racing writer). The
waiting backend's polling is set to 60 s, so a test that returns within a second proves
that a notification woke it. AsyncResult on every backend: test_result.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
import pytest

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import BackendUnreachableError, CorruptResultError
from chicory_backends.result import AsyncResult
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.notify import LISTENER_APPLICATION_NAME
from chicory_backends.types import TaskResult, TaskState
from chicory_backends.waiting import CONNECT_PAUSES
from tests.support.result_helpers import before_first_read, new_id, success

pytestmark = pytest.mark.postgres


def _count_reads(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every read the waiting path makes (get_result or batched get_results)."""
    reads = [0]
    real_one, real_many = backend.get_result, backend.get_results

    async def get_result(task_id: str) -> TaskResult | None:
        reads[0] += 1
        return await real_one(task_id)

    async def get_results(task_ids: Iterable[str]) -> dict[str, TaskResult]:
        reads[0] += 1
        return await real_many(task_ids)

    monkeypatch.setattr(backend, "get_result", get_result)
    monkeypatch.setattr(backend, "get_results", get_results)
    return reads


# -- PostgreSQL: woken by NOTIFY ----------------------------------------------------------


@pytest.fixture
async def pg(sql_databases: Callable[[str], SQLBackendConfig]) -> AsyncIterator[DatabaseBackend]:
    """A PostgreSQL backend that would practically never poll: only a NOTIFY can wake it."""
    backend = DatabaseBackend(sql_databases("postgres"))
    backend.poll_interval_start = backend.poll_interval_cap = 60.0
    await backend.connect()
    yield backend
    await backend.disconnect()


@pytest.fixture
async def pg_writer(sql_databases: Callable[[str], SQLBackendConfig]) -> AsyncIterator[Backend]:
    async with DatabaseBackend(sql_databases("postgres")) as backend:
        yield backend


@pytest.fixture
async def pg_admin(sql_databases: Callable[[str], SQLBackendConfig]) -> AsyncIterator[Any]:
    url = sql_databases("postgres").sqlalchemy_url()
    connection = await asyncpg.connect(
        user=url.username, password=url.password, host=url.host, port=url.port,
        database=url.database, server_settings={"application_name": "test-admin"},
    )  # fmt: skip
    yield connection
    await connection.close()


async def _backend_connections(admin: Any) -> dict[str, int]:
    rows = await admin.fetch(
        "SELECT application_name, count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'chicory-backends%' "
        "GROUP BY application_name"
    )
    return {row["application_name"]: row["n"] for row in rows}


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_notify_wakes_the_waiter_not_a_poll(
    pg: DatabaseBackend, pg_writer: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_reads(pg, monkeypatch)
    task_id = new_id()
    waiting = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
    await _until(lambda: reads[0] == 1)  # subscribed and read once
    await asyncio.sleep(0.2)
    stored = time.monotonic()
    await pg_writer.store_result(task_id, success(task_id, "pushed"))
    assert await waiting == "pushed"
    assert time.monotonic() - stored < 0.5  # the poll cap is 60 s
    assert reads[0] == 2  # the first read, and the one after the notification


async def test_store_right_after_the_first_read_is_not_lost(
    pg: DatabaseBackend, pg_writer: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read found nothing, the store lands before the waiter sleeps: NOTIFY still wakes it,
    because the waiter was listening before it read."""
    task_id = new_id()

    async def store() -> None:
        await pg_writer.store_result(task_id, success(task_id, "just in time"))

    before_first_read(pg, monkeypatch, store, after=True)
    begun = time.monotonic()
    assert await AsyncResult(task_id, pg).get(timeout=30) == "just in time"
    assert time.monotonic() - begun < 1.0


async def test_non_terminal_states_do_not_wake(
    pg: DatabaseBackend, pg_writer: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_reads(pg, monkeypatch)
    task_id = new_id()
    waiting = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
    await _until(lambda: reads[0] == 1)
    for state in (TaskState.STARTED, TaskState.RETRY, TaskState.STARTED):
        await pg_writer.set_state(task_id, state)
    await asyncio.sleep(0.3)
    assert reads[0] == 1 and not waiting.done()
    await pg_writer.set_state(task_id, TaskState.SUCCESS)  # ignore_result: state only
    assert await waiting is None
    assert reads[0] == 2


async def test_a_corrupt_row_fails_only_its_own_waiter(
    pg: DatabaseBackend, pg_writer: Backend, pg_admin: Any
) -> None:
    """Waiters' reads are batched; one unreadable row must not fail the others."""
    bad, good = new_id(), new_id()
    await pg_admin.execute(
        "INSERT INTO chicory_task_results (task_id, state, created_at, updated_at) "
        "VALUES ($1, 'bogus', now(), now())",
        bad,
    )
    waiting_bad = asyncio.create_task(AsyncResult(bad, pg).get(timeout=30))
    waiting_good = asyncio.create_task(AsyncResult(good, pg).get(timeout=30))
    with pytest.raises(CorruptResultError, match=bad):
        await waiting_bad
    await asyncio.sleep(0.1)
    assert not waiting_good.done()
    await pg_writer.store_result(good, success(good, "fine"))
    assert await waiting_good == "fine"


async def test_listener_is_reestablished_after_loss(
    pg: DatabaseBackend, pg_writer: Backend, pg_admin: Any
) -> None:
    first, second = new_id(), new_id()
    waiting = asyncio.create_task(AsyncResult(first, pg).get(timeout=30))
    await _until(lambda: pg._listener is not None and pg._listener.waiting == 1)
    listener = pg._listener
    killed = await pg_admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        LISTENER_APPLICATION_NAME,
    )
    assert killed == 1
    # The waiter listens again on a new connection; a result stored now still wakes it.
    assert listener is not None
    await _until(lambda: listener.active and listener.waiting == 1)
    await pg_writer.store_result(first, success(first, "after the loss"))
    assert await waiting == "after the loss"
    # And later waits use the new connection.
    later = asyncio.create_task(AsyncResult(second, pg).get(timeout=30))
    await _until(lambda: listener.waiting == 1)
    await pg_writer.store_result(second, success(second, "later"))
    assert await later == "later"
    assert (await _backend_connections(pg_admin)).get(LISTENER_APPLICATION_NAME) == 1


async def test_one_failed_listen_attempt_is_shared(
    pg: DatabaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server is unreachable, many waiters share one connection attempt and its
    error, instead of queueing one attempt each."""
    attempts = [0]

    async def unreachable(*_args: Any) -> Any:
        attempts[0] += 1
        await asyncio.sleep(0.1)
        raise BackendUnreachableError("127.0.0.1:5432", "ConnectionRefusedError")

    monkeypatch.setattr("chicory_backends.sql.backend.connect_listener", unreachable)
    outcomes = await asyncio.gather(
        *(AsyncResult(new_id(), pg).get(timeout=30) for _ in range(100)), return_exceptions=True
    )
    assert all(isinstance(outcome, BackendUnreachableError) for outcome in outcomes)
    assert attempts[0] == len(CONNECT_PAUSES) + 1  # one attempt (its tries), for all 100


async def test_disconnect_closes_the_listener(
    sql_databases: Callable[[str], SQLBackendConfig], pg_writer: Backend, pg_admin: Any
) -> None:
    backend = DatabaseBackend(sql_databases("postgres"))
    await backend.connect()
    assert LISTENER_APPLICATION_NAME not in await _backend_connections(pg_admin)  # lazily
    task_id = new_id()
    await pg_writer.store_result(task_id, success(task_id, 1))
    assert await AsyncResult(task_id, backend).get(timeout=5) == 1
    assert (await _backend_connections(pg_admin)).get(LISTENER_APPLICATION_NAME) == 1
    waiting = asyncio.create_task(AsyncResult(new_id(), backend).get(timeout=30))
    await asyncio.sleep(0.1)
    await backend.disconnect()
    with pytest.raises(Exception, match="not connected"):
        await waiting
    await _until_async(lambda: _backend_connections(pg_admin), LISTENER_APPLICATION_NAME)


async def _until_async(read: Callable[[], Any], absent: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while absent in await read():
        assert time.monotonic() < deadline, f"{absent} still connected"
        await asyncio.sleep(0.05)


async def test_ten_thousand_concurrent_waits_use_bounded_connections(
    pg: DatabaseBackend, pg_admin: Any
) -> None:
    count = 10_000
    prefix = f"bulk-{uuid.uuid4().hex[:8]}-"
    waiters = [
        asyncio.create_task(AsyncResult(f"{prefix}{n}", pg).get(timeout=60)) for n in range(count)
    ]
    listener = None

    def all_waiting() -> bool:
        nonlocal listener
        listener = pg._listener
        return listener is not None and listener.waiting == count

    await _until(all_waiting, within=60)
    peak: dict[str, int] = await _backend_connections(pg_admin)
    # One statement stores all of them: 10,000 rows, 10,000 notifications at its commit.
    await pg_admin.execute(
        "INSERT INTO chicory_task_results (task_id, state, result, created_at, updated_at) "
        "SELECT $1 || n, 'SUCCESS', to_jsonb(n), now(), now() "
        "FROM generate_series(0, $2::int - 1) AS n",
        prefix,
        count,
    )
    sampling = True

    async def sample() -> None:
        while sampling:
            for name, n in (await _backend_connections(pg_admin)).items():
                peak[name] = max(peak.get(name, 0), n)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        values = await asyncio.gather(*waiters)
    finally:
        sampling = False
        await sampler
    assert values == list(range(count))
    config = pg.config
    assert peak.get(LISTENER_APPLICATION_NAME) == 1
    assert sum(peak.values()) <= config.pool_size + config.max_overflow + 1, peak


# -- PostgreSQL: notify only when someone waits (revision 0003) ---------------------------


async def _waiter_rows(admin: Any, task_id: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM chicory_result_waiters WHERE task_id = $1", task_id
    )
    return count


async def _until_rows(admin: Any, task_id: str, rows: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await _waiter_rows(admin, task_id) != rows:
        assert time.monotonic() < deadline, f"{task_id} never had {rows} waiter rows"
        await asyncio.sleep(0.02)


@pytest.fixture
async def pg_listen(pg_admin: Any) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload on chicory_results, heard on a raw connection of the test's own."""
    heard: asyncio.Queue[str] = asyncio.Queue()

    def on_notification(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        heard.put_nowait(payload)

    await pg_admin.add_listener("chicory_results", on_notification)
    yield heard
    await pg_admin.remove_listener("chicory_results", on_notification)


async def test_a_store_nobody_waits_for_sends_no_notification(
    pg_writer: Backend, pg_listen: asyncio.Queue[str]
) -> None:
    task_id = new_id()
    await pg_writer.store_result(task_id, success(task_id, "unwatched"))
    await asyncio.sleep(0.3)
    assert pg_listen.empty()


async def test_a_store_someone_waits_for_is_notified_and_the_row_goes(
    pg: DatabaseBackend, pg_writer: Backend, pg_admin: Any, pg_listen: asyncio.Queue[str]
) -> None:
    task_id = new_id()
    waiting = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
    await _until_rows(pg_admin, task_id, 1)
    await pg_writer.store_result(task_id, success(task_id, "watched"))
    assert await asyncio.wait_for(pg_listen.get(), 2) == task_id
    assert await waiting == "watched"
    await _until_rows(pg_admin, task_id, 0)  # unregistered once the wait is over


async def test_a_writer_that_checked_before_the_registration_is_waited_for(
    pg: DatabaseBackend, pg_admin: Any, sql_databases: Callable[[str], SQLBackendConfig]
) -> None:
    """The race 0003 closes: a writer's trigger found no waiter (so it will not notify), but
    the writer commits only after the waiter registered. The waiter's fence waits for that
    commit, so its read finds the result: no lost wake-up, no wait for the 60 s poll."""
    url = sql_databases("postgres").sqlalchemy_url()
    writer = await asyncpg.connect(
        user=url.username, password=url.password, host=url.host, port=url.port,
        database=url.database,
    )  # fmt: skip
    task_id = new_id()
    try:
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute(
            "INSERT INTO chicory_task_results (task_id, state, result, created_at, updated_at) "
            "VALUES ($1, 'SUCCESS', '\"raced\"', now(), now())",
            task_id,
        )  # the trigger has run: no registration yet, so no NOTIFY at commit
        waiting = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
        await _until_rows(pg_admin, task_id, 1)  # registered (committed) ...
        blocked = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 5
        while await pg_admin.fetchval(blocked) == 0:  # ... and fencing, behind the writer
            assert time.monotonic() < deadline, "the waiter never waited for the writer"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        committed = time.monotonic()
        await transaction.commit()
        assert await waiting == "raced"
        assert time.monotonic() - committed < 1.0  # the poll cap is 60 s
    finally:
        await writer.close()
    await _until_rows(pg_admin, task_id, 0)


async def test_waiters_of_one_task_share_a_row_until_the_last_leaves(
    pg: DatabaseBackend, pg_writer: Backend, pg_admin: Any
) -> None:
    task_id = new_id()
    first = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
    second = asyncio.create_task(AsyncResult(task_id, pg).get(timeout=30))
    await _until_rows(pg_admin, task_id, 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.2)
    assert await _waiter_rows(pg_admin, task_id) == 1  # the second still waits
    await pg_writer.store_result(task_id, success(task_id, "shared"))
    assert await second == "shared"
    await _until_rows(pg_admin, task_id, 0)


async def test_waiter_rows_go_after_timeouts(pg: DatabaseBackend, pg_admin: Any) -> None:
    prefix = f"timeout-{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{n}" for n in range(50)]
    outcomes = await asyncio.gather(*(pg.wait_for_result(task_id, timeout=0.3) for task_id in ids))
    assert outcomes == [None] * len(ids)
    deadline = time.monotonic() + 5
    while await pg_admin.fetchval(
        "SELECT count(*) FROM chicory_result_waiters WHERE task_id LIKE $1", prefix + "%"
    ):
        assert time.monotonic() < deadline, "waiter rows left behind"
        await asyncio.sleep(0.02)
    assert pg._waiters is not None and pg._waiters.waited_for == 0


async def test_stale_client_cleanup_deletes_old_waiter_rows(
    pg: DatabaseBackend, pg_admin: Any
) -> None:
    stale, fresh = new_id(), new_id()
    await pg_admin.execute(
        "INSERT INTO chicory_result_waiters (task_id, waiter, registered_at) VALUES "
        "($1, gen_random_uuid(), now() - interval '2 days'), ($2, gen_random_uuid(), now())",
        stale,
        fresh,
    )
    await pg.cleanup_stale_clients()
    assert await _waiter_rows(pg_admin, stale) == 0
    assert await _waiter_rows(pg_admin, fresh) == 1
    await pg_admin.execute("DELETE FROM chicory_result_waiters WHERE task_id = $1", fresh)


async def test_a_waiter_whose_row_was_cleaned_up_is_found_by_its_recheck(
    pg: DatabaseBackend, pg_writer: Backend, pg_admin: Any
) -> None:
    """A wait longer than STALE_WAITER_AGE loses its registration row to
    cleanup_stale_clients; no NOTIFY comes for it then, and the periodic re-read (shared
    with Redis, waiting.wait_for) still finds the result instead of waiting forever."""
    pg.recheck_interval = 0.3
    task_id = new_id()
    waiting = asyncio.create_task(pg.wait_for_result(task_id, timeout=30))
    await _until_rows(pg_admin, task_id, 1)
    await pg_admin.execute("DELETE FROM chicory_result_waiters WHERE task_id = $1", task_id)
    await pg_writer.store_result(task_id, success(task_id, "never announced"))
    found = await asyncio.wait_for(waiting, 0.3 * 1.1 + 1.0)
    assert found is not None and found.result == "never announced"

"""PostgreSQL fail-over: a primary and a streaming standby, one URL naming both.

The backend is given ``?host=primary&host=standby&target_session_attrs=read-write``.
Writers store results without pause and waiters block on results not stored yet; the
primary is killed (SIGKILL on its whole process group) and, after a detection delay, the
standby is promoted (``pg_ctl promote``). Calls fail only with BackendUnreachableError,
for a bounded time, then succeed against the new primary in the same process; the LISTEN
connection moves there too and every waiter wakes. Synchronous replication loses no
acknowledged result; asynchronous replication's loss is counted and printed (``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chicory_backends.config import PostgresBackendConfig
from chicory_backends.errors import BackendUnreachableError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.notify import LISTENER_APPLICATION_NAME
from tests.support.replicated_servers import FailoverStream, PostgresPair

pytestmark = pytest.mark.slow

WRITERS = 4
WAITERS = 8
ACKS_BEFORE_KILL = 200
ACKS_AFTER = 200
DETECTION_DELAY = 1.0  # a fail-over manager noticing the dead primary
WAKE_BOUND = 10.0  # the waited-for results stored to every waiter woken
UNREACHABLE_BOUND = 5.0  # promotion to the last error any caller saw
PHASE_TIMEOUT = 30.0


@pytest.fixture(params=["async", "sync"])
def pair(request: pytest.FixtureRequest) -> Iterator[PostgresPair]:
    topology = PostgresPair(synchronous=request.param == "sync")
    try:
        topology.start()
        yield topology
    finally:
        topology.remove()


def test_hosts_variable_names_both_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHICORY_BACKEND_POSTGRES_HOSTS", "10.0.0.1:5433, 10.0.0.2")
    config = PostgresBackendConfig(username="u", database="d")
    url = config.sqlalchemy_url()
    assert url.host is None and url.port is None
    assert url.query["host"] == ("10.0.0.1:5433", "10.0.0.2:5432")
    assert url.query["target_session_attrs"] == "read-write"
    assert config.address() == "10.0.0.1:5433,10.0.0.2:5432"
    explicit = PostgresBackendConfig(hosts="a:1,b:2", target_session_attrs="primary")
    assert explicit.sqlalchemy_url().query["target_session_attrs"] == "primary"


async def _fail_over(
    pair: PostgresPair, detection_delay: float, wake_bound: float
) -> tuple[dict[str, Any], list[str], str]:
    """Writers and waiters; kill the primary, promote the standby ``detection_delay``
    later; store the waited-for results and give the waiters ``wake_bound`` to wake.
    The figures, the acknowledged ids lost, and how many LISTEN sessions the new primary
    has."""
    mode = "sync" if pair.synchronous else "async"
    settings = {"connect_timeout": 2.0, "command_timeout": 5.0, "pool_size": 4}
    writer = DatabaseBackend(pair.config(**settings))
    client = DatabaseBackend(pair.config(**settings))
    await writer.connect()
    await client.connect()
    stream = FailoverStream(writer, client)
    waiter_ids = [f"{stream.prefix}-waited-{n}" for n in range(WAITERS)]
    writers = [asyncio.create_task(stream.writer_loop()) for _ in range(WRITERS)]
    waiters = [asyncio.create_task(stream.waiter(task_id, 60.0)) for task_id in waiter_ids]
    try:
        await stream.until(lambda: len(stream.acked) >= ACKS_BEFORE_KILL, "writes", writers)
        # The waiters are registered before the kill. (chicory_result_waiters is UNLOGGED:
        # the registrations are not replicated, and the promoted standby has none.)
        count = f"SELECT count(*) FROM chicory_result_waiters WHERE task_id LIKE '{stream.prefix}%'"
        await stream.until(
            lambda: pair.primary.psql(count, "chicory") == str(WAITERS), "waiters", writers
        )

        await asyncio.to_thread(pair.primary.kill)
        stream.killed_at = time.monotonic()
        acked_at_kill = len(stream.acked)
        await asyncio.sleep(detection_delay)
        await asyncio.to_thread(pair.promote)
        stream.promoted_at = time.monotonic()
        await stream.until(
            lambda: stream.acks_after(stream.promoted_at or 0) >= ACKS_AFTER, "resumed", writers
        )
        stream.stop()  # the writers' part is done: spare the CPU
        for task_id in waiter_ids:  # the results the waiters wait for, on the new primary
            await stream.store_retrying(task_id)
        stored_for_waiters = time.monotonic()
        await asyncio.wait(waiters, timeout=wake_bound)
        late = [t - stored_for_waiters for t in stream.woken.values()]
    finally:
        await stream.finish(writers, waiters)
    try:
        listeners = pair.standby.psql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE application_name = '{LISTENER_APPLICATION_NAME}'"
        )
        lost = await stream.lost(writer)
        maybe = await writer.get_results(stream.uncertain)
    finally:
        await client.disconnect()
        await writer.disconnect()

    figures = stream.figures(len(lost), WAITERS)
    figures["acked_at_kill"] = acked_at_kill
    figures["max_wake_after_store_s"] = round(max(late, default=0.0), 3)
    label = f"postgres {mode} (promoted {detection_delay:g}s after the kill)"
    print(f"\n{label}: {figures}; reasons: {sorted(stream.reasons)}")

    assert stream.promoted_at is not None
    last_error = max(stream.error_times, default=stream.promoted_at)
    assert last_error - stream.promoted_at < UNREACHABLE_BOUND, figures
    for task_id, got in maybe.items():  # a failed store landed whole or not at all
        assert got.result == {"id": task_id}
    return figures, lost, listeners


async def test_primary_killed_standby_promoted(pair: PostgresPair) -> None:
    figures, lost, listeners = await _fail_over(pair, DETECTION_DELAY, WAKE_BOUND)
    assert figures["errors_seen"] > 0, "the kill went unnoticed: nothing was measured"
    assert listeners == "1", "the LISTEN connection did not move to the new primary"
    assert figures["waiters_never_woken"] == 0, figures
    if pair.synchronous:
        assert not lost, f"{len(lost)} acknowledged results lost, e.g. {lost[:3]}"


@pytest.mark.parametrize("pair", ["sync"], indirect=True)
async def test_fast_promotion_waiters_wake_promptly(pair: PostgresPair) -> None:
    """chicory_result_waiters is UNLOGGED and the promoted standby never had this
    backend's registrations: when the LISTEN session comes back within the Listener's own
    retries, each waiter registers again for the new session (WaiterRegistry.renew)
    before it re-reads, so it is woken at once, not at its 30 s re-check."""
    figures, _lost, _listeners = await _fail_over(pair, 0.0, WAKE_BOUND)
    assert figures["waiters_never_woken"] == 0, figures


@pytest.mark.parametrize("pair", ["async"], indirect=True)
async def test_no_primary_among_the_hosts_is_unreachable(pair: PostgresPair) -> None:
    """Every listed server answers and none is read-write (a standby alone, or all of
    them while a promotion is pending): BackendUnreachableError, from the pool and from
    the LISTEN connection alike, never a raw asyncpg error."""
    standby = f"127.0.0.1:{pair.standby.port}"
    config = PostgresBackendConfig(
        url=f"postgresql+asyncpg://postgres@/chicory?host={standby}&host={standby}",
        connect_timeout=2.0,
    )
    assert config.sqlalchemy_url().query["target_session_attrs"] == "read-write"
    backend = DatabaseBackend(config)
    with pytest.raises(BackendUnreachableError) as raised:
        await backend.connect()
    assert "read-write" in str(raised.value) and standby in str(raised.value)
    await backend.disconnect()

    from chicory_backends.sql.notify import connect_listener

    with pytest.raises(BackendUnreachableError):
        await connect_listener(config, lambda _payload: None, lambda: None)

"""Concurrent calls from one process go to the server together, and the pool never churns.

The SQL backend sends a lone call at once and gathers the calls that arrive while it is
busy into one multi-row upsert (writes) or one ``IN``/``ANY`` read (get_result). These
tests hold it to the rules of coalesce.py on every SQL dialect we run: call order (the
terminal guard included), a refused row failing only its own call, cancelled callers,
statements on the wire, and connections bounded by the pool however bursty the calls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text

from chicory_backends.coalesce import WRITE_SENDS
from chicory_backends.errors import DatabaseError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import TaskResult, TaskState, WorkerStats
from tests.support.sent_sql import sent_statements
from tests.support.write_model import apply, call_for

Call = Callable[[], Coroutine[Any, Any, Any]]


def new_id(label: str = "c") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def result(
    task_id: str, state: TaskState, value: Any = None, error: str | None = None
) -> TaskResult:
    return TaskResult(task_id=task_id, state=state, result=value, error=error)


async def fillers(backend: DatabaseBackend) -> list[Coroutine[Any, Any, None]]:
    """Writes on ids of their own that take every send slot, so that the calls gathered
    after them wait and go to the server as one batch."""
    return [backend.set_state(new_id("filler"), TaskState.STARTED) for _ in range(WRITE_SENDS)]


# -- call order --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "writes",
    [
        [("store_result", TaskState.SUCCESS, 1), ("set_state", TaskState.STARTED, None)],
        [("set_state", TaskState.STARTED, None), ("store_result", TaskState.SUCCESS, 1)],
        [("store_result", TaskState.FAILURE, 1), ("store_result", TaskState.SUCCESS, 2)],
        [("store_result", TaskState.SUCCESS, 2), ("store_result", TaskState.FAILURE, 1)],
        [("set_state", TaskState.STARTED, None), ("set_state", TaskState.RETRY, None)],
        [("store_result", TaskState.RETRY, 3), ("set_state", TaskState.STARTED, None)],
    ],
    ids=[
        "terminal-then-late",
        "start-then-finish",
        "fail-then-succeed",
        "succeed-then-fail",
        "two-non-terminal",
        "retry-keeps-error",
    ],
)
async def test_two_writes_of_one_id_apply_in_call_order(
    sql_backend: DatabaseBackend, writes: list[tuple[str, TaskState, Any]]
) -> None:
    """Both orders of a terminal and a late write, and the other pairs. The second write
    of an id waits for the batch that carries the first (two writes of one row never
    share a statement), so the outcome is the one-at-a-time outcome by construction."""
    task_id = new_id()
    blockers = await fillers(sql_backend)
    await asyncio.gather(*blockers, *(call_for(sql_backend, task_id, w) for w in writes))
    expected: dict[str, Any] | None = None
    for write in writes:
        expected = apply(expected, write)
    got = await sql_backend.get_result(task_id)
    assert expected is not None and got is not None
    assert (got.state, got.result, got.error) == (
        expected["state"], expected["result"], expected["error"]
    )  # fmt: skip


# -- what the server sees ------------------------------------------------------------------


async def test_a_burst_of_writes_is_one_statement_per_batch(sql_backend: DatabaseBackend) -> None:
    blockers = await fillers(sql_backend)
    ids = [new_id("w") for _ in range(30)]
    async with sent_statements(sql_backend) as sent:
        await asyncio.gather(
            *blockers,
            *(sql_backend.store_result(i, result(i, TaskState.SUCCESS, i)) for i in ids),
        )
    writes = [sql for sql in sent if "chicory_task_results" in sql]
    # The fillers alone, then the 30 stores together (one executemany on asyncpg, pipelined
    # in one round trip; one multi-row INSERT on MariaDB; one executemany in one
    # transaction on SQLite).
    assert len(writes) == WRITE_SENDS + 1, sent
    if sql_backend.config.sqlalchemy_url().get_backend_name() == "sqlite":
        assert sent.count("COMMIT") == 1, sent
    if sql_backend.config.sqlalchemy_url().get_backend_name() == "mysql":
        rows = sorted(sql.count("),(") + 1 for sql in writes)
        assert rows == [*[1] * WRITE_SENDS, len(ids)], rows  # one INSERT, 30 rows
    found = await sql_backend.get_results(ids)
    assert {i: found[i].result for i in ids} == {i: i for i in ids}


async def test_concurrent_reads_share_one_statement(sql_backend: DatabaseBackend) -> None:
    ids = [new_id("g") for _ in range(40)]
    for task_id in ids[:20]:
        await sql_backend.store_result(task_id, result(task_id, TaskState.SUCCESS, task_id))
    async with sent_statements(sql_backend) as sent:
        got = await asyncio.gather(*(sql_backend.get_result(i) for i in [*ids, *ids[:5]]))
    reads = [sql for sql in sent if "chicory_task_results" in sql]
    assert len(reads) <= 3, sent  # the first ones alone, all the others together
    assert [g.result if g else None for g in got] == [
        *ids[:20], *[None] * 20, *ids[:5]
    ]  # fmt: skip


async def test_a_lone_call_is_sent_at_once(sql_backend: DatabaseBackend) -> None:
    task_id = new_id()
    async with sent_statements(sql_backend) as sent:
        await sql_backend.store_result(task_id, result(task_id, TaskState.SUCCESS, 1))
        await sql_backend.get_result(task_id)
    assert len([sql for sql in sent if "chicory_task_results" in sql]) == 2, sent
    assert not sql_backend._write_calls._tasks and not sql_backend._read_calls._tasks


# -- failures inside a batch ---------------------------------------------------------------

_REFUSE = {
    "postgresql": [
        "ALTER TABLE chicory_task_results ADD CONSTRAINT refuse_some "
        "CHECK (task_id NOT LIKE 'refused-%')"
    ],
    "mysql": [
        "ALTER TABLE chicory_task_results ADD CONSTRAINT refuse_some "
        "CHECK (task_id NOT LIKE 'refused-%')"
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_some BEFORE INSERT ON chicory_task_results "
        "WHEN NEW.task_id LIKE 'refused-%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
}
_ALLOW = {
    "postgresql": ["ALTER TABLE chicory_task_results DROP CONSTRAINT refuse_some"],
    "mysql": ["ALTER TABLE chicory_task_results DROP CONSTRAINT refuse_some"],
    "sqlite": ["DROP TRIGGER refuse_some"],
}


async def _run_ddl(backend: DatabaseBackend, statements: list[str]) -> None:
    assert backend._engine is not None
    async with backend._engine.connect() as connection:
        for sql in statements:
            await connection.execute(text(sql))


async def test_a_refused_row_fails_only_its_own_call(sql_backend: DatabaseBackend) -> None:
    dialect = sql_backend.config.sqlalchemy_url().get_backend_name()
    await _run_ddl(sql_backend, _REFUSE[dialect])
    try:
        blockers = await fillers(sql_backend)
        ids = [new_id("ok") for _ in range(10)]
        refused = new_id("refused")
        calls = [sql_backend.store_result(i, result(i, TaskState.SUCCESS, i)) for i in ids]
        calls.insert(5, sql_backend.store_result(refused, result(refused, TaskState.SUCCESS)))
        outcomes = await asyncio.gather(*blockers, *calls, return_exceptions=True)
    finally:
        await _run_ddl(sql_backend, _ALLOW[dialect])
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], DatabaseError), outcomes
    assert outcomes[WRITE_SENDS + 5] is failed[0]
    found = await sql_backend.get_results([*ids, refused])
    assert sorted(found) == sorted(ids)


async def test_a_cancelled_caller_does_not_break_the_others(sql_backend: DatabaseBackend) -> None:
    blockers = [asyncio.ensure_future(c) for c in await fillers(sql_backend)]
    ids = [new_id("k") for _ in range(20)]
    tasks = [
        asyncio.ensure_future(sql_backend.store_result(i, result(i, TaskState.SUCCESS, i)))
        for i in ids
    ]
    await asyncio.sleep(0)  # all of them queued behind the fillers
    tasks[3].cancel()
    tasks[11].cancel()
    outcomes = await asyncio.gather(*blockers, *tasks, return_exceptions=True)
    cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
    assert len(cancelled) == 2 and not [
        o for o in outcomes if isinstance(o, BaseException) and o not in cancelled
    ]  # fmt: skip
    found = await sql_backend.get_results(ids)
    assert set(ids) - {ids[3], ids[11]} <= set(found)  # a cancelled one may have landed
    # And the backend goes on: nothing is left waiting or holding a key.
    task_id = new_id()
    await asyncio.wait_for(
        sql_backend.store_result(task_id, result(task_id, TaskState.SUCCESS)), 10
    )
    assert not sql_backend._write_calls._pending and not sql_backend._write_calls._busy_keys


async def test_disconnect_waits_for_queued_writes(sql_backend: DatabaseBackend) -> None:
    ids = [new_id("d") for _ in range(40)]
    tasks = [
        asyncio.ensure_future(sql_backend.store_result(i, result(i, TaskState.SUCCESS, i)))
        for i in ids
    ]
    await asyncio.sleep(0)
    await sql_backend.disconnect()
    await asyncio.gather(*tasks)  # every one of them acknowledged, none failed
    await sql_backend.connect()
    assert len(await sql_backend.get_results(ids)) == len(ids)


# -- connections ---------------------------------------------------------------------------


def count_connects(backend: DatabaseBackend) -> list[int]:
    assert backend._engine is not None
    opened = [0]

    def on_connect(*_args: Any) -> None:
        opened[0] += 1

    event.listen(backend._engine.sync_engine, "connect", on_connect)
    return opened


async def burst(backend: DatabaseBackend, width: int) -> None:
    ids = [new_id("b") for _ in range(width)]
    stats = WorkerStats(
        worker_id="w", hostname="h", pid=1, queue="default", concurrency=32,
        started_at=datetime.now(UTC),
    )  # fmt: skip
    calls: list[Any] = []
    for n, task_id in enumerate(ids):
        calls.append(backend.set_state(task_id, TaskState.STARTED))
        calls.append(backend.store_result(task_id, result(task_id, TaskState.SUCCESS, n)))
        calls.append(backend.get_result(task_id))
        if n % 8 == 0:
            calls.append(backend.store_heartbeat(f"w{n}", stats))
            calls.append(backend.get_results(ids[: n + 1]))
    await asyncio.gather(*calls)


async def test_bursts_never_open_more_connections_than_the_pool_holds(
    make_sql_backend: Callable[..., Any],
) -> None:
    """Chicory's worker runs 32 tasks at once; bursts far wider than the pool, batch after
    batch, on one object and on fresh ones, open at most the pool's maximum each."""
    backend: DatabaseBackend = await make_sql_backend(pool_size=2, max_overflow=1)
    if backend.config.sqlalchemy_url().database in (None, "", ":memory:"):
        pytest.skip("an in-memory SQLite database has one connection")
    opened = count_connects(backend)
    for _round in range(15):
        await burst(backend, 64)
    assert 1 <= opened[0] <= 3, opened
    for _fresh in range(3):
        fresh: DatabaseBackend = await make_sql_backend(pool_size=2, max_overflow=1)
        opened_fresh = count_connects(fresh)
        for _round in range(3):
            await burst(fresh, 64)
        await fresh.disconnect()
        assert opened_fresh[0] <= 3, opened_fresh


async def test_set_state_and_store_result_share_a_batch(sql_backend: DatabaseBackend) -> None:
    """A worker interleaves set_state(STARTED) of one task with store_result of another:
    one statement for both kinds on PostgreSQL, one per kind elsewhere (SQLite: in one
    transaction)."""
    blockers = await fillers(sql_backend)
    started = [new_id("s") for _ in range(10)]
    finished = [new_id("f") for _ in range(10)]
    calls = []
    for s_id, f_id in zip(started, finished, strict=True):
        calls.append(sql_backend.set_state(s_id, TaskState.STARTED))
        calls.append(sql_backend.store_result(f_id, result(f_id, TaskState.SUCCESS, f_id)))
    async with sent_statements(sql_backend) as sent:
        await asyncio.gather(*blockers, *calls)
    writes = [sql for sql in sent if "chicory_task_results" in sql]
    dialect = sql_backend.config.sqlalchemy_url().get_backend_name()
    assert len(writes) == WRITE_SENDS + (1 if dialect == "postgresql" else 2), writes
    if dialect == "sqlite":
        assert sent.count("COMMIT") == 1, sent
    found = await sql_backend.get_results([*started, *finished])
    assert {i: found[i].state for i in started} == dict.fromkeys(started, TaskState.STARTED)
    assert {i: found[i].result for i in finished} == {i: i for i in finished}


async def test_the_writes_connection_goes_back_to_the_pool_when_idle(
    sql_backend: DatabaseBackend,
) -> None:
    """Writes keep one pooled connection while they keep coming, and return it after
    ``idle`` seconds without any, so the pool holds it again for everything else."""
    if sql_backend._executor is None or not sql_backend._executor.holds_writes:
        pytest.skip("an in-memory SQLite database has one shared connection")
    assert sql_backend._engine is not None
    pool = sql_backend._engine.sync_engine.pool
    task_id = new_id()
    await sql_backend.store_result(task_id, result(task_id, TaskState.SUCCESS, 1))
    assert pool.checkedout() == 1  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    await sql_backend.set_state(new_id(), TaskState.STARTED)  # still in use: kept
    await asyncio.sleep(0.3)
    assert pool.checkedout() == 1  # type: ignore[attr-defined]
    deadline = asyncio.get_running_loop().time() + 5
    while pool.checkedout():  # type: ignore[attr-defined]
        assert asyncio.get_running_loop().time() < deadline, "never returned"
        await asyncio.sleep(0.05)
    await sql_backend.store_result(task_id, result(task_id, TaskState.FAILURE, 2))  # again
    found = await sql_backend.get_result(task_id)
    assert found is not None and found.result == 2

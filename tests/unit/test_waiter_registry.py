"""WaiterRegistry (sql/notify.py) over a fake waiter table: batching, sharing, ordering.

The registry takes its three statements as callables (register and unregister a batch
of ids under its token, fence a batch); the fake records them in the order they were
run, keeps the rows, and can hold a statement back or make it fail once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from chicory_backends.errors import DatabaseError
from chicory_backends.sql.notify import WaiterRegistry
from tests.unit.support import Gate, settle


class FakeTable:
    """``chicory_result_waiters`` and the fence, as the registry's callables."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list[str]]] = []
        self.rows: set[tuple[str, str]] = set()  # (task id, waiter token)
        self.gates: dict[str, Gate] = {}
        self.fail_once: dict[str, Exception] = {}

    def hold(self, statement: str) -> Gate:
        gate = self.gates[statement] = Gate(is_open=False)
        return gate

    async def _run(self, statement: str, ids: list[str]) -> None:
        self.log.append((statement, list(ids)))
        gate = self.gates.get(statement)
        if gate is not None:
            await gate.passed()
        error = self.fail_once.pop(statement, None)
        if error is not None:
            raise error

    async def register(self, ids: list[str], token: str) -> None:
        await self._run("register", ids)
        self.rows |= {(task_id, token) for task_id in ids}

    async def unregister(self, ids: list[str], token: str) -> None:
        await self._run("unregister", ids)
        self.rows -= {(task_id, token) for task_id in ids}

    async def fence(self, ids: list[str]) -> None:
        await self._run("fence", ids)

    def registry(self, max_batch: int = 1000) -> WaiterRegistry:
        return WaiterRegistry(self.register, self.unregister, self.fence, max_batch=max_batch)


async def until_idle(registry: WaiterRegistry) -> None:
    for _ in range(100):
        if registry.idle:
            return
        await asyncio.sleep(0)
    raise AssertionError("the registry never became idle")


async def test_acquire_returns_once_the_id_is_registered_and_then_fenced() -> None:
    table = FakeTable()
    registry = table.registry()
    fence = table.hold("fence")
    acquiring = asyncio.ensure_future(registry.acquire("t"))
    await settle()
    assert table.log == [("register", ["t"]), ("fence", ["t"])]
    assert table.rows == {("t", registry.token)} and not acquiring.done()
    fence.open()
    await acquiring
    uuid.UUID(registry.token)  # one token (a uuid) per registry, bound to its rows


async def test_the_acquisitions_of_one_loop_turn_share_one_statement() -> None:
    table = FakeTable()
    registry = table.registry()
    await asyncio.gather(*(registry.acquire(task_id) for task_id in ("a", "b", "c")))
    assert table.log == [("register", ["a", "b", "c"]), ("fence", ["a", "b", "c"])]
    assert registry.waited_for == 3


async def test_at_most_max_batch_ids_go_in_one_statement() -> None:
    table = FakeTable()
    registry = table.registry(max_batch=2)
    await asyncio.gather(*(registry.acquire(task_id) for task_id in "abcde"))
    registers = [ids for statement, ids in table.log if statement == "register"]
    fences = [ids for statement, ids in table.log if statement == "fence"]
    assert registers == [["a", "b"], ["c", "d"], ["e"]]
    assert sorted(fences) == registers  # each batch fenced, concurrently


async def test_waiters_of_one_id_share_its_row_until_the_last_one_releases() -> None:
    table = FakeTable()
    registry = table.registry()
    await asyncio.gather(registry.acquire("t"), registry.acquire("t"))
    assert table.log == [("register", ["t"]), ("fence", ["t"])]
    registry.release("t")
    await until_idle(registry)
    assert table.rows == {("t", registry.token)}  # the other one still waits
    registry.release("t")
    await until_idle(registry)
    assert table.log[-1] == ("unregister", ["t"]) and table.rows == set()
    assert registry.waited_for == 0


async def test_a_release_and_a_new_acquire_in_one_turn_keep_the_row() -> None:
    table = FakeTable()
    registry = table.registry()
    await registry.acquire("t")
    registry.release("t")
    await registry.acquire("t")  # before the deletion went out: the row stays
    await until_idle(registry)
    assert table.log == [("register", ["t"]), ("fence", ["t"])]
    assert table.rows == {("t", registry.token)}


async def test_a_deletion_never_overtakes_the_registration_that_follows_it() -> None:
    table = FakeTable()
    registry = table.registry()
    await registry.acquire("t")
    unregister = table.hold("unregister")
    registry.release("t")
    await settle()
    assert table.log[-1] == ("unregister", ["t"])  # at the server, held there
    acquiring = asyncio.ensure_future(registry.acquire("t"))
    await settle()
    assert not acquiring.done()
    unregister.open()
    await acquiring
    assert [statement for statement, _ids in table.log] == [
        "register", "fence", "unregister", "register", "fence"
    ]  # fmt: skip
    assert table.rows == {("t", registry.token)}


@pytest.mark.parametrize("statement", ["register", "fence"])
async def test_a_failed_registration_fails_its_waiters_and_the_next_acquire_tries_again(
    statement: str,
) -> None:
    table = FakeTable()
    registry = table.registry()
    table.fail_once[statement] = DatabaseError("refused")

    async def wait(task_id: str) -> None:
        async with registry.held(task_id):
            pass

    outcomes = await asyncio.gather(wait("t"), wait("t"), return_exceptions=True)
    assert all(isinstance(outcome, DatabaseError) for outcome in outcomes)
    assert registry.waited_for == 0  # held() released them although acquire raised
    await wait("t")
    assert [ids for name, ids in table.log if name == "register"] == [["t"], ["t"]]
    await until_idle(registry)


async def test_a_failed_deletion_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    table = FakeTable()
    registry = table.registry()
    await registry.acquire("t")
    table.fail_once["unregister"] = DatabaseError("gone")
    with caplog.at_level(logging.WARNING, logger="chicory_backends.sql.notify"):
        registry.release("t")
        await until_idle(registry)
    assert "could not unregister 1 waiters" in caplog.text
    await registry.acquire("u")  # and the registry goes on
    assert table.log[-1] == ("fence", ["u"])


async def test_a_cancelled_waiter_does_not_cancel_the_registration_of_the_others() -> None:
    table = FakeTable()
    registry = table.registry()
    register = table.hold("register")
    first = asyncio.ensure_future(registry.acquire("t"))
    second = asyncio.ensure_future(registry.acquire("t"))
    await settle()
    first.cancel()
    await settle()
    register.open()
    await second
    assert first.cancelled()
    assert table.log == [("register", ["t"]), ("fence", ["t"])]


async def test_an_id_released_before_its_registration_went_out_is_never_registered() -> None:
    table = FakeTable()
    registry = table.registry()
    acquiring = asyncio.ensure_future(registry.acquire("t"))
    await asyncio.sleep(0)  # acquire has queued the id; the statement is not out yet
    acquiring.cancel()
    registry.release("t")
    await until_idle(registry)
    assert ("register", ["t"]) not in table.log and table.rows == set()


async def test_renew_registers_a_held_id_again_once_per_listening_session() -> None:
    """After a fail-over the rows are gone with the old server: each held id is
    registered again, and fenced, once per new session however many wait for it."""
    table = FakeTable()
    registry = table.registry()
    await asyncio.gather(registry.acquire("t"), registry.acquire("t"))
    table.log.clear()
    table.rows.clear()  # the promoted standby never had them
    await asyncio.gather(registry.renew("t", 2), registry.renew("t", 2))
    assert table.log == [("register", ["t"]), ("fence", ["t"])]
    assert table.rows == {("t", registry.token)}
    await registry.renew("t", 2)  # the same session again: nothing to do
    assert table.log == [("register", ["t"]), ("fence", ["t"])]
    await registry.renew("t", 3)
    assert table.log[2:] == [("register", ["t"]), ("fence", ["t"])]
    await registry.renew("gone", 3)  # nobody holds it: no row for it
    assert ("gone", registry.token) not in table.rows
    registry.release("t")
    registry.release("t")
    await until_idle(registry)
    assert table.rows == set()

"""Coalescer (coalesce.py): each rule of its docstring, held by fake send functions.

A call here is a string whose first letter is its key ("a1", "a2" are two writes of row
"a"). The fake server records every send, applies each call to a dict (the table) in the
order it received them, and can be held busy, gate by gate, to make calls pile up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable, Sequence

import pytest

from chicory_backends.coalesce import Coalescer
from tests.unit.support import Gate, settle


class Refused(Exception):
    """The server refused a row (the kind of error ``isolate`` picks out)."""


class FakeServer:
    """``send_one`` / ``send_batch`` of a fake server, with what they were sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Hashable, list[str]]] = []  # ("one" | "batch", group, calls)
        self.tasks: list[asyncio.Task[object] | None] = []  # the task each send ran on
        self.table: dict[str, str] = {}  # key -> the last call applied to it
        self.refused: set[str] = set()  # calls that fail the whole batch they are in
        self.rejected: set[str] = set()  # calls a batch answers with an error of their own
        self.batch_error: BaseException | None = None
        self.in_flight: list[str] = []  # keys being sent right now
        self.overlaps: list[str] = []  # keys that were sent twice at once
        self._gates: list[Gate] = []
        self._jitter: random.Random | None = None

    def hold(self) -> Gate:
        """Keep the next send that has no gate yet busy until the gate opens."""
        gate = Gate(is_open=False)
        self._gates.append(gate)
        return gate

    def jitter(self, seed: int) -> None:
        """Make every send take a few (seeded, so repeatable) event-loop turns."""
        self._jitter = random.Random(seed)

    async def one(self, group: Hashable, call: str) -> str:
        self.sent.append(("one", group, [call]))
        self.tasks.append(asyncio.current_task())
        await self._serve([call])
        if call in self.refused or call in self.rejected:
            raise Refused(call)
        self.table[call[0]] = call
        return f"ok:{call}"

    async def batch(self, group: Hashable, calls: list[str]) -> Sequence[str | BaseException]:
        self.sent.append(("batch", group, list(calls)))
        await self._serve(calls)
        if self.batch_error is not None:
            raise self.batch_error
        if self.refused & set(calls):
            raise Refused("a row of the batch")
        answers: list[str | BaseException] = []
        for call in calls:
            if call in self.rejected:
                answers.append(Refused(call))
            else:
                self.table[call[0]] = call
                answers.append(f"ok:{call}")
        return answers

    async def _serve(self, calls: list[str]) -> None:
        keys = [call[0] for call in calls]
        self.overlaps += [key for key in keys if key in self.in_flight]
        self.in_flight += keys
        try:
            gate = self._gates.pop(0) if self._gates else None
            if gate is not None:
                await gate.passed()
            if self._jitter is not None:
                await settle(self._jitter.randrange(4))
        finally:
            for key in keys:
                self.in_flight.remove(key)

    def batches(self) -> list[list[str]]:
        return [calls for _kind, _group, calls in self.sent]


def coalescer(server: FakeServer, **options: object) -> Coalescer[str, str]:
    settings: dict[str, object] = {"exclusive": True, "isolate": lambda e: isinstance(e, Refused)}
    settings.update(options)
    return Coalescer(server.one, server.batch, **settings)  # type: ignore[arg-type]


def submit(
    calls: Coalescer[str, str], call: str, group: Hashable = "g", size: int = 0
) -> asyncio.Task[str]:
    return asyncio.get_running_loop().create_task(calls.submit(group, call[0], call, size))


async def test_a_lone_call_is_sent_at_once_on_the_callers_own_task() -> None:
    server = FakeServer()
    assert await coalescer(server).submit("g", "a", "a1") == "ok:a1"
    assert server.sent == [("one", "g", ["a1"])]
    assert server.tasks == [asyncio.current_task()]  # no task of its own, no loop turn lost


async def test_calls_arriving_while_busy_go_as_one_batch_once_the_send_is_done() -> None:
    server = FakeServer()
    busy = server.hold()
    calls = coalescer(server, exclusive=False)
    first = submit(calls, "a1")
    await settle()
    later = [submit(calls, call) for call in ("b1", "c1", "d1")]
    await settle()
    assert server.sent == [("one", "g", ["a1"])]
    assert not any(task.done() for task in [first, *later])  # each waits for its own send
    busy.open()
    assert await asyncio.gather(first, *later) == ["ok:a1", "ok:b1", "ok:c1", "ok:d1"]
    assert server.sent == [("one", "g", ["a1"]), ("batch", "g", ["b1", "c1", "d1"])]


async def test_up_to_max_in_flight_sends_run_at_once() -> None:
    server = FakeServer()
    gates = [server.hold(), server.hold()]
    calls = coalescer(server, max_in_flight=2)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1", "d1")]
    await settle()
    assert server.sent == [("one", "g", ["a1"]), ("one", "g", ["b1"])]  # c1, d1 wait
    for gate in gates:
        gate.open()
    assert await asyncio.gather(*tasks) == ["ok:a1", "ok:b1", "ok:c1", "ok:d1"]
    assert server.batches()[2:] == [["c1", "d1"]]


async def test_a_batch_holds_at_most_max_calls() -> None:
    server = FakeServer()
    busy = server.hold()
    calls = coalescer(server, exclusive=False, max_calls=2)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1", "d1", "e1", "f1")]
    await settle()
    busy.open()
    assert await asyncio.gather(*tasks) == [f"ok:{key}1" for key in "abcdef"]
    assert server.batches() == [["a1"], ["b1", "c1"], ["d1", "e1"], ["f1"]]


async def test_a_batch_holds_about_max_bytes_and_a_larger_call_still_goes_alone() -> None:
    server = FakeServer()
    busy = server.hold()
    calls = coalescer(server, exclusive=False, max_bytes=10)
    sizes = {"a1": 1, "b1": 4, "c1": 4, "d1": 4, "e1": 30}
    tasks = [submit(calls, call, size=size) for call, size in sizes.items()]
    await settle()
    busy.open()
    assert await asyncio.gather(*tasks) == [f"ok:{call}" for call in sizes]
    assert server.batches() == [["a1"], ["b1", "c1"], ["d1"], ["e1"]]
    assert all(sum(sizes[c] for c in batch) <= 10 for batch in server.batches() if len(batch) > 1)


async def test_calls_of_different_groups_never_share_a_batch() -> None:
    server = FakeServer()
    busy = server.hold()
    calls = coalescer(server, exclusive=False)
    tasks = [submit(calls, "a1", "g1")]
    await settle()
    tasks += [submit(calls, "b1", "g1"), submit(calls, "c1", "g2"), submit(calls, "d1", "g1")]
    await settle()
    busy.open()
    await asyncio.gather(*tasks)
    assert server.sent == [
        ("one", "g1", ["a1"]),
        ("batch", "g1", ["b1", "d1"]),
        ("one", "g2", ["c1"]),
    ]


async def test_exclusive_keys_never_share_a_batch_run_at_once_or_overtake() -> None:
    server = FakeServer()
    first, second = server.hold(), server.hold()
    calls = coalescer(server, max_in_flight=2)
    tasks = [submit(calls, "a1")]
    await settle()
    tasks += [submit(calls, call) for call in ("a2", "b1", "a3", "b2")]
    await settle()
    # a2 waits for a1 (same key); b1 may go meanwhile; a3 and b2 queue behind them.
    assert server.batches() == [["a1"], ["b1"]]
    first.open()
    second.open()
    assert await asyncio.gather(*tasks) == ["ok:a1", "ok:a2", "ok:b1", "ok:a3", "ok:b2"]
    assert not any(len({c[0] for c in batch}) < len(batch) for batch in server.batches())
    sent = [call for batch in server.batches() for call in batch]
    assert [c for c in sent if c[0] == "a"] == ["a1", "a2", "a3"]
    assert [c for c in sent if c[0] == "b"] == ["b1", "b2"]
    assert server.overlaps == []
    assert server.table == {"a": "a3", "b": "b2"}


@pytest.mark.parametrize("seed", range(5))
async def test_random_bursts_equal_the_calls_applied_one_by_one_in_call_order(seed: int) -> None:
    """Exclusive mode: whatever the batching, the table ends as if every call had been
    sent alone, in call order (seeded: the same bursts each run)."""
    rng = random.Random(seed)
    server = FakeServer()
    server.jitter(seed)
    calls = coalescer(server, max_in_flight=3, max_calls=4)
    expected: dict[str, str] = {}
    tasks: list[asyncio.Task[str]] = []
    for n in range(200):
        call = f"{rng.choice('abcdef')}{n}"
        expected[call[0]] = call
        tasks.append(submit(calls, call))
        if rng.random() < 0.3:
            await settle(rng.randrange(3))
    assert await asyncio.gather(*tasks) == [f"ok:{task_call}" for task_call in _calls(tasks)]
    assert server.table == expected
    assert server.overlaps == []
    assert any(len(batch) > 1 for batch in server.batches())  # it did coalesce


def _calls(tasks: list[asyncio.Task[str]]) -> list[str]:
    return [task.result().removeprefix("ok:") for task in tasks]


async def test_a_refused_batch_is_sent_again_one_call_at_a_time_so_only_the_bad_call_fails() -> (
    None
):
    server = FakeServer()
    server.refused = {"c1"}
    busy = server.hold()
    calls = coalescer(server)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1", "d1")]
    await settle()
    busy.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[:2] == ["ok:a1", "ok:b1"] and outcomes[3] == "ok:d1"
    assert isinstance(outcomes[2], Refused)
    assert server.sent[1:] == [
        ("batch", "g", ["b1", "c1", "d1"]),
        ("one", "g", ["b1"]),
        ("one", "g", ["c1"]),
        ("one", "g", ["d1"]),
    ]


async def test_any_other_batch_error_fails_every_call_of_the_batch_and_nothing_hangs() -> None:
    server = FakeServer()
    server.batch_error = ConnectionResetError("the server went away")
    busy = server.hold()
    calls = coalescer(server)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1")]
    await settle()
    busy.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == "ok:a1"
    assert all(outcome is server.batch_error for outcome in outcomes[1:])
    assert server.batches() == [["a1"], ["b1", "c1"]]  # not sent again one by one
    assert await calls.submit("g", "d", "d1") == "ok:d1"  # and the coalescer goes on


async def test_an_error_answered_for_one_call_fails_that_call_alone() -> None:
    server = FakeServer()
    server.rejected = {"b1"}
    busy = server.hold()
    calls = coalescer(server)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1")]
    await settle()
    busy.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == "ok:a1" and outcomes[2] == "ok:c1"
    assert isinstance(outcomes[1], Refused)
    assert server.batches() == [["a1"], ["b1", "c1"]]


async def test_a_caller_cancelled_while_queued_is_dropped_and_never_sent() -> None:
    server = FakeServer()
    busy = server.hold()
    calls = coalescer(server)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1")]
    await settle()
    tasks[1].cancel()
    await settle()
    busy.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == "ok:a1" and outcomes[2] == "ok:c1"
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert server.batches() == [["a1"], ["c1"]]
    assert "b" not in server.table


async def test_a_caller_cancelled_once_its_batch_was_sent_leaves_it_to_finish_for_the_others() -> (
    None
):
    server = FakeServer()
    first, batch = server.hold(), server.hold()
    calls = coalescer(server)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1")]
    await settle()
    first.open()
    await settle()
    assert server.batches() == [["a1"], ["b1", "c1"]]  # the batch is at the server
    tasks[1].cancel()
    await settle()
    batch.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == "ok:a1" and outcomes[2] == "ok:c1"
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert server.table["b"] == "b1"  # sent, so written: only the wait was given up


async def test_drain_waits_until_every_submitted_call_is_answered() -> None:
    server = FakeServer()
    calls = coalescer(server)
    await calls.drain()  # idle: returns at once
    busy = server.hold()
    tasks = [submit(calls, call) for call in ("a1", "b1", "a2")]
    await settle()
    drained = asyncio.get_running_loop().create_task(calls.drain())
    await settle()
    assert not drained.done()
    busy.open()
    await drained
    assert all(task.done() for task in tasks)
    assert server.table == {"a": "a2", "b": "b1"}


async def test_linger_gathers_the_calls_of_one_loop_turn_into_one_batch() -> None:
    server = FakeServer()
    calls = coalescer(server, exclusive=False, linger=True, max_in_flight=4)
    tasks = [submit(calls, call) for call in ("a1", "b1", "c1")]
    assert await asyncio.gather(*tasks) == ["ok:a1", "ok:b1", "ok:c1"]
    assert server.sent == [("batch", "g", ["a1", "b1", "c1"])]
    assert await calls.submit("g", "d", "d1") == "ok:d1"  # a lone one still goes, alone
    assert server.sent[-1] == ("one", "g", ["d1"])


@pytest.mark.parametrize("limits", [{"max_in_flight": 0}, {"max_calls": 0}])
def test_limits_below_one_are_refused(limits: dict[str, int]) -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="at least 1"):
        coalescer(server, **limits)

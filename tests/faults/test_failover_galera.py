"""MariaDB Galera: three nodes on loopback (galera-4, rsync SST), started by this module.

- the Backend contract (tests/test_contract.py, unchanged) passes on a backend whose URL
  lists the nodes;
- writers on different nodes racing on one task id see no error: Galera's certification
  conflicts (error 1213) are retried, the upserts being idempotent;
- a node killed mid-stream (SIGKILL): calls move to the next node listed in the URL
  (``?host=n3&host=n1&host=n2``), nothing acknowledged is lost, waiters wake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import delete

from chicory_backends.base import Backend
from chicory_backends.config import MySQLBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.schema import task_results, worker_heartbeats
from chicory_backends.types import TaskResult, TaskState
from tests.contract import test_contract
from tests.support.backends import MakeBackend
from tests.support.replicated_servers import FailoverStream, GaleraCluster, GaleraNode

pytestmark = pytest.mark.slow

# The contract, collected here too, against this module's `backend` / `make_backend`.
globals().update(
    {name: getattr(test_contract, name) for name in dir(test_contract) if name.startswith("test_")}
)

SETTINGS: dict[str, Any] = {"connect_timeout": 2.0, "command_timeout": 5.0, "pool_size": 4}
PHASE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    from tests.support.owned_servers import migrate

    cluster = GaleraCluster()
    try:
        cluster.start()
        migrate(config_of(cluster.nodes[0]))
        yield cluster
    finally:
        cluster.remove()


def config_of(*nodes: GaleraNode, **overrides: Any) -> MySQLBackendConfig:
    """A backend config whose URL lists ``nodes``, in that order."""
    hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in nodes)
    url = f"mysql+aiomysql://root@/chicory?{hosts}"
    return MySQLBackendConfig(url=url, **(SETTINGS | overrides))


def alive(cluster: GaleraCluster) -> list[GaleraNode]:
    return [node for node in cluster.nodes if node.process is not None]


@pytest.fixture
async def make_backend(galera: GaleraCluster) -> AsyncIterator[MakeBackend]:
    opened: list[DatabaseBackend] = []
    first, second = alive(galera)[:2]

    async def make(**overrides: Any) -> Backend:
        backend = DatabaseBackend(config_of(first, second, **overrides))
        await backend.connect()
        if not opened:
            assert backend._engine is not None
            async with backend._engine.connect() as connection:
                await connection.execute(delete(task_results))
                await connection.execute(delete(worker_heartbeats))
        opened.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in opened:
            await backend.disconnect()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> Backend:
    return await make_backend()


async def test_racing_writers_on_different_nodes(galera: GaleraCluster) -> None:
    """Each round, one backend per node: 20 set_state and a store_result of one task id
    at once, through different nodes; no caller sees an error, the terminal one wins."""
    nodes = alive(galera)
    assert len(nodes) >= 2
    backends = [DatabaseBackend(config_of(node)) for node in nodes]
    for backend in backends:
        await backend.connect()
    conflicts_before = await asyncio.to_thread(_conflicts, nodes)
    try:
        for round_ in range(20):
            task_id = f"race-{round_}-{time.monotonic_ns()}"
            final = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"r": round_})
            states = [TaskState.STARTED, TaskState.RETRY, TaskState.PENDING]
            calls = [
                backends[n % len(backends)].set_state(task_id, states[n % 3]) for n in range(20)
            ]
            calls.insert(10, backends[round_ % len(backends)].store_result(task_id, final))
            await asyncio.gather(*calls)
            for backend in backends:  # every node ends with the terminal result
                deadline = time.monotonic() + 5
                while (got := await backend.get_result(task_id)) != final:
                    assert time.monotonic() < deadline, (got, final)
                    await asyncio.sleep(0.05)
    finally:
        for backend in backends:
            await backend.disconnect()
    conflicts = await asyncio.to_thread(_conflicts, nodes) - conflicts_before
    print(f"\ngalera racing writers: {conflicts} certification conflicts, all retried")


def _conflicts(nodes: list[GaleraNode]) -> int:
    """Certification failures and brute-force aborts, summed over the nodes."""
    names = ("wsrep_local_cert_failures", "wsrep_local_bf_aborts")
    return sum(int(node.status(name) or 0) for node in nodes for name in names)


async def test_node_killed_calls_move_to_the_next(galera: GaleraCluster) -> None:
    victim, *others = alive(galera)[::-1]  # the last node: the other tests use the first two
    config = config_of(victim, *others)
    writer, client = DatabaseBackend(config), DatabaseBackend(config)
    await writer.connect()
    await client.connect()
    stream = FailoverStream(writer, client)
    waiter_ids = [f"{stream.prefix}-waited-{n}" for n in range(8)]
    writers = [asyncio.create_task(stream.writer_loop()) for _ in range(4)]
    waiters = [asyncio.create_task(stream.waiter(task_id, 60.0)) for task_id in waiter_ids]
    try:
        await stream.until(lambda: len(stream.acked) >= 200, "writes", writers)
        await asyncio.to_thread(victim.kill)
        stream.killed_at = stream.promoted_at = time.monotonic()  # nothing to promote
        await stream.until(
            lambda: stream.acks_after(stream.killed_at or 0) >= 200, "resumed", writers
        )
        stream.stop()  # the writers' part is done: spare the CPU
        for task_id in waiter_ids:
            await stream.store_retrying(task_id)
        await asyncio.wait_for(asyncio.gather(*waiters), 20.0)
    finally:
        await stream.finish(writers, waiters)
    try:
        lost = await stream.lost(writer)
    finally:
        await client.disconnect()
        await writer.disconnect()
    figures = stream.figures(len(lost), len(waiter_ids))
    print(f"\ngalera node killed: {figures}; reasons: {sorted(stream.reasons)}")
    # The group drops the dead node after evs.suspect_timeout (1.5 s here, 5 s by default).
    assert figures["kill_to_first_write_s"] is not None and figures["kill_to_first_write_s"] < 10
    assert not lost, f"{len(lost)} acknowledged results lost, e.g. {lost[:3]}"
    assert figures["waiters_never_woken"] == 0, figures


def test_hosts_in_the_url_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    in_url = MySQLBackendConfig(url="mysql+aiomysql://u@/db?host=n1:3307&host=n2:3308")
    assert in_url.server_hosts() == [("n1", 3307), ("n2", 3308)]
    assert in_url.address() == "n1:3307,n2:3308"
    assert MySQLBackendConfig(url="mysql+aiomysql://u@h:1/db").server_hosts() == []
    monkeypatch.setenv("CHICORY_BACKEND_MYSQL_HOSTS", "n1, n2:3308")
    from_variable = MySQLBackendConfig(username="u", database="db")
    assert from_variable.server_hosts() == [("n1", 3306), ("n2", 3308)]
    url = from_variable.sqlalchemy_url()
    assert url.host is None and url.query["host"] == ("n1:3306", "n2:3308")
    assert "target_session_attrs" not in url.query  # every Galera node takes writes

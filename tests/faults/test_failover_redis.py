"""Redis fail-over: a master dies and its replica takes over, behind Sentinel and in a
Cluster with a replica per master.

Writers store results without pause and waiters block on results not stored yet; the
master is killed (SIGKILL on its process group). Sentinel (quorum 1) or the Cluster's own
failure detection promotes the replica; calls fail only with BackendUnreachableError, for
a bounded time, then succeed in the same process, and every waiter wakes. Redis
replicates asynchronously: acknowledged results lost are counted and printed (``-s``),
with a plain backend and, when RedisBackendConfig has ``wait_replicas``, with a terminal
write that waits for a replica (WAIT), where none may be lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot

from chicory_backends.config import RedisBackendConfig
from tests.support.replicated_servers import (
    ClusterWithReplicas,
    FailoverStream,
    SentinelWithReplica,
)

pytestmark = pytest.mark.slow

WRITERS = 4
WAITERS = 8
ACKS_BEFORE_KILL = 300
ACKS_AFTER = 200
PHASE_TIMEOUT = 30.0
LAG = 0.5  # the lagging replica: its stream held back this long before the master dies
LAG_MARGIN = 0.25
UNREACHABLE_BOUND = 15.0  # the kill to the last error any caller saw
# The fail-over runs use the plain backend: with wait_replicas=1 and the only replica
# promoted, no replica is left to confirm a write, so writes fail until one rejoins (by
# design); what the option buys is measured apart, in test_wait_replicas_* below.
WAIT_OPTIONS: dict[str, dict[str, Any]] = {"plain": {}}


def _wait_option(name: str) -> dict[str, Any]:
    return WAIT_OPTIONS[name]


async def _run(
    label: str,
    config: RedisBackendConfig,
    kill: Callable[[], None],
    promoted: Callable[[], bool],
    affected: Callable[[str], bool] | None = None,
    before_kill: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    from chicory_backends.redis import RedisBackend

    writer, client = RedisBackend(config), RedisBackend(config)
    await writer.connect()
    await client.connect()
    stream = FailoverStream(writer, client)
    waiter_ids = [f"{stream.prefix}-waited-{n}" for n in range(WAITERS)]
    writers = [asyncio.create_task(stream.writer_loop()) for _ in range(WRITERS)]
    waiters = [asyncio.create_task(stream.waiter(task_id, 90.0)) for task_id in waiter_ids]
    try:
        await stream.until(lambda: len(stream.acked) >= ACKS_BEFORE_KILL, "writes", writers)
        await asyncio.sleep(0.2)  # the waiters subscribed
        lag_from = time.monotonic()
        if before_kill is not None:
            await before_kill()
        await asyncio.to_thread(kill)
        stream.killed_at = time.monotonic()
        acked_at_kill = len(stream.acked)
        await stream.until(promoted, "the replica promoted", writers)
        stream.promoted_at = time.monotonic()
        await stream.until(
            lambda: stream.acks_after(stream.promoted_at or 0) >= ACKS_AFTER, "resumed", writers
        )
        stream.stop()  # the writers' part is done: spare the CPU
        for task_id in waiter_ids:
            await stream.store_retrying(task_id)
        stored_for_waiters = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*waiters), 20.0)
        late = [t - stored_for_waiters for t in stream.woken.values()]
    finally:
        await stream.finish(writers, waiters)
    try:
        lost = await stream.lost(writer)
        maybe = await writer.get_results(stream.uncertain)
    finally:
        await client.disconnect()
        await writer.disconnect()
    # On Cluster, the writes that matter are those to the killed master's slots.
    figures = stream.figures(len(lost), WAITERS, affected)
    figures["acked_at_kill"] = acked_at_kill
    acked_at = dict(zip(stream.acked, stream.ack_times, strict=True))
    # What a lag loses is what was acknowledged during it, nothing older (give or take
    # the relay thread's turn for the GIL: bytes it had not read yet when told to hold).
    figures["lost_acked_before_lag"] = sum(
        1 for task_id in lost if acked_at[task_id] < lag_from - LAG_MARGIN
    )
    figures["kill_to_promotion_s"] = round(stream.promoted_at - stream.killed_at, 3)
    figures["max_wake_after_store_s"] = round(max(late, default=0.0), 3)
    print(f"\n{label}: {figures}; reasons: {sorted(stream.reasons)}")

    last_error = max(stream.error_times, default=stream.killed_at)
    assert last_error - stream.killed_at < UNREACHABLE_BOUND, figures
    assert figures["waiters_never_woken"] == 0, figures
    for task_id, got in maybe.items():  # a failed store landed whole or not at all
        assert got.result == {"id": task_id}
    figures["lost_ids"] = lost
    return figures


@pytest.mark.parametrize("lagging", [False, True], ids=["replica-current", "replica-lagging"])
@pytest.mark.parametrize("wait", list(WAIT_OPTIONS))
async def test_sentinel_master_killed_replica_promoted(wait: str, lagging: bool) -> None:
    """``replica-lagging``: the replica's stream is held back for LAG seconds (a relay
    between it and the master) and the master killed with what it held dropped: what the
    master acknowledged meanwhile is lost without WAIT, never acknowledged with it."""
    options = _wait_option(wait)
    topology = SentinelWithReplica(down_after_ms=1000, proxied=lagging)

    async def lag() -> None:
        assert topology.proxy is not None
        topology.proxy.hold()
        await asyncio.sleep(LAG)

    def kill() -> None:
        topology.master.kill()
        if topology.proxy is not None:
            topology.proxy.sever()

    try:
        await asyncio.to_thread(topology.start)
        old_master = topology.master.port
        figures = await _run(
            f"redis sentinel {wait} {'replica-lagging' if lagging else 'replica-current'}",
            topology.config(key_prefix="fo", **options),
            kill,
            lambda: topology.master_port() == topology.replica.port,
            before_kill=lag if lagging else None,
        )
        assert topology.master_port() != old_master
    finally:
        await asyncio.to_thread(topology.remove)
    if options:
        assert figures["acked_lost"] == 0, figures["lost_ids"][:3]
    elif lagging:  # the measure sees a loss where there is one
        assert figures["acked_lost"] > 0, figures
    assert figures["lost_acked_before_lag"] == 0, figures


@pytest.mark.parametrize("wait", list(WAIT_OPTIONS))
async def test_cluster_master_killed_replica_promoted(wait: str) -> None:
    options = _wait_option(wait)
    topology = ClusterWithReplicas(node_timeout_ms=1000)
    try:
        await asyncio.to_thread(topology.start)
        config = topology.config(key_prefix="fo", **options)
        victim = next(node for node in topology.masters() if node.port != config.port)
        heir = topology.replica_of(victim)
        with victim.client() as admin:
            ranges = [
                (int(start), int(end))
                for start, end, *_nodes in admin.cluster("SLOTS")
                if int(_nodes[0][1]) == victim.port
            ]

        def on_victim(task_id: str) -> bool:  # the backend's key: <prefix>:result:<id>
            slot = key_slot(f"fo:result:{task_id}".encode())
            return any(start <= slot <= end for start, end in ranges)

        def promoted() -> bool:
            with heir.client() as client:
                if client.info("replication")["role"] != "master":
                    return False
                return client.cluster("INFO").get("cluster_state") == "ok"

        figures = await _run(f"redis cluster {wait}", config, victim.kill, promoted, on_victim)
        assert ranges and figures["kill_to_first_write_s"] is not None
    finally:
        await asyncio.to_thread(topology.remove)
    if options:
        assert figures["acked_lost"] == 0, figures["lost_ids"][:3]


# -- wait_replicas: a terminal write returns once a replica has it -----------------------


async def test_wait_replicas_confirms_or_refuses_terminal_writes() -> None:
    """With the replica in step a terminal write returns normally; while the replica's
    stream is held back it raises BackendUnreachableError after wait_timeout (stored on
    the master, not acknowledged), and non-terminal writes never wait. When that master
    then dies with what only it had, no ACKNOWLEDGED result is lost: the unconfirmed ones
    were the only ones missing. Without the option the same lag loses acknowledged ones
    (test_sentinel_master_killed_replica_promoted[plain-replica-lagging])."""
    from chicory_backends import BackendUnreachableError, TaskResult, TaskState
    from chicory_backends.redis import RedisBackend

    topology = SentinelWithReplica(down_after_ms=1000, proxied=True)
    try:
        await asyncio.to_thread(topology.start)
        backend = RedisBackend(topology.config(key_prefix="wr", wait_replicas=1, wait_timeout=0.3))
        await backend.connect()
        try:
            acked: list[str] = []
            for n in range(20):  # the replica in step: confirmed
                task_id = f"confirmed-{n}"
                await backend.store_result(
                    task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=n)
                )
                acked.append(task_id)
            assert topology.proxy is not None
            topology.proxy.hold()  # the replica stops receiving
            started = time.monotonic()
            await backend.set_state("running", TaskState.STARTED)  # not terminal: no wait
            assert time.monotonic() - started < 0.25
            refused = 0
            for n in range(5):
                task_id = f"unconfirmed-{n}"
                started = time.monotonic()
                with pytest.raises(BackendUnreachableError, match="wait_replicas=1"):
                    await backend.store_result(
                        task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=n)
                    )
                assert 0.25 <= time.monotonic() - started < 3
                refused += 1
            # The master dies with the held stream; Sentinel promotes the replica.
            topology.master.kill()
            topology.proxy.sever()
            await asyncio.to_thread(
                lambda: _wait_until(lambda: topology.master_port() == topology.replica.port)
            )
        finally:
            await backend.disconnect()
        reader = RedisBackend(topology.config(key_prefix="wr"))
        await reader.connect()
        try:
            found = await reader.get_results(acked)
            unconfirmed = await reader.get_results([f"unconfirmed-{n}" for n in range(5)])
        finally:
            await reader.disconnect()
        print(
            f"\nwait_replicas=1: {len(acked)} acknowledged, {len(acked) - len(found)} lost; "
            f"{refused} refused as unconfirmed, {len(unconfirmed)} of them on the new master"
        )
        assert len(found) == len(acked)  # 0 acknowledged results lost
        assert len(unconfirmed) < refused  # the held ones died with the master
    finally:
        await asyncio.to_thread(topology.remove)


def _wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the replica was not promoted"
        time.sleep(0.1)


def test_wait_replicas_is_refused_on_cluster() -> None:
    from chicory_backends import ConfigurationError
    from chicory_backends.redis import RedisBackend

    config = RedisBackendConfig(cluster=True, host="127.0.0.1", port=7000, wait_replicas=1)
    with pytest.raises(ConfigurationError, match="not supported on Redis Cluster"):
        RedisBackend(config)

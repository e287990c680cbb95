"""``python -m bench whatif``: where ours loses time against the raw driver, measured.

A diagnostic, not part of ``python -m bench``: it reaches into chicory_backends' private
parts (``sql.dialects._may_write``, ``DatabaseBackend._statements`` / ``_engine``) to try
the changes proposed in the benchmark report without editing the package, so it may need
adjusting when those change. Variants, alternated round by round like the main bench:

- ``ours``: DatabaseBackend as it is;
- ``ours, literal guard``: the same, with the terminal-state lists of the upsert guard
  rendered as SQL literals instead of expanding bind parameters (no per-call SQL rewrite);
  its statements are compiled for the driver like the backend's own
  (:func:`swap_statements`), so it runs on the same fast path, checked at open;
- ``ours' pool + driver call``: our engine's pool, but each call is the raw driver's
  hand-written statement on the pooled driver connection (no SQLAlchemy Core execution);
- ``raw``: the raw driver implementation of the main bench.

Reports median ops/s and the client's CPU time per operation (``time.process_time``),
which other processes on the machine disturb much less than throughput.
``--notify-trigger`` (PostgreSQL) instead compares the raw driver on our schema with and
without revision 0002's NOTIFY trigger.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from sqlalchemy import and_, literal_column, or_
from sqlalchemy.util import greenlet_spawn

from bench import env, runner
from bench.env import Servers
from bench.impls import Impl, OursImpl, RawMySQL, RawPostgres, RawSQLite

if TYPE_CHECKING:
    from chicory_backends.sql.backend import DatabaseBackend
    from chicory_backends.sql.dialects import Statements


def _literal_guard(old: Any, new: Any) -> Any:
    from chicory_backends.sql import dialects

    terminal: list[Any] = [literal_column(f"'{state}'") for state in dialects.TERMINAL]
    return and_(
        or_(new("state").in_(terminal), old("state").not_in(terminal)),
        new("attempts") >= old("attempts"),
    )


def fast_path(backend: DatabaseBackend, statements: Statements) -> set[str]:
    """The names of ``statements`` that ``backend`` runs on the driver fast path."""
    del backend  # the statements carry their compiled form themselves
    return {
        field.name
        for field in dataclasses.fields(statements)
        if getattr(getattr(statements, field.name), "driver", None) is not None
    }


def swap_statements(backend: DatabaseBackend, statements: Statements) -> None:
    """Make ``backend`` run ``statements``, on the same path as the ones they replace.

    A statement runs on the fast path when it carries its driver form, so the new ones
    are compiled as the backend compiles its own (``Statements.for_driver``); a statement
    that was on the fast path and is not any more is an error, not a silently different
    measurement.
    """
    engine, current = backend._engine, backend._statements
    if engine is None or current is None:
        raise RuntimeError("swap_statements needs a connected backend")
    before = fast_path(backend, current)
    statements = backend._compiled(statements, engine.dialect)
    backend._statements = statements
    lost = before - fast_path(backend, statements)
    if lost:
        raise RuntimeError(f"the swapped statements left the driver fast path: {sorted(lost)}")


class LiteralGuard(OursImpl):
    """Ours, with statements rebuilt by a ``_may_write`` that renders literals."""

    async def open(self) -> None:
        from chicory_backends.sql import dialects

        await super().open()
        backend = self.backend
        original = dialects._may_write
        dialects._may_write = _literal_guard
        try:
            statements = dialects.statements_for(
                backend._engine.dialect, backend.config.cleanup_batch_size
            )
        finally:
            dialects._may_write = original
        swap_statements(backend, statements)


class PoolAndDriver(OursImpl):
    """Our engine's pool; the raw implementation's SQL on the pooled driver connection."""

    def __init__(self, config: Any, kind: str, raw: RawPostgres | RawMySQL | RawSQLite) -> None:
        super().__init__(config)
        self.kind = kind
        self.raw = raw

    async def _call(self, sql: str, args: tuple[Any, ...], fetch: bool) -> Any:
        pooled = await self.backend._engine.raw_connection()
        try:
            driver = pooled.driver_connection
            if self.kind == "postgres":
                return await (driver.fetchrow(sql, *args) if fetch else driver.execute(sql, *args))
            if self.kind == "mysql":
                async with driver.cursor() as cursor:
                    await cursor.execute(sql, args)
                    return await cursor.fetchone() if fetch else None
            rows = await driver.execute_fetchall(sql, args)
            return (list(rows) or [None])[0] if fetch else None
        finally:
            await greenlet_spawn(pooled.close)

    def _now(self) -> Any:
        now = datetime.now(UTC)
        if self.kind == "mysql":
            return now.replace(tzinfo=None)
        if self.kind == "sqlite":
            return now.strftime("%Y-%m-%d %H:%M:%S.%f")
        return now

    async def store(self, task_id: str, value: int) -> None:
        from chicory_backends.codec import check_task_id, encode_value

        now = self._now()
        text = encode_value(check_task_id(task_id), {"value": value})
        await self._call(
            self.raw._store, (task_id, "SUCCESS", text, None, None, now, now, None), False
        )

    async def get(self, task_id: str) -> Any:
        from chicory_backends.codec import build_result, check_task_id

        row = await self._call(self.raw._get, (check_task_id(task_id), self._now()), True)
        return None if row is None else build_result(*row).result


async def _compare(
    variants: dict[str, Impl], ops: list[str], concurrency: list[int], runs: int, duration: float
) -> None:
    for op in ops:
        fn = runner.OPS[op].fn
        for conc in concurrency:
            rates: dict[str, list[float]] = {name: [] for name in variants}
            cpus: dict[str, list[float]] = {name: [] for name in variants}
            for round_number in range(runs + 1):
                for name, impl in variants.items():
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    rate = await runner.measure(fn, impl, conc, duration)
                    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                    if round_number:  # round 0 warms
                        rates[name].append(rate)
                        cpus[name].append(1e6 * cpu / max(rate * wall, 1e-9))
            for name in variants:
                print(
                    f"{op:<7} c={conc:<3} {name:<28} {statistics.median(rates[name]):9,.0f} ops/s "
                    f"{statistics.median(cpus[name]):6.0f} us client CPU/op",
                    flush=True,
                )


async def _variants(kind: str, servers: Servers) -> dict[str, Impl]:
    raw = runner.make_impl(kind, "raw", servers, "whatif")
    assert isinstance(raw, RawPostgres | RawMySQL | RawSQLite)
    ours = runner.make_impl(kind, "ours", servers, "whatif")
    literal = LiteralGuard(env.ours_config(servers, kind))
    literal.id_prefix = "bench-whatif-literal"
    direct = PoolAndDriver(env.ours_config(servers, kind), kind, raw)
    direct.id_prefix = "bench-whatif-direct"
    return {
        "ours": ours,
        "ours, literal guard": literal,
        "ours' pool + driver call": direct,
        "raw": raw,
    }


async def _notify_trigger(
    servers: Servers, ops: list[str], concurrency: list[int], runs: int, duration: float
) -> None:
    import asyncpg

    from chicory_backends.sql.backend import DatabaseBackend

    other = "chicory_bench_notrigger"
    await env.recreate_database(servers, "postgres", other)
    url = servers.database_url("postgres", other)
    config = env.ours_config(servers, "postgres", auto_migrate=True)
    async with DatabaseBackend(config.model_copy(update={"url": SecretStr(env.plain_url(url))})):
        pass
    dsn = env.plain_url(url.set(drivername="postgresql"))
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "DROP TRIGGER IF EXISTS chicory_task_results_notify ON chicory_task_results"
        )
    finally:
        await connection.close()
    with_trigger = runner.make_impl("postgres", "raw", servers, "whatif")
    without = RawPostgres(dsn, env.POOL_SIZE + env.MAX_OVERFLOW)
    without.id_prefix = "bench-whatif-notrigger"
    variants: dict[str, Impl] = {"raw, 0002 trigger": with_trigger, "raw, trigger dropped": without}
    try:
        for impl in variants.values():
            await runner.open_checked(impl)
        await _compare(variants, ops, concurrency, runs, duration)
    finally:
        for impl in variants.values():
            await impl.close()
        await env.recreate_database(servers, "postgres", other, create=False)


async def _main(args: argparse.Namespace) -> None:
    servers = Servers.from_env()
    kind = args.only
    ops = args.ops.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    await runner.prepare_storage(kind, servers)
    try:
        if args.notify_trigger:
            await _notify_trigger(servers, ops, concurrency, args.runs, args.duration)
            return
        variants = await _variants(kind, servers)
        try:
            for impl in variants.values():
                await runner.open_checked(impl)
                await runner.prefill(impl)
            await _compare(variants, ops, concurrency, args.runs, args.duration)
        finally:
            for impl in variants.values():
                await impl.close()
    finally:
        await runner.drop_storage(kind, servers, "whatif")
        servers.remove_sqlite_dir()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench whatif",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default="postgres", choices=env.SQL_KINDS)
    parser.add_argument("--ops", default="store,get", help="of: store, get (and worker)")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument(
        "--notify-trigger",
        action="store_true",
        help="PostgreSQL: raw driver with and without the 0002 NOTIFY trigger",
    )
    args = parser.parse_args(argv)
    if args.notify_trigger and args.only != "postgres":
        parser.error("--notify-trigger is PostgreSQL only")
    asyncio.run(_main(args))
    return 0

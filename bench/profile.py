"""``python -m bench profile``: one operation of one implementation under cProfile.

Where the client's time goes when ours trails the raw driver; prints the top functions
by own time and by cumulative time, and optionally writes a pstats file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
from pathlib import Path

from bench import runner
from bench.env import KINDS, Servers


async def _profile(
    kind: str, role: str, op: str, concurrency: int, seconds: float, plain: bool
) -> tuple[cProfile.Profile | None, float]:
    servers = Servers.from_env()
    tag = "prof"
    await runner.prepare_storage(kind, servers)
    impl = runner.make_impl(kind, role, servers, tag)
    try:
        await runner.open_checked(impl)
        await runner.prefill(impl)
        fn = runner.OPS[op].fn
        await runner.measure(fn, impl, concurrency, 0.3)  # warm
        if plain:  # for an outside sampler (py-spy record -- python -m bench profile --plain)
            return None, await runner.measure(fn, impl, concurrency, seconds)
        profiler = cProfile.Profile()
        profiler.enable()
        rate = await runner.measure(fn, impl, concurrency, seconds)
        profiler.disable()
        return profiler, rate
    finally:
        await impl.close()
        await runner.drop_storage(kind, servers, tag)
        servers.remove_sqlite_dir()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile")
    parser.add_argument("--only", default="postgres", choices=KINDS)
    parser.add_argument("--role", default="ours", choices=runner.ROLES)
    parser.add_argument("--op", default="store", choices=list(runner.OPS))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", type=Path, help="write the pstats file here")
    parser.add_argument("--plain", action="store_true", help="no cProfile (for py-spy)")
    args = parser.parse_args(argv)
    profiler, rate = asyncio.run(
        _profile(args.only, args.role, args.op, args.concurrency, args.seconds, args.plain)
    )
    if profiler is None:
        print(f"{args.role} {args.only} {args.op} c={args.concurrency}: {rate:,.0f} ops/s")
        return 0
    if args.save:
        profiler.dump_stats(str(args.save))
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(order).print_stats(args.top)
        print(f"==== {args.role} {args.only} {args.op} c={args.concurrency}: "
              f"{rate:,.0f} ops/s under the profiler; top {args.top} by {order}")  # fmt: skip
        print(out.getvalue())
    return 0

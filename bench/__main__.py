"""``python -m bench [--only ...] [--parts ...]``; ``python -m bench <part>`` for one part:
e2e, bursts, cleanup, adopt, sizes (and the tools history, whatif, profile).

Without a subcommand (``make bench``) one run does all three parts, side by side per
backend: the steady throughput and round trips (latest.md), the store_result bursts
(bursts.md) and the real Chicory worker end to end (e2e.md); ``--parts`` picks some.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.env import KINDS, SQL_KINDS

RESULTS = Path(__file__).parent / "results"


def _kinds(text: str | None, allowed: tuple[str, ...]) -> list[str]:
    if not text:
        return list(allowed)
    aliases = {"pg": "postgres", "postgresql": "postgres", "mariadb": "mysql"}
    chosen = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        kind = aliases.get(part, part)
        if kind not in allowed:
            raise SystemExit(f"unknown backend {part!r}; choose from {', '.join(allowed)}")
        if kind not in chosen:
            chosen.append(kind)
    return [kind for kind in allowed if kind in chosen]  # Redis last: its check comes late


PARTS = ("throughput", "bursts", "e2e")


def _all(argv: list[str]) -> int:
    from bench import report, runner

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help=f"backends, comma-separated: {','.join(KINDS)}")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, default all: {','.join(PARTS)}")  # fmt: skip
    parser.add_argument("--ops", help=f"operations: {','.join(runner.OPS)} (or get_results, "
                        "heartbeats)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per figure (median)")
    parser.add_argument("--duration", type=float, default=0.4, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=0.15, help="seconds of the warm-up round")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, default 1,32")
    parser.add_argument("--no-round-trips", action="store_true", help="skip the wire count")
    _bursts_parser(parser)
    _e2e_parser(parser)
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in parts:
        if part not in PARTS:
            parser.error(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    if "throughput" in parts:
        settings = runner.Settings(
            kinds=_kinds(args.only, KINDS),
            ops=runner.parse_ops(args.ops),
            concurrency=[int(c) for c in args.concurrency.split(",") if c.strip()],
            runs=args.runs,
            duration=args.duration,
            warmup=args.warmup,
            round_trips=not args.no_round_trips,
            keep=args.keep,
        )
        result = asyncio.run(runner.run(settings))
        print(report.write(result, args.out))
        print(f"written: {args.out / 'latest.md'}, {args.out / 'latest.json'}", file=sys.stderr)
    if "bursts" in parts:
        from bench import bursts

        print(bursts.write(asyncio.run(bursts.run(_bursts_settings(args))), args.out))
        print(f"written: {args.out / 'bursts.md'}, {args.out / 'bursts.json'}", file=sys.stderr)
    if "e2e" in parts:
        from bench import e2e

        print(e2e.write(asyncio.run(e2e.run(_e2e_settings(args))), args.out))
        print(f"written: {args.out / 'e2e.md'}, {args.out / 'e2e.json'}", file=sys.stderr)
    return 0


def _cleanup(argv: list[str]) -> int:
    from bench import cleanup

    parser = argparse.ArgumentParser(prog="python -m bench cleanup")
    parser.add_argument("--only", help=f"backends, comma-separated: {','.join(SQL_KINDS)}")
    parser.add_argument(
        "--rows", type=int, default=None,
        help="expired rows (default 1,000,000 on PostgreSQL and MariaDB, 100,000 on SQLite)",
    )  # fmt: skip
    parser.add_argument("--interval", type=float, default=0.010, help="seconds between stores")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where cleanup.md/json go")
    args = parser.parse_args(argv)
    result = asyncio.run(
        cleanup.run(_kinds(args.only, SQL_KINDS), args.rows, args.interval, args.keep)
    )
    print(cleanup.write(result, args.out))
    return 0


def _adopt(argv: list[str]) -> int:
    from bench import adopt

    parser = argparse.ArgumentParser(
        prog="python -m bench adopt",
        description=adopt.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", help=f"backends, comma-separated: {','.join(SQL_KINDS)}")
    parser.add_argument(
        "--rows", type=int, default=None,
        help="Chicory rows (default 1,000,000 on PostgreSQL and MariaDB, 100,000 on SQLite)",
    )  # fmt: skip
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between writes")
    parser.add_argument(
        "--read-interval", type=float, default=0.005, help="seconds between reads, per reader"
    )
    parser.add_argument("--sample", type=int, default=200, help="rows compared before/after")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where adopt.md/json go")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be at least 1")
    settings = adopt.Settings(
        kinds=_kinds(args.only, SQL_KINDS),
        rows=args.rows,
        idle=args.idle,
        after=args.after,
        interval=args.interval,
        read_interval=args.read_interval,
        sample=args.sample,
        keep=args.keep,
    )
    print(adopt.write(asyncio.run(adopt.run(settings)), args.out))
    print(f"written: {args.out / 'adopt.md'}, {args.out / 'adopt.json'}", file=sys.stderr)
    return 0


def _e2e_parser(parser: argparse.ArgumentParser) -> None:
    from bench import e2e

    parser.add_argument("--tasks", type=int, default=3000, help="end-to-end: timed tasks per case")
    parser.add_argument(
        "--warmup-tasks", type=int, default=64, help="end-to-end tasks before the timing"
    )
    parser.add_argument(
        "--brokers", default=",".join(e2e.BROKERS), help="redis,rabbitmq (default both)"
    )
    parser.add_argument(
        "--rabbitmq-only", default=None,
        help="backends on the RabbitMQ broker (default: the same as --only)",
    )  # fmt: skip
    parser.add_argument("--e2e-runs", type=int, default=1, help="runs per case (median)")


def _e2e_settings(args: argparse.Namespace) -> Any:
    from bench import e2e

    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for broker in brokers:
        if broker not in e2e.BROKERS:
            raise SystemExit(f"unknown broker {broker!r}; choose from {', '.join(e2e.BROKERS)}")
    if args.tasks < 1 or args.warmup_tasks < 0:
        raise SystemExit("--tasks must be at least 1 and --warmup-tasks at least 0")
    return e2e.Settings(
        tasks=args.tasks,
        warmup=args.warmup_tasks,
        kinds=_kinds(args.only, KINDS),
        brokers=brokers,
        rabbitmq_kinds=None if args.rabbitmq_only is None else _kinds(args.rabbitmq_only, KINDS),
        runs=max(1, args.e2e_runs),
        keep=args.keep,
    )


def _part(
    argv: list[str],
    name: str,
    add_options: Callable[[argparse.ArgumentParser], None],
    settings: Callable[[argparse.Namespace], Any],
) -> int:
    """``python -m bench e2e`` / ``bursts``: one part of the bench on its own."""
    module = importlib.import_module(f"bench.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=module.__doc__)
    parser.add_argument("--only", help=f"backends, comma-separated: {','.join(KINDS)}")
    add_options(parser)
    parser.add_argument("--keep", action="store_true", help="keep databases, keys, logs")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where {name}.md/json go")
    args = parser.parse_args(argv)
    result = asyncio.run(module.run(settings(args)))
    print(module.write(result, args.out))
    print(f"written: {args.out / f'{name}.md'}, {args.out / f'{name}.json'}", file=sys.stderr)
    return 0


def _bursts_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst-runs", type=int, default=3, help="timed rounds per figure")
    parser.add_argument("--burst-duration", type=float, default=0.5, help="seconds per round")


def _bursts_settings(args: argparse.Namespace) -> Any:
    from bench import bursts

    if args.burst_runs < 1 or args.burst_duration <= 0:
        raise SystemExit("--burst-runs must be at least 1 and --burst-duration positive")
    return bursts.Settings(
        kinds=_kinds(args.only, KINDS),
        runs=args.burst_runs,
        duration=args.burst_duration,
        keep=args.keep,
    )


def _sizes_parser(parser: argparse.ArgumentParser) -> None:
    from bench import sizes

    parser.add_argument(
        "--sizes", default=",".join(str(s) for s in sizes.SIZES),
        help="result sizes in bytes, comma-separated (10k, 1m allowed)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per figure (median)")
    parser.add_argument(
        "--big-rounds", type=int, default=3,
        help=f"rounds at one caller for sizes from {sizes.BIG:,} bytes (at most --rounds)",
    )  # fmt: skip
    parser.add_argument(
        "--big-batch-rounds", type=int, default=1,
        help=f"rounds at 32 in flight for sizes from {sizes.BIG:,} bytes (at most --rounds)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=0.15, help="seconds per phase")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, default 1,32")
    parser.add_argument(
        "--redis-server", choices=("private", "shared"), default="private",
        help="private: a redis-server of the bench's own (clean commandstats); shared: "
        "BENCH_REDIS_HOST:BENCH_REDIS_PORT",
    )  # fmt: skip
    parser.add_argument(
        "--index-tasks", type=int, default=1000, help="tasks over which the index share is taken"
    )


def _sizes_settings(args: argparse.Namespace) -> Any:
    from bench import sizes

    try:
        chosen = sorted({sizes.parse_size(s) for s in args.sizes.split(",") if s.strip()})
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError as error:
        raise SystemExit(f"--sizes / --concurrency: {error}") from None
    if not chosen or min(chosen) < 100 or not concurrency or min(concurrency) < 1:
        raise SystemExit("--sizes must be at least 100 bytes and --concurrency at least 1")
    if min(args.rounds, args.big_rounds, args.big_batch_rounds, args.index_tasks) < 1:
        raise SystemExit("--rounds, --big-rounds, --big-batch-rounds, --index-tasks: at least 1")
    if args.duration < 0:
        raise SystemExit("--duration must not be negative")
    return sizes.Settings(
        kinds=_kinds(args.only, KINDS),
        sizes=chosen,
        concurrency=concurrency,
        rounds=args.rounds,
        big_rounds=args.big_rounds,
        big_batch_rounds=args.big_batch_rounds,
        duration=args.duration,
        index_tasks=args.index_tasks,
        redis_server=args.redis_server,
        keep=args.keep,
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["e2e"]:
        return _part(argv[1:], "e2e", _e2e_parser, _e2e_settings)
    if argv[:1] == ["bursts"]:
        return _part(argv[1:], "bursts", _bursts_parser, _bursts_settings)
    if argv[:1] == ["sizes"]:
        return _part(argv[1:], "sizes", _sizes_parser, _sizes_settings)
    if argv[:1] == ["cleanup"]:
        return _cleanup(argv[1:])
    if argv[:1] == ["adopt"]:
        return _adopt(argv[1:])
    if argv[:1] == ["history"]:
        from bench import history

        return history.main(argv[1:])
    if argv[:1] == ["whatif"]:
        from bench import whatif

        return whatif.main(argv[1:])
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    if argv[:1] == ["cleanup-worker"]:  # internal: the subprocess that only cleans
        from bench import cleanup

        return cleanup.worker_main(argv[1:])
    return _all(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

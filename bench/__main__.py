"""``python -m bench [--only ...] [--ops ...] [--runs N]`` and ``python -m bench cleanup``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

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


def _throughput(argv: list[str]) -> int:
    from bench import report, runner

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help=f"backends, comma-separated: {','.join(KINDS)}")
    parser.add_argument("--ops", help=f"operations: {','.join(runner.OPS)} (or get_results, "
                        "heartbeats)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per figure (median)")
    parser.add_argument("--duration", type=float, default=0.4, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=0.15, help="seconds of the warm-up round")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, default 1,32")
    parser.add_argument("--no-round-trips", action="store_true", help="skip the wire count")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/json go")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["cleanup"]:
        return _cleanup(argv[1:])
    if argv[:1] == ["whatif"]:
        from bench import whatif

        return whatif.main(argv[1:])
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    if argv[:1] == ["cleanup-worker"]:  # internal: the subprocess that only cleans
        from bench import cleanup

        return cleanup.worker_main(argv[1:])
    return _throughput(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ``chicory-backends`` command: migrate, clean up and inspect a result backend.

The backend is the one the library would use: ``CHICORY_BACKEND_TYPE`` and its
``CHICORY_BACKEND_<TYPE>_*`` variables (environment, then ``.env``), or ``--url``.
Every failure is one line on stderr, never with the password in it: exit 2 for a
configuration or usage problem (a missing driver included), 1 for anything at run time
(unreachable server, schema not migrated, database error).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from alembic import command
from alembic.util import CommandError
from pydantic import SecretStr

from chicory_backends.alembic_ini import alembic_ini
from chicory_backends.config import AnyBackendConfig, SQLBackendConfig
from chicory_backends.errors import (
    ChicoryBackendError,
    ConfigurationError,
)
from chicory_backends.factory import (
    config_for,
    create_backend,
    kind_from_url,
    require_driver,
    resolve_kind,
)
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.drivers import driver_for
from chicory_backends.sql.engine import translate_error
from chicory_backends.sql.maintenance import Progress
from chicory_backends.sql.migrate import alembic_config, database_revision
from chicory_backends.types import BackendStatus, BackendType, WorkerStats

PROG = "chicory-backends"
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


# -- what to talk to -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The backend a command works on: its kind and its (secret-holding) configuration."""

    kind: BackendType
    config: AnyBackendConfig

    @property
    def label(self) -> str:
        """Kind and address for messages; never the credentials."""
        return f"{self.kind.value} at {self.config.address()}"

    def sql_config(self, command_name: str) -> SQLBackendConfig:
        if not isinstance(self.config, SQLBackendConfig):
            raise ConfigurationError(
                f"'{command_name}' works on SQL backends only, and this backend is "
                f"{self.kind.value}"
            )
        return self.config


def resolve_target(url: str | None) -> Target:
    """The library's configuration; ``--url`` replaces only the URL of the kind it names."""
    if url is None:
        kind = resolve_kind()
        return Target(kind, config_for(kind))
    try:
        kind = kind_from_url(url)
    except ConfigurationError as error:
        raise ConfigurationError(f"--url: {error}") from None
    config = config_for(kind).model_copy(update={"url": SecretStr(url)})
    return Target(kind, config)


# -- arguments -----------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in '90s', '15m', '24h', '7d', '2w' or a sum such as '1h30m'."""
    compact = text.strip().lower()
    if not compact or _DURATION_PART.sub("", compact):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit, e.g. 90s, 15m, 24h, 7d"
        )
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(compact)
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def _common_options(default: Any) -> _Parser:
    """--url and --json, accepted before or after the command name."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--url",
        default=default,
        help="database or Redis URL; overrides CHICORY_BACKEND_TYPE and its _URL",
    )
    common.add_argument(
        "--json", action="store_true", default=default, help="print JSON for scripts"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        parents=[_common_options(None)],
        description="Operate a chicory-backends result store. The backend comes from "
        "CHICORY_BACKEND_TYPE (postgres, mysql, sqlite, mssql, redis; default sqlite) "
        "and its CHICORY_BACKEND_<TYPE>_* variables (environment, then .env), or --url.",
    )
    parser.set_defaults(json=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options(argparse.SUPPRESS)]

    migrate = commands.add_parser(
        "migrate", parents=common, help="upgrade the schema to head (alembic upgrade head)"
    )
    migrate.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    migrate.set_defaults(handler=run_migrate)

    ini = commands.add_parser(
        "alembic-ini",
        parents=common,
        help="print an alembic.ini for this installation (> alembic.ini, then alembic ...)",
    )
    ini.set_defaults(handler=run_alembic_ini, needs_backend=False)

    cleanup = commands.add_parser(
        "cleanup", parents=common, help="delete expired results and results untouched for long"
    )
    cleanup.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="also delete results not updated for this long: 90s, 15m, 24h, 7d",
    )
    cleanup.add_argument(
        "--batch-size", type=positive_int, metavar="N", help="rows per DELETE statement"
    )
    cleanup.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    cleanup.set_defaults(handler=run_cleanup)

    health = commands.add_parser(
        "health", parents=common, help="exit 0 when the backend answers, 1 otherwise"
    )
    health.set_defaults(handler=run_health)

    stats = commands.add_parser("stats", parents=common, help="results per state, age, expiry")
    stats.set_defaults(handler=run_stats)

    workers = commands.add_parser("workers", parents=common, help="active workers (heartbeats)")
    workers.set_defaults(handler=run_workers)
    return parser


# -- output --------------------------------------------------------------------------


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, default=str) if args.json else text)


def fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; MySQL and SQLite hand back the stored UTC time without its zone."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def describe_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- alembic -------------------------------------------------------------------------


def run_alembic(config: SQLBackendConfig, step: Callable[[], None]) -> None:
    """An alembic command, with its driver and alembic errors turned into ours."""
    try:
        step()
    except CommandError as error:
        raise ChicoryBackendError(f"alembic: {error}") from None
    except Exception as error:
        raise translate_error(error, config) from None


# -- migrate -------------------------------------------------------------------------


def run_migrate(args: argparse.Namespace, target: Target) -> int:
    config = target.sql_config("migrate")
    url = config.sqlalchemy_url().render_as_string(hide_password=False)
    alembic_cfg = alembic_config(url)
    if args.sql:
        alembic_cfg.output_buffer = io.StringIO()
        run_alembic(config, lambda: command.upgrade(alembic_cfg, "head", sql=True))
        sql = alembic_cfg.output_buffer.getvalue()
        emit(args, {"backend": target.kind.value, "sql": sql}, sql.rstrip("\n"))
        return EXIT_OK

    if not driver_for(config).session_pinned:
        # The migration lock is a session-wide advisory lock: through transaction pooling
        # it would stay behind on whichever server connection took it.
        raise ConfigurationError(
            "migrate needs a direct connection to PostgreSQL, not through PgBouncer: run it "
            "with CHICORY_BACKEND_POSTGRES_PGBOUNCER=false and the server's own address"
        )
    before = asyncio.run(database_revision(config))
    run_alembic(config, lambda: command.upgrade(alembic_cfg, "head"))
    after = asyncio.run(database_revision(config))
    if before == after:
        text = f"{target.label}: schema already at revision {after} (head)"
    else:
        text = f"{target.label}: schema upgraded from {before or 'empty'} to {after} (head)"
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "from_revision": before,
        "revision": after,
        "upgraded": before != after,
    }
    emit(args, payload, text)
    return EXIT_OK


def run_alembic_ini(args: argparse.Namespace) -> int:
    text = alembic_ini()
    emit(args, {"alembic_ini": text}, text.rstrip("\n"))
    return EXIT_OK


# -- cleanup -------------------------------------------------------------------------


def batch_progress(enabled: bool) -> Progress | None:
    """A live 'deleted so far' line on stderr, told by the backend after each batch."""
    if not enabled:
        return None

    def show(deleted: int) -> None:
        sys.stderr.write(f"\rcleanup: {deleted} results deleted so far...")
        sys.stderr.flush()

    return show


def run_cleanup(args: argparse.Namespace, target: Target) -> int:
    config = target.sql_config("cleanup")
    if args.batch_size is not None:
        config = config.model_copy(update={"cleanup_batch_size": args.batch_size})
    older_than: float = args.older_than
    what = f"expired or untouched for {describe_duration(older_than)}"
    payload: dict[str, Any] = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "older_than_seconds": older_than,
        "batch_size": config.cleanup_batch_size,
        "dry_run": args.dry_run,
    }
    backend = DatabaseBackend(config)  # never connected: each call connects for itself
    if args.dry_run:
        count = asyncio.run(backend.count_reclaimable(older_than))
        payload["would_delete"] = count
        emit(args, payload, f"{target.label}: would delete {count} results ({what}); dry run")
        return EXIT_OK

    started = time.monotonic()
    progress = batch_progress(sys.stderr.isatty() and not args.json)
    try:
        deleted = asyncio.run(backend.cleanup_old_results(older_than, progress=progress))
    finally:
        if progress is not None:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    elapsed = time.monotonic() - started
    payload.update(deleted=deleted, seconds=round(elapsed, 3))
    emit(args, payload, f"{target.label}: deleted {deleted} results ({what}) in {elapsed:.1f}s")
    return EXIT_OK


# -- health --------------------------------------------------------------------------


async def probe(target: Target) -> BackendStatus:
    """Connect (which checks the schema of a SQL backend) and run the health query."""
    backend = create_backend(target.kind, target.config)
    try:
        await backend.connect()
    except ConfigurationError:
        raise
    except ChicoryBackendError as error:
        return BackendStatus(connected=False, error=str(error))
    try:
        return await backend.healthcheck()
    finally:
        await backend.disconnect()


def run_health(args: argparse.Namespace, target: Target) -> int:
    status = asyncio.run(probe(target))
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "healthy": status.connected,
        "latency_ms": status.latency_ms,
        "error": status.error,
    }
    if status.connected:
        emit(args, payload, f"ok: {target.label} answered in {status.latency_ms or 0:.1f} ms")
        return EXIT_OK
    if args.json:
        emit(args, payload, "")
    fail(f"unhealthy: {target.kind.value}: {status.error}")
    return EXIT_RUNTIME


# -- stats ---------------------------------------------------------------------------


def run_stats(args: argparse.Namespace, target: Target) -> int:
    stats = asyncio.run(DatabaseBackend(target.sql_config("stats")).result_stats())
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "total": stats.total,
        "by_state": stats.by_state,
        "expired_not_reclaimed": stats.expired,
        "oldest_updated_at": iso(stats.oldest),
        "newest_updated_at": iso(stats.newest),
    }
    rows = [*stats.by_state.items(), ("total", stats.total)]
    text = "\n".join(
        [
            target.label,
            render_table(["STATE", "RESULTS"], rows),
            f"expired, not yet reclaimed: {stats.expired}",
            f"oldest updated_at: {iso(stats.oldest) or '-'}",
            f"newest updated_at: {iso(stats.newest) or '-'}",
        ]
    )
    emit(args, payload, text)
    return EXIT_OK


# -- workers -------------------------------------------------------------------------


WORKER_COLUMNS = (
    "WORKER", "HOST", "PID", "QUEUE", "CONCURRENCY", "ACTIVE", "PROCESSED", "FAILED",
    "LAST HEARTBEAT",
)  # fmt: skip


def worker_row(worker: WorkerStats) -> list[object]:
    return [
        worker.worker_id,
        worker.hostname,
        worker.pid,
        worker.queue,
        worker.concurrency,
        worker.active_tasks,
        worker.tasks_processed,
        worker.tasks_failed,
        iso(worker.last_heartbeat) or "-",
    ]


async def active_workers(target: Target) -> list[WorkerStats]:
    async with create_backend(target.kind, target.config) as backend:
        return await backend.get_active_workers()


def run_workers(args: argparse.Namespace, target: Target) -> int:
    workers = asyncio.run(active_workers(target))
    payload = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "workers": [worker.model_dump(mode="json") for worker in workers],
    }
    if workers:
        text = render_table(WORKER_COLUMNS, [worker_row(worker) for worker in workers])
    else:
        text = f"{target.label}: no active workers"
    emit(args, payload, text)
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------


def needs_driver(args: argparse.Namespace) -> bool:
    """Every command talks to the backend, except offline SQL (``migrate --sql``)."""
    return not (args.command == "migrate" and args.sql)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not getattr(args, "needs_backend", True):
            return int(args.handler(args))
        target = resolve_target(args.url)
        if needs_driver(args):
            require_driver(target.config)  # DriverNotInstalledError names what to install
        handler: Callable[[argparse.Namespace, Target], int] = args.handler
        return handler(args, target)
    except ConfigurationError as error:
        fail(str(error))
        return EXIT_CONFIG
    except ChicoryBackendError as error:
        fail(str(error))
        return EXIT_RUNTIME
    except ImportError as error:
        fail(f"a module chicory-backends needs cannot be imported: {error}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

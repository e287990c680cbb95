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
import os
import re
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.util import CommandError
from pydantic import SecretStr

from chicory_backends.alembic_ini import alembic_ini
from chicory_backends.base import Backend
from chicory_backends.codec import check_label, check_task_id
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
from chicory_backends.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    check_state,
    check_window,
    decode_cursor,
    parse_age,
)
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.sql.drivers import driver_for
from chicory_backends.sql.engine import translate_error
from chicory_backends.sql.maintenance import Progress
from chicory_backends.sql.migrate import (
    UpgradePlan,
    alembic_config,
    database_revision,
    plan_upgrade,
    revision_steps,
)
from chicory_backends.types import (
    BackendStatus,
    BackendType,
    TaskPage,
    TaskRecord,
    TaskState,
    TaskSummary,
    WorkerStats,
)

PROG = "chicory-backends"
T = TypeVar("T")
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


# A moment of --since/--until: an age before now ("1h") or an ISO 8601 time (UTC if no zone).
Moment = timedelta | datetime


def moment(text: str) -> Moment:
    try:
        return parse_age(text)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long ago") from None
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age like 90s, 15m, 1h, 7d nor an ISO 8601 time"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def resolve_moment(option: str, value: Moment | None, now: datetime) -> datetime | None:
    """The UTC time ``value`` means at ``now``: an age counts back from ``now``."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return now - value
    except OverflowError:
        age = describe_duration(value.total_seconds())
        raise ConfigurationError(f"{option}: {age} ago is before year 1") from None


def resolve_window(
    args: argparse.Namespace, now: datetime
) -> tuple[datetime | None, datetime | None]:
    since = resolve_moment("--since", args.since, now)
    until = resolve_moment("--until", args.until, now)
    try:
        return check_window(since, until)
    except ValueError as error:
        raise ConfigurationError(f"--since/--until: {error}") from None


def page_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is over the page limit of {MAX_PAGE_SIZE}")
    return value


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type from one of the library's checks: its ValueError, one line."""

    def convert(text: str) -> str:
        try:
            check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return convert


def task_state(text: str) -> TaskState:
    try:
        state = check_state(text.upper())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    assert state is not None
    return state


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
    migrate.add_argument(
        "--check",
        action="store_true",
        help="print what the upgrade would find and do (Chicory's own tables, row counts, "
        "the steps, an estimated time) and change nothing; exit 1 when an upgrade is due",
    )
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

    tasks = commands.add_parser(
        "tasks", parents=common, help="task history, newest first, one page at a time"
    )
    tasks.add_argument("--state", type=task_state, help="only tasks in this state")
    tasks.add_argument("--name", type=_checked(lambda v: check_label("name", v)))
    tasks.add_argument(
        "--worker", type=_checked(lambda v: check_label("worker_id", v)), help="worker id"
    )
    _window_options(tasks, since_default=None)
    tasks.add_argument(
        "--limit",
        type=page_size,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"tasks per page, at most {MAX_PAGE_SIZE}",
    )
    tasks.add_argument(
        "--cursor",
        type=_checked(decode_cursor),
        help="where the page starts: the cursor printed after the previous page",
    )
    tasks.set_defaults(handler=run_tasks)

    task = commands.add_parser(
        "task", parents=common, help="one task's whole record: result, error, traceback"
    )
    task.add_argument("task_id", type=_checked(check_task_id), metavar="ID")
    task.set_defaults(handler=run_task)

    stats = commands.add_parser(
        "stats",
        parents=common,
        help="results per state, age, expiry; per task name: counts, failure rate, runtimes",
    )
    _window_options(stats, since_default="24h")
    stats.set_defaults(handler=run_stats)

    workers = commands.add_parser("workers", parents=common, help="active workers (heartbeats)")
    workers.set_defaults(handler=run_workers)

    dashboard = commands.add_parser(
        "dashboard", parents=common, help="serve the web dashboard and /metrics (web extra)"
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback)")
    dashboard.add_argument("--port", type=int, default=8000, help="default 8000")
    dashboard.add_argument(
        "--token",
        default=os.environ.get("CHICORY_DASHBOARD_TOKEN"),
        help="required for any host but loopback (default: $CHICORY_DASHBOARD_TOKEN)",
    )
    dashboard.add_argument(
        "--allow-delete", action="store_true", help="offer a button that deletes a result"
    )
    dashboard.set_defaults(handler=run_dashboard_command)
    return parser


def run_dashboard_command(args: argparse.Namespace, target: Target) -> int:
    """Serve until interrupted; the dashboard asks the backend, never SQL (web/)."""
    from chicory_backends.web.serve import run_dashboard

    run_dashboard(
        lambda: create_backend(target.kind, target.config),
        host=args.host,
        port=args.port,
        token=args.token,
        allow_delete=args.allow_delete,
    )
    return EXIT_OK


def _window_options(parser: argparse.ArgumentParser, since_default: str | None) -> None:
    parser.add_argument(
        "--since",
        type=moment,
        default=since_default,
        metavar="AGE|TIME",
        help="tasks created at or after: an age (90s, 15m, 1h, 7d) or an ISO 8601 time"
        + (f" (default {since_default})" if since_default else ""),
    )
    parser.add_argument(
        "--until",
        type=moment,
        metavar="AGE|TIME",
        help="tasks created before: an age (10m) or an ISO 8601 time",
    )


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


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(char: str) -> str:
    """One character as an escape that both Python and bash's $'...' read back."""
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe_text(value: object, keep: str = "") -> str:
    """User data (task ids, names, errors) as inert text: every control, format or
    separator character but those in ``keep`` escaped (\\n, \\x1b, \\u202e), so that
    a value can neither start a line of its own nor send the terminal an escape."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else escaped(char) for char in text)


def first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = text.strip().split("\n", 1)[0].strip()
    return safe_text(line if len(line) <= width else line[: width - 3] + "...")


def iso_seconds(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def shell_word(text: str) -> str:
    """One argument of a command line to paste into a POSIX shell; bash's $'...' when
    the text holds control characters, so that the command stays one line."""
    if text.isprintable():
        return shlex.quote(text)
    body = "".join(
        escaped(char) if not char.isprintable() else "\\" + char if char in "\\'" else char
        for char in text
    )
    return f"$'{body}'"


def masked_url(url: str) -> str:
    """``url`` with its password, if it has one, replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "URL"
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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

    if args.check:
        return report_plan(args, target, asyncio.run(plan_upgrade(config)))
    if not driver_for(config).session_pinned:
        # The migration lock is a session-wide advisory lock: through transaction pooling
        # it would stay behind on whichever server connection took it.
        raise ConfigurationError(
            "migrate needs a direct connection to PostgreSQL, not through PgBouncer: run it "
            "with CHICORY_BACKEND_POSTGRES_PGBOUNCER=false and the server's own address"
        )
    before = asyncio.run(database_revision(config))
    alembic_cfg.attributes["on_version_apply"] = step_progress(args.json)
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


def step_progress(quiet: bool) -> Callable[..., None]:
    """A line on stderr as each revision is applied, with the time it took."""
    last = [time.monotonic()]

    def show(*, step: Any, **_: Any) -> None:
        now = time.monotonic()
        if not quiet:
            print(
                f"migrate: applied {step.up_revision_id}: {step.up_revision.doc.splitlines()[0]}"
                f" ({now - last[0]:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        last[0] = now

    return show


def report_plan(args: argparse.Namespace, target: Target, plan: UpgradePlan) -> int:
    """``migrate --check``: what was found, what would run; exit 1 when an upgrade is due."""
    docs = dict(revision_steps())
    found = (
        "Chicory 0.1.0's own tables (adopted in place by revision 0001, rows kept)"
        if plan.chicory_tables
        else f"revision {plan.revision}"
        if plan.revision
        else "no schema"
    )
    lines = [f"{target.label}: found {found}"]
    lines += [f"  {table}: {count} rows" for table, count in plan.rows.items()]
    if plan.needed:
        lines.append(f"upgrade to {plan.head} would apply:")
        lines += [f"  {revision}: {docs[revision].splitlines()[0]}" for revision in plan.steps]
        lines.append(f"estimated time: about {max(plan.estimated_seconds, 0.1):.1f}s")
    else:
        lines.append(f"schema at head ({plan.head}): nothing to do")
    payload = {
        "backend": target.kind.value,
        "revision": plan.revision,
        "head": plan.head,
        "chicory_tables": plan.chicory_tables,
        "rows": plan.rows,
        "steps": plan.steps,
        "estimated_seconds": round(plan.estimated_seconds, 1),
    }
    emit(args, payload, "\n".join(lines))
    return EXIT_RUNTIME if plan.needed else EXIT_OK


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


# -- task history ------------------------------------------------------------------

TASK_COLUMNS = ("TASK ID", "NAME", "STATE", "ATTEMPTS", "WORKER", "STARTED", "RUNTIME", "ERROR")


def task_row(record: TaskRecord) -> list[object]:
    return [
        safe_text(record.task_id),
        "-" if record.name is None else safe_text(record.name),
        record.state.value,
        record.attempts,
        "-" if record.worker_id is None else safe_text(record.worker_id),
        iso_seconds(record.started_at),
        seconds(record.runtime),
        first_line(record.error),
    ]


def next_page_command(
    args: argparse.Namespace, since: datetime | None, until: datetime | None, cursor: str
) -> str:
    """The command line of the next page: the same filters, the window pinned to the
    times this page used (an age would move), the cursor; the URL without its password."""
    words = [PROG, "tasks"]
    if args.url is not None:
        words += ["--url", masked_url(args.url)]
    for option, value in (
        ("--state", args.state),
        ("--name", args.name),
        ("--worker", args.worker),
    ):
        if value is not None:
            words += [option, str(value)]
    for option, moment in (("--since", since), ("--until", until)):
        if moment is not None:
            words += [option, moment.isoformat()]
    if args.limit != DEFAULT_PAGE_SIZE:
        words += ["--limit", str(args.limit)]
    words += ["--cursor", cursor]
    return " ".join(shell_word(word) for word in words)


async def with_backend(target: Target, call: Callable[[Backend], Awaitable[T]]) -> T:
    """``call(backend)`` on a connected backend of the target; the backend's public
    methods only (the history contract of base.Backend)."""
    async with create_backend(target.kind, target.config) as backend:
        return await call(backend)


def run_tasks(args: argparse.Namespace, target: Target) -> int:
    since, until = resolve_window(args, datetime.now(UTC))

    async def page_of(backend: Backend) -> TaskPage:
        return await backend.list_tasks(
            state=args.state, name=args.name, worker_id=args.worker, since=since,
            until=until, limit=args.limit, cursor=args.cursor,
        )  # fmt: skip

    page: TaskPage = asyncio.run(with_backend(target, page_of))
    payload = {
        "items": [record.model_dump(mode="json") for record in page.items],
        "next_cursor": page.next_cursor,
    }
    if page.items:
        text = render_table(TASK_COLUMNS, [task_row(record) for record in page.items])
    else:
        text = f"{target.label}: no tasks" + (" on this page" if args.cursor else "")
    if page.next_cursor is not None:
        text += f"\nnext page: {next_page_command(args, since, until, page.next_cursor)}"
    emit(args, payload, text)
    return EXIT_OK


def json_text(value: object) -> str:
    return safe_text(json.dumps(value, default=str, ensure_ascii=False))


def describe_task(record: TaskRecord) -> str:
    fields: list[tuple[str, object]] = [
        ("task id", safe_text(record.task_id)),
        ("name", "-" if record.name is None else safe_text(record.name)),
        ("state", record.state.value),
        ("queue", "-" if record.queue is None else safe_text(record.queue)),
        ("worker", "-" if record.worker_id is None else safe_text(record.worker_id)),
        ("attempts", record.attempts),
        ("created", iso(record.created_at) or "-"),
        ("enqueued", iso(record.enqueued_at) or "-"),
        ("started", iso(record.started_at) or "-"),
        ("finished", iso(record.finished_at) or "-"),
        ("updated", iso(record.updated_at) or "-"),
        ("runtime", seconds(record.runtime)),
        ("args", "-" if record.args is None else json_text(record.args)),
        ("result", json_text(record.result)),
        ("error", "-" if record.error is None else safe_text(record.error)),
    ]
    width = len("traceback:")
    lines = [f"{label + ':':<{width}} {value}" for label, value in fields]
    if record.traceback:
        # As it was stored, line by line; only escapes and other control characters
        # are made visible (a stored traceback is data, not terminal commands).
        lines.append("traceback:")
        lines += [safe_text(line, keep="\t") for line in record.traceback.rstrip("\n").split("\n")]
    else:
        lines.append(f"{'traceback:':<{width}} -")
    return "\n".join(lines)


def run_task(args: argparse.Namespace, target: Target) -> int:
    task_id: str = args.task_id
    record = asyncio.run(with_backend(target, lambda backend: backend.get_task(task_id)))
    if record is None:
        fail(f"no task {safe_text(task_id)}")
        return EXIT_RUNTIME
    emit(args, record.model_dump(mode="json"), describe_task(record))
    return EXIT_OK


# -- stats ---------------------------------------------------------------------------

SUMMARY_STATES = (
    TaskState.PENDING, TaskState.STARTED, TaskState.RETRY, TaskState.SUCCESS,
    TaskState.FAILURE, TaskState.DEAD_LETTERED,
)  # fmt: skip
SUMMARY_COLUMNS = ("NAME", "TOTAL", *SUMMARY_STATES, "FAILURE RATE", "P50", "P95", "MAX")


def summary_row(summary: TaskSummary) -> list[object]:
    return [
        "(no name)" if summary.name is None else safe_text(summary.name),
        summary.total,
        *(summary.states.get(state, 0) for state in SUMMARY_STATES),
        percent(summary.failure_rate),
        seconds(summary.runtime_p50),
        seconds(summary.runtime_p95),
        seconds(summary.runtime_max),
    ]


async def storage_and_history(
    config: SQLBackendConfig, since: datetime | None, until: datetime | None
) -> tuple[Any, list[TaskSummary]]:
    async with DatabaseBackend(config) as backend:
        return await backend.result_stats(), await backend.task_summary(since=since, until=until)


def describe_window(since: datetime | None, until: datetime | None) -> str:
    start = "the start" if since is None else iso_seconds(since)
    return f"tasks created from {start} until {'now' if until is None else iso_seconds(until)}"


def run_stats(args: argparse.Namespace, target: Target) -> int:
    """Per task name on every backend; the storage overview (results per state, expiry)
    too on SQL, the only backends that keep one."""
    since, until = resolve_window(args, datetime.now(UTC))
    if target.kind is BackendType.REDIS:
        summaries = asyncio.run(
            with_backend(target, lambda backend: backend.task_summary(since=since, until=until))
        )
        stats = None
    else:
        stats, summaries = asyncio.run(
            storage_and_history(target.sql_config("stats"), since, until)
        )
    payload: dict[str, Any] = {
        "backend": target.kind.value,
        "address": target.config.address(),
        "since": iso(since),
        "until": iso(until),
        "tasks": [summary.model_dump(mode="json") for summary in summaries],
    }
    history = (
        render_table(SUMMARY_COLUMNS, [summary_row(summary) for summary in summaries])
        if summaries
        else "no tasks"
    )
    lines = [target.label]
    if stats is not None:
        payload.update({
            "total": stats.total,
            "by_state": stats.by_state,
            "expired_not_reclaimed": stats.expired,
            "oldest_updated_at": iso(stats.oldest),
            "newest_updated_at": iso(stats.newest),
        })  # fmt: skip
        lines += [
            render_table(["STATE", "RESULTS"], [*stats.by_state.items(), ("total", stats.total)]),
            f"expired, not yet reclaimed: {stats.expired}",
            f"oldest updated_at: {iso(stats.oldest) or '-'}",
            f"newest updated_at: {iso(stats.newest) or '-'}",
            "",
        ]
    lines += [f"{describe_window(since, until)}:", history]
    emit(args, payload, "\n".join(lines))
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

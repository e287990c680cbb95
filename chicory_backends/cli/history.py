"""``tasks`` (a page of the task history, newest first) and ``task ID`` (one task's whole
record), and the ``--since``/``--until`` window ``stats`` shares; every backend, through
its public history methods only (the contract of base.Backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from chicory_backends.base import Backend
from chicory_backends.cli.app import (
    EXIT_OK,
    EXIT_RUNTIME,
    PROG,
    BadValue,
    JsonOption,
    Session,
    Target,
    UrlOption,
    checked,
    command,
    fail,
    session,
    whole_number,
)
from chicory_backends.cli.render import (
    first_line,
    iso,
    iso_seconds,
    json_text,
    safe_text,
    seconds,
    shell_word,
    table,
)
from chicory_backends.codec import check_label, check_task_id
from chicory_backends.errors import ConfigurationError
from chicory_backends.factory import create_backend
from chicory_backends.history import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    check_state,
    check_window,
    decode_cursor,
)
from chicory_backends.redact import redact
from chicory_backends.timetext import EXAMPLES, Moment, parse_moment
from chicory_backends.types import TaskPage, TaskRecord, TaskState

T = TypeVar("T")
DEFAULT_STATS_WINDOW = "24h"

# -- the window: --since and --until ----------------------------------------------------------


def since_value(text: str) -> Moment:
    return checked("--since", parse_moment)(text)


def until_value(text: str) -> Moment:
    return checked("--until", parse_moment)(text)


_SINCE_HELP = f"tasks created at or after: an age ({EXAMPLES}) or an ISO 8601 time (UTC if no zone)"
SinceOption = Annotated[
    Moment | None,
    typer.Option("--since", parser=since_value, metavar="AGE|TIME", help=_SINCE_HELP),
]
StatsSinceOption = Annotated[
    Moment | None,
    typer.Option(
        "--since",
        parser=since_value,
        metavar="AGE|TIME",
        help=f"{_SINCE_HELP} (default {DEFAULT_STATS_WINDOW})",
    ),
]
UntilOption = Annotated[
    Moment | None,
    typer.Option(
        "--until",
        parser=until_value,
        metavar="AGE|TIME",
        help="tasks created before: an age (10m) or an ISO 8601 time",
    ),
]


def resolve_moment(option: str, value: Moment | None, now: datetime) -> datetime | None:
    """The UTC time ``value`` means at ``now``; one too long ago is a configuration error."""
    if value is None:
        return None
    try:
        return value.at(now)
    except ValueError as error:
        raise ConfigurationError(f"{option}: {error}") from None


def resolve_window(
    since: Moment | None, until: Moment | None, default_since: str | None = None
) -> tuple[datetime | None, datetime | None]:
    """Both bounds at one ``now``, checked (``--since`` after ``--until`` is an error)."""
    now = datetime.now(UTC)
    if since is None and default_since is not None:
        since = parse_moment(default_since)
    since_at = resolve_moment("--since", since, now)
    until_at = resolve_moment("--until", until, now)
    try:
        return check_window(since_at, until_at)
    except ValueError as error:
        raise ConfigurationError(f"--since/--until: {error}") from None


async def with_backend(target: Target, call: Callable[[Backend], Awaitable[T]]) -> T:
    """``call(backend)`` on a connected backend of the target; the backend's public
    methods only (the history contract of base.Backend)."""
    async with create_backend(target.kind, target.config) as backend:
        return await call(backend)


# -- tasks -------------------------------------------------------------------------------------

TASK_COLUMNS = ("TASK ID", "NAME", "STATE", "ATTEMPTS", "WORKER", "STARTED", "RUNTIME", "ERROR")


def state_value(text: str) -> TaskState:
    state = checked("--state", check_state)(text.upper())
    assert state is not None
    return state


def name_value(text: str) -> str:
    return checked("--name", lambda value: check_label("name", value))(text)


def worker_value(text: str) -> str:
    return checked("--worker", lambda value: check_label("worker_id", value))(text)


def limit_value(text: str) -> int:
    value = whole_number("--limit", text)
    if value > MAX_PAGE_SIZE:
        raise BadValue("--limit", f"{text!r} is over the page limit of {MAX_PAGE_SIZE}")
    return value


def cursor_value(text: str) -> str:
    checked("--cursor", decode_cursor)(text)
    return text


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
    asked: Session,
    filters: dict[str, str | None],
    window: tuple[datetime | None, datetime | None],
    limit: int,
    cursor: str,
) -> str:
    """The command line of the next page: the same filters, the window pinned to the
    times this page used (an age would move), the cursor; the URL without its password."""
    words = [PROG, "tasks"]
    if asked.url is not None:
        words += ["--url", redact(asked.url)]
    for option, value in filters.items():
        if value is not None:
            words += [option, value]
    for option, moment in zip(("--since", "--until"), window, strict=True):
        if moment is not None:
            words += [option, moment.isoformat()]
    if limit != DEFAULT_PAGE_SIZE:
        words += ["--limit", str(limit)]
    words += ["--cursor", cursor]
    return " ".join(shell_word(word) for word in words)


@command("tasks", help="task history, newest first, one page at a time")
def tasks(
    ctx: typer.Context,
    state: Annotated[
        TaskState | None,
        typer.Option(
            "--state",
            parser=state_value,
            metavar="STATE",
            help=f"only tasks in this state: {', '.join(s.value for s in TaskState)}",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", parser=name_value, metavar="NAME", help="only tasks of this task name"
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", parser=worker_value, metavar="ID", help="only tasks this worker ran"
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            parser=limit_value,
            metavar="N",
            help=f"tasks per page, at most {MAX_PAGE_SIZE}",
        ),
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor",
            parser=cursor_value,
            metavar="CURSOR",
            help="where the page starts: the cursor printed after the previous page",
        ),
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target()
    window = resolve_window(since, until)

    async def page_of(backend: Backend) -> TaskPage:
        return await backend.list_tasks(
            state=state, name=name, worker_id=worker, since=window[0], until=window[1],
            limit=limit, cursor=cursor,
        )  # fmt: skip

    page: TaskPage = asyncio.run(with_backend(target, page_of))
    payload = {
        "items": [record.model_dump(mode="json") for record in page.items],
        "next_cursor": page.next_cursor,
    }
    if page.items:
        text = table(TASK_COLUMNS, [task_row(record) for record in page.items])
    else:
        text = f"{target.label}: no tasks" + (" on this page" if cursor else "")
    if page.next_cursor is not None:
        filters = {
            "--state": None if state is None else state.value,
            "--name": name,
            "--worker": worker,
        }
        line = next_page_command(asked, filters, window, limit, page.next_cursor)
        text += f"\nnext page: {line}"
    asked.emit(payload, text)
    return EXIT_OK


# -- task --------------------------------------------------------------------------------------


def task_id_value(text: str) -> str:
    return checked("ID", check_task_id)(text)


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


@command("task", help="one task's whole record: result, error, traceback")
def task(
    ctx: typer.Context,
    task_id: Annotated[
        str,
        typer.Argument(
            parser=task_id_value,
            metavar="ID",
            help="the task's id, as stored (tasks lists them); exit 1 when no such task",
            show_default=False,
        ),
    ],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> int:
    asked = session(ctx, url, as_json)
    target = asked.target()
    record = asyncio.run(with_backend(target, lambda backend: backend.get_task(task_id)))
    if record is None:
        fail(f"no task {safe_text(task_id)}")
        return EXIT_RUNTIME
    asked.emit(record.model_dump(mode="json"), describe_task(record))
    return EXIT_OK

"""What the commands print: inert text, Rich tables, times and numbers, progress.

Stored task ids, names, errors and tracebacks are user data. ``safe_text`` makes them
inert: every control, format or separator character appears escaped (``\\n``,
``\\x1b``, ``\\u202e``), so that a value can neither start a line of its own nor send
the terminal an escape (Rich passes an ESC through as it is: its own escaping covers
five control codes only). Rich is handed such text as ``Text`` objects, never as a
string it would read ``[bold]`` markup or ``:emoji:`` codes in; plain lines are printed
with ``print``, which interprets nothing.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# -- inert text ------------------------------------------------------------------------

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
    """User data as inert text: every control, format or separator character but those
    in ``keep`` escaped (\\n, \\x1b, \\u202e)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else escaped(char) for char in text)


def first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = text.strip().split("\n", 1)[0].strip()
    return safe_text(line if len(line) <= width else line[: width - 3] + "...")


def json_text(value: object) -> str:
    return safe_text(json.dumps(value, default=str, ensure_ascii=False))


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


# -- times and numbers -------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; MySQL and SQLite hand back the stored UTC time without its zone."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


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


# -- output ----------------------------------------------------------------------------


def emit(payload: dict[str, Any], text: str, *, as_json: bool) -> None:
    """The payload as one line of JSON for scripts, or the text for people."""
    print(json.dumps(payload, default=str) if as_json else text)


def _stdout_is_terminal() -> bool:
    return Console(file=sys.stdout).is_terminal


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns two spaces apart, left-aligned, as wide as their widest cell (never
    wrapped, whatever the terminal's width); the header bold on a terminal. Each cell is
    shown as ``str(cell)``, as text: callers pass stored values through ``safe_text``."""
    grid = Table(
        box=None,
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
        header_style="bold",
        highlight=False,
    )
    for header in headers:
        grid.add_column(Text(header), no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*(Text(str(cell)) for cell in row))
    terminal = _stdout_is_terminal()
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=1_000_000,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        markup=False,
        emoji=False,
        highlight=False,
    )
    console.print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


# -- progress --------------------------------------------------------------------------


def _stderr() -> Console:
    return Console(stderr=True, markup=False, emoji=False, highlight=False)


@contextmanager
def deleted_so_far(enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """cleanup's progress bar on stderr (a terminal only), told the rows deleted so far
    after each batch; gone when the block ends. None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("cleanup: {task.completed} results deleted so far"),
        BarColumn(),
        TimeElapsedColumn(),
        console=_stderr(),
        transient=True,
    )
    task = progress.add_task("cleanup", total=None)

    def show(deleted: int) -> None:
        progress.update(task, completed=deleted)

    with progress:
        yield show


def revision_lines(quiet: bool) -> Callable[..., None]:
    """migrate's progress: Alembic's ``on_version_apply`` callback, printing a line on
    stderr as each revision is applied, with the time it took."""
    console = _stderr()
    last = [time.monotonic()]

    def show(*, step: Any, **_: Any) -> None:
        now = time.monotonic()
        if not quiet:
            doc = step.up_revision.doc.splitlines()[0]
            line = f"migrate: applied {step.up_revision_id}: {doc} ({now - last[0]:.1f}s)"
            console.print(Text(line), soft_wrap=True)
            console.file.flush()
        last[0] = now

    return show

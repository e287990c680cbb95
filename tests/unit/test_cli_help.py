"""The CLI without a server: its help says what every option does, usage errors are one
line (exit 2), alembic-ini --url writes the URL or refuses a password, and stored text
is never read as Rich markup."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from chicory_backends.cli import main
from chicory_backends.cli.render import safe_text, table

Capture = pytest.CaptureFixture[str]


def help_of(capsys: Capture, *command: str) -> str:
    assert main([*command, "--help"]) == 0
    # One line, whatever the width: Rich's panel borders out, wrapped lines joined.
    return " ".join(capsys.readouterr().out.replace("\u2502", " ").split())


def test_every_command_is_there(capsys: Capture) -> None:
    assert main(["-h"]) == 0 and main(["task", "-h"]) == 0  # -h too, as with argparse
    capsys.readouterr()
    text = help_of(capsys)
    for name in (
        "migrate", "alembic-ini", "cleanup", "health", "tasks", "task", "stats", "workers",
        "dashboard",
    ):  # fmt: skip
        assert f" {name} " in text, name


def test_the_help_is_true(capsys: Capture) -> None:
    cleanup = help_of(capsys, "cleanup")
    assert "also" not in cleanup
    assert "delete results not updated for this long, expired or not" in cleanup
    tasks = help_of(capsys, "tasks")
    assert "only tasks of this task name" in tasks
    task = help_of(capsys, "task")
    assert "the task's id, as stored" in task
    ini = help_of(capsys, "alembic-ini")
    assert "sqlalchemy.url" in ini and "password is refused" in ini


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["cleanup"], "missing option '--older-than'"),
        (["cleanup", "--older-than", "9999999d"], "'9999999d' reaches back before year 1"),
        (["tasks", "--nosuch"], "no such option"),
        (["nosuch"], "no such command 'nosuch'"),
        ([], "missing command"),
    ],
)
def test_usage_errors_are_one_line(capsys: Capture, args: list[str], says: str) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("chicory-backends: error: ") and says in captured.err
    assert captured.err.count("\n") == 1, captured.err


def test_alembic_ini_writes_the_url(capsys: Capture, tmp_path: Path) -> None:
    url = "sqlite+aiosqlite:///results%20here.db"
    assert main(["alembic-ini", "--url", url]) == 0
    ini = tmp_path / "alembic.ini"
    ini.write_text(capsys.readouterr().out)
    parser = configparser.ConfigParser()  # as alembic reads it, interpolation included
    parser.read(ini)
    assert parser.get("alembic", "sqlalchemy.url") == url
    assert main(["--url", url, "alembic-ini"]) == 0  # before the command name too
    assert f"sqlalchemy.url = {url.replace('%', '%%')}\n" in capsys.readouterr().out
    assert main(["alembic-ini"]) == 0
    assert "sqlalchemy.url" not in capsys.readouterr().out.split("[loggers]")[0]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+asyncpg://u:s3cr3t@db/app", "holds a password"),
        ("postgresql+asyncpg://u@db/app?password=s3cr3t", "holds a password"),
        ("redis://db:6379/0", "not Redis"),
        ("sqlite:///a.db\n[alembic]", "one word on one line"),
        ("nosuch://db", "unknown scheme"),
    ],
)
def test_alembic_ini_refuses(capsys: Capture, url: str, says: str) -> None:
    assert main(["alembic-ini", "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and says in captured.err and "s3cr3t" not in captured.err
    assert captured.err.count("\n") == 1


def test_stored_text_is_never_rich_markup() -> None:
    hostile = ["[bold red]x[/bold red]", ":smile:", "[link=http://e.x]y[/link]", "a\x1b[2Jb"]
    text = table(["ID", "NAME"], [[safe_text(value), "n"] for value in hostile])
    lines = text.split("\n")
    assert lines[0].split() == ["ID", "NAME"]
    assert [line.rsplit("  ", 1)[0].rstrip() for line in lines[1:]] == [
        "[bold red]x[/bold red]",
        ":smile:",
        "[link=http://e.x]y[/link]",
        "a\\x1b[2Jb",
    ]
    assert "\x1b" not in text and all(line == line.rstrip() for line in lines)


def test_tables_never_wrap() -> None:
    wide = "w" * 500
    text = table(["A", "B"], [[wide, "end"]])
    assert text.split("\n")[1] == f"{wide}  end"

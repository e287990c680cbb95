"""``chicory-backends tasks``, ``task`` and ``stats`` (task history), run as the installed
console script on real databases seeded through the backend's own API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chicory_backends import TaskResult, TaskState, create_backend
from chicory_backends.base import Backend
from chicory_backends.config import RedisBackendConfig, SQLBackendConfig
from chicory_backends.types import TaskDetails, TaskSummary
from tests.support.redis_servers import delete_prefix, single_node_config
from tests.support.sql_databases import SQL_KINDS, migrated_database, run_database_name

SCRIPT = Path(sys.executable).with_name("chicory-backends")
SECRET = "Zq7-distinctive-Pa55w0rd"  # PostgreSQL trusts the test client and ignores it
ESC = "\x1b"

# A task id and name that try to forge a table row and recolour (or clear) the terminal.
EVIL_ID = "evil\n\x1b[31mFORGED ROW"
EVIL_ID_SHOWN = "evil\\n\\x1b[31mFORGED ROW"
EVIL_NAME = "bad\x1b[2Jname"
EVIL_NAME_SHOWN = "bad\\x1b[2Jname"

INVOICE_OK = ("inv-1", "inv-2", "inv-3", "inv-4")  # SUCCESS; inv-4 runs for SLOW seconds
INVOICE_FAILED = "inv-5"
MAIL_PENDING = ("mail-1", "mail-2", "mail-3")
MAIL_STARTED = ("mail-4", "mail-5")
MAIL_DEAD = "mail-6"
NAMELESS = "no-name-1"
FIRST_BATCH = (*INVOICE_OK, INVOICE_FAILED)
SECOND_BATCH = (*MAIL_PENDING, *MAIL_STARTED, MAIL_DEAD, EVIL_ID, NAMELESS)
ALL_IDS = (*FIRST_BATCH, *SECOND_BATCH)
SLOW = 0.2
INVOICE_ERROR = "ValueError: bad amount 12.50\nsecond line of the message"
INVOICE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "app/tasks.py", line 42, in send_invoice\n'
    "\traise ValueError(amount)\n"
    "ValueError: bad amount 12.50\n"
)
EVIL_TRACEBACK = "Traceback (most recent call last):\n\x1b[2J\x1b[Hcleared\nRuntimeError: boom"


def shown(task_id: str) -> str:
    return EVIL_ID_SHOWN if task_id == EVIL_ID else task_id


# -- running the script ----------------------------------------------------------------


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHICORY_BACKEND_")}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The script's own output: never a Python traceback on stderr, never the password,
    never a raw escape character, and a failure is one line on stderr."""
    done = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    if "--json" not in args:
        assert ESC not in done.stdout + done.stderr, done.stdout
    if done.returncode != 0:
        assert done.stderr.count("\n") == 1, f"not one line on stderr: {done.stderr!r}"
    return done


def run_ok(*args: str, env: dict[str, str]) -> str:
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_json(*args: str, env: dict[str, str]) -> Any:
    return json.loads(run_ok(*args, "--json", env=env))


# -- the seeded databases ----------------------------------------------------------------


@dataclass
class History:
    kind: str
    config: SQLBackendConfig | RedisBackendConfig
    env: dict[str, str]
    mark: datetime  # between the two batches: the first is older, the second newer


def environment_for(kind: str, config: SQLBackendConfig | RedisBackendConfig) -> dict[str, str]:
    env = clean_environment() | {"CHICORY_BACKEND_TYPE": kind}
    if isinstance(config, RedisBackendConfig):
        return env | {
            "CHICORY_BACKEND_REDIS_HOST": config.host,
            "CHICORY_BACKEND_REDIS_PORT": str(config.port),
            "CHICORY_BACKEND_REDIS_DB": str(config.db),
            "CHICORY_BACKEND_REDIS_KEY_PREFIX": config.key_prefix,
        }
    url = config.sqlalchemy_url()
    if kind == "sqlite":
        return env | {"CHICORY_BACKEND_SQLITE_FILE_PATH": str(url.database)}
    if kind == "postgres":
        url = url.set(password=SECRET)
    prefix = "CHICORY_BACKEND_POSTGRES_" if kind == "postgres" else "CHICORY_BACKEND_MYSQL_"
    return env | {f"{prefix}URL": url.render_as_string(hide_password=False)}


async def seed(kind: str, config: SQLBackendConfig | RedisBackendConfig) -> datetime:
    """The tasks above, through the backend's API; the time between the two batches."""
    async with create_backend(kind, config) as backend:

        async def run(
            task_id: str, name: str, worker: str, result: TaskResult, pause: float = 0.0
        ) -> None:
            await backend.set_state(task_id, TaskState.PENDING, TaskDetails(name=name))
            running = TaskDetails(name=name, worker_id=worker, attempt=1)
            await backend.set_state(task_id, TaskState.STARTED, running)
            if pause:
                await asyncio.sleep(pause)
            await backend.store_result(task_id, result, running)

        for task_id in INVOICE_OK:
            ok = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result={"sent": task_id})
            await run(task_id, "send_invoice", "w1", ok, SLOW if task_id == "inv-4" else 0.0)
        failed = TaskResult(
            task_id=INVOICE_FAILED,
            state=TaskState.FAILURE,
            error=INVOICE_ERROR,
            traceback=INVOICE_TRACEBACK,
        )
        await run(INVOICE_FAILED, "send_invoice", "w2", failed)

        await asyncio.sleep(0.05)
        mark = datetime.now(UTC)
        await asyncio.sleep(0.05)

        for task_id in MAIL_PENDING:
            await backend.set_state(task_id, TaskState.PENDING, TaskDetails(name="send_mail"))
        for task_id in MAIL_STARTED:
            details = TaskDetails(name="send_mail", worker_id="w2", attempt=1)
            await backend.set_state(task_id, TaskState.STARTED, details)
        dead = TaskResult(task_id=MAIL_DEAD, state=TaskState.DEAD_LETTERED, error="gave up")
        await backend.store_result(MAIL_DEAD, dead, TaskDetails(name="send_mail", attempt=3))
        evil = TaskResult(
            task_id=EVIL_ID,
            state=TaskState.FAILURE,
            error="boom\x1b[31m\nFORGED LINE",
            traceback=EVIL_TRACEBACK,
        )
        await run(EVIL_ID, EVIL_NAME, "w3", evil)
        await backend.set_state(NAMELESS, TaskState.PENDING)
        return mark


@pytest.fixture(scope="module", params=(*SQL_KINDS, "redis"))
def history(request: pytest.FixtureRequest) -> Iterator[History]:
    kind: str = request.param
    if kind == "redis":
        redis = single_node_config(key_prefix=f"chicory-cli-{uuid.uuid4().hex[:12]}")
        try:
            mark = asyncio.run(seed(kind, redis))
            yield History(kind, redis, environment_for(kind, redis), mark)
        finally:
            asyncio.run(delete_prefix(redis))
        return
    with migrated_database(kind, run_database_name("cli_history")) as config:
        mark = asyncio.run(seed(kind, config))
        yield History(kind, config, environment_for(kind, config), mark)


def summaries(history: History) -> list[TaskSummary]:
    async def read() -> list[TaskSummary]:
        backend: Backend
        async with create_backend(history.kind, history.config) as backend:
            return await backend.task_summary()

    return asyncio.run(read())


# -- parsing the table -------------------------------------------------------------------

ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def table_ids(stdout: str) -> tuple[list[str], list[str]]:
    """The task ids of a table's rows (by what each row starts with) and its other lines."""
    lines = stdout.rstrip("\n").split("\n")
    assert lines[0].split() == [
        "TASK", "ID", "NAME", "STATE", "ATTEMPTS", "WORKER", "STARTED", "RUNTIME", "ERROR",
    ]  # fmt: skip
    ids, rest = [], []
    for line in lines[1:]:
        # Longest first: "inv-1" must not claim a row of a longer id that starts alike.
        match = [t for t in sorted(ALL_IDS, key=len, reverse=True) if line.startswith(shown(t))]
        if match and line[len(shown(match[0])) :].startswith("  "):
            ids.append(match[0])
        else:
            rest.append(line)
    return ids, rest


def row_of(stdout: str, task_id: str) -> list[str]:
    """A row's cells (ids and names here hold no double space)."""
    for line in stdout.split("\n"):
        if line.startswith(shown(task_id) + "  "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row for {task_id!r} in {stdout}")


def next_page(stdout: str) -> list[str] | None:
    hints = [line for line in stdout.split("\n") if line.startswith("next page: ")]
    if not hints:
        return None
    assert len(hints) == 1 and stdout.rstrip("\n").endswith(hints[0])
    words = shlex.split(hints[0].removeprefix("next page: "))
    assert words[:2] == ["chicory-backends", "tasks"]
    return words[1:]


# -- tasks -------------------------------------------------------------------------------


def test_tasks_table_newest_first(history: History) -> None:
    stdout = run_ok("tasks", env=history.env)
    ids, rest = table_ids(stdout)
    assert rest == []  # the hostile id forged no line of its own, and there is no next page
    assert ids == list(reversed(ALL_IDS))

    failed = row_of(stdout, INVOICE_FAILED)
    assert failed[:5] == [INVOICE_FAILED, "send_invoice", "FAILURE", "1", "w2"]
    assert ISO_SECONDS.match(failed[5]), failed
    assert re.fullmatch(r"\d+\.\d{3}s", failed[6]), failed
    assert failed[7] == "ValueError: bad amount 12.50"  # the first line only
    slow = row_of(stdout, "inv-4")
    assert float(slow[6].removesuffix("s")) >= SLOW - 0.01
    assert row_of(stdout, "mail-1") == ["mail-1", "send_mail", "PENDING", "0", "-", "-", "-", "-"]
    assert row_of(stdout, NAMELESS)[:3] == [NAMELESS, "-", "PENDING"]
    assert row_of(stdout, MAIL_DEAD)[2:5] == ["DEAD_LETTERED", "3", "-"]

    page = run_json("tasks", env=history.env)
    assert page["next_cursor"] is None
    assert [item["task_id"] for item in page["items"]] == list(reversed(ALL_IDS))
    item = next(item for item in page["items"] if item["task_id"] == INVOICE_FAILED)
    assert item["error"] == INVOICE_ERROR and item["worker_id"] == "w2"
    assert item["state"] == "FAILURE" and item["runtime"] >= 0
    assert datetime.fromisoformat(item["created_at"]) < history.mark


def test_paging_with_the_printed_command_reaches_every_task_once(history: History) -> None:
    seen: list[str] = []
    args: list[str] | None = ["tasks", "--limit", "5"]
    pages = 0
    while args is not None:
        stdout = run_ok(*args, env=history.env)
        ids, rest = table_ids(stdout)
        assert len(ids) <= 5
        seen += ids
        args = next_page(stdout)
        assert rest == ([] if args is None else [rest[-1]])
        pages += 1
    assert pages == 3
    assert seen == list(reversed(ALL_IDS))

    # --json pages by next_cursor alike.
    cursor, by_json = None, []
    while True:
        page = run_json("tasks", "--limit", "4", *(["--cursor", cursor] if cursor else []),
                        env=history.env)  # fmt: skip
        by_json += [item["task_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert by_json == seen

    # Filters and a relative window survive into the printed command, pinned to times.
    stdout = run_ok("tasks", "--name", "send_mail", "--since", "1h", "--limit", "4",
                    env=history.env)  # fmt: skip
    words = next_page(stdout)
    assert words is not None
    assert words[words.index("--name") + 1] == "send_mail"
    since = datetime.fromisoformat(words[words.index("--since") + 1])
    assert abs((datetime.now(UTC) - since).total_seconds() - 3600) < 60
    second = run_ok(*words, env=history.env)
    assert next_page(second) is None
    mail = table_ids(stdout)[0] + table_ids(second)[0]
    assert sorted(mail) == sorted((*MAIL_PENDING, *MAIL_STARTED, MAIL_DEAD))


@pytest.mark.parametrize("history", ["postgres"], indirect=True)  # its URL has a password
def test_the_printed_command_never_shows_the_password(history: History) -> None:
    url = history.env["CHICORY_BACKEND_POSTGRES_URL"]
    assert SECRET in url
    stdout = run_ok("tasks", "--url", url, "--limit", "3", env=clean_environment())
    words = next_page(stdout)
    assert words is not None
    shown_url = words[words.index("--url") + 1]
    assert shown_url == url.replace(SECRET, "***")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--state", "FAILURE"], {INVOICE_FAILED, EVIL_ID}),
        (["--state", "pending"], {*MAIL_PENDING, NAMELESS}),
        (["--name", "send_invoice"], set(FIRST_BATCH)),
        (["--name", EVIL_NAME], {EVIL_ID}),
        (["--worker", "w2"], {INVOICE_FAILED, *MAIL_STARTED}),
        (["--worker", "w1", "--state", "SUCCESS"], set(INVOICE_OK)),
        (["--since", "1h"], set(ALL_IDS)),
        (["--since", "1h", "--until", "30m"], set()),
        (["--name", "nosuch"], set()),
    ],
)
def test_filters(history: History, filters: list[str], expected: set[str]) -> None:
    page = run_json("tasks", *filters, env=history.env)
    assert {item["task_id"] for item in page["items"]} == expected
    if not expected:
        assert run_ok("tasks", *filters, env=history.env).endswith(": no tasks\n")


def test_window_by_time(history: History) -> None:
    mark = history.mark.isoformat()
    newer = run_json("tasks", "--since", mark, env=history.env)["items"]
    assert {item["task_id"] for item in newer} == set(SECOND_BATCH)
    older = run_json("tasks", "--until", mark, env=history.env)["items"]
    assert {item["task_id"] for item in older} == set(FIRST_BATCH)
    naive = history.mark.replace(tzinfo=None).isoformat()  # no zone: UTC
    assert run_json("tasks", "--since", naive, env=history.env)["items"] == newer


# -- task --------------------------------------------------------------------------------


def test_task_shows_the_whole_record(history: History) -> None:
    stdout = run_ok("task", INVOICE_FAILED, env=history.env)
    lines = stdout.rstrip("\n").split("\n")
    fields = dict(line.split(":", 1) for line in lines[: lines.index("traceback:")])
    assert fields["task id"].strip() == INVOICE_FAILED
    assert fields["name"].strip() == "send_invoice"
    assert fields["state"].strip() == "FAILURE"
    assert fields["worker"].strip() == "w2"
    assert fields["attempts"].strip() == "1"
    assert fields["error"].strip() == "ValueError: bad amount 12.50\\nsecond line of the message"
    assert re.fullmatch(r"\d+\.\d{3}s", fields["runtime"].strip())
    # The traceback comes last, exactly as stored (tabs included).
    assert stdout.endswith("traceback:\n" + INVOICE_TRACEBACK)

    ok = run_ok("task", "inv-2", env=history.env)
    assert 'result:    {"sent": "inv-2"}' in ok
    assert ok.rstrip("\n").endswith("traceback: -")

    record = run_json("task", INVOICE_FAILED, env=history.env)
    assert record["traceback"] == INVOICE_TRACEBACK
    assert record["error"] == INVOICE_ERROR
    assert record["name"] == "send_invoice" and record["attempts"] == 1
    assert run_json("task", "inv-2", env=history.env)["result"] == {"sent": "inv-2"}


def test_unknown_task(history: History) -> None:
    done = run_cli("task", "nosuch", env=history.env)
    assert done.returncode == 1
    assert done.stderr == "chicory-backends: no task nosuch\n"
    assert done.stdout == ""
    hostile = run_cli("task", "no\nsuch\x1b[2J", env=history.env)
    assert hostile.returncode == 1
    assert hostile.stderr == "chicory-backends: no task no\\nsuch\\x1b[2J\n"


def test_hostile_task_id_name_and_error_stay_inert(history: History) -> None:
    stdout = run_ok("tasks", "--state", "FAILURE", env=history.env)
    lines = stdout.rstrip("\n").split("\n")
    assert len(lines) == 3  # the header and two rows
    assert not any(line.startswith("FORGED") for line in lines)
    row = row_of(stdout, EVIL_ID)
    assert row[:3] == [EVIL_ID_SHOWN, EVIL_NAME_SHOWN, "FAILURE"]
    assert row[-1] == "boom\\x1b[31m"

    detail = run_ok("task", EVIL_ID, env=history.env)
    assert f"task id:   {EVIL_ID_SHOWN}\n" in detail
    assert f"name:      {EVIL_NAME_SHOWN}\n" in detail
    assert "error:     boom\\x1b[31m\\nFORGED LINE\n" in detail
    assert detail.endswith(
        "traceback:\nTraceback (most recent call last):\n\\x1b[2J\\x1b[Hcleared\n"
        "RuntimeError: boom\n"
    )
    # JSON carries the exact text (escaped by JSON itself).
    record = run_json("task", EVIL_ID, env=history.env)
    assert record["task_id"] == EVIL_ID and record["traceback"] == EVIL_TRACEBACK

    if history.kind != "redis":  # stats is SQL only (see below)
        assert f"\n{EVIL_NAME_SHOWN}  " in run_ok("stats", env=history.env)


# -- stats -------------------------------------------------------------------------------

STATS_HEADER = [
    "NAME", "TOTAL", "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "DEAD_LETTERED",
    "FAILURE RATE", "P50", "P95", "MAX",
]  # fmt: skip


def stats_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.rstrip("\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME  "))
    assert re.split(r"\s{2,}", lines[start]) == STATS_HEADER
    rows = [re.split(r"\s{2,}", line) for line in lines[start + 1 :]]
    return {row[0]: row[1:] for row in rows}


def seconds_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def test_stats_per_task_name(history: History) -> None:
    stdout = run_ok("stats", env=history.env)
    # The storage overview (results per state, expiry) is SQL's only.
    assert ("expired, not yet reclaimed: 0" in stdout) is (history.kind != "redis")
    rows = stats_rows(stdout)
    assert set(rows) == {"send_invoice", "send_mail", EVIL_NAME_SHOWN, "(no name)"}
    assert rows["send_invoice"][:8] == ["5", "0", "0", "0", "4", "1", "0", "20.0%"]
    assert rows["send_mail"] == ["6", "3", "2", "0", "0", "0", "1", "100.0%", "-", "-", "-"]
    assert rows["(no name)"] == ["1", "1", "0", "0", "0", "0", "0", "-", "-", "-", "-"]
    assert rows[EVIL_NAME_SHOWN][:8] == ["1", "0", "0", "0", "0", "1", "0", "100.0%"]
    # The runtimes are the backend's own numbers, shown to the millisecond.
    invoice = next(s for s in summaries(history) if s.name == "send_invoice")
    assert invoice.runtime_max is not None and invoice.runtime_max >= SLOW - 0.01
    assert rows["send_invoice"][8:] == [
        seconds_cell(invoice.runtime_p50),
        seconds_cell(invoice.runtime_p95),
        seconds_cell(invoice.runtime_max),
    ]

    report = run_json("stats", env=history.env)
    assert report.get("total") == (None if history.kind == "redis" else len(ALL_IDS))
    assert report["until"] is None
    since = datetime.fromisoformat(report["since"])  # the default window: 24 hours
    assert abs((datetime.now(UTC) - since).total_seconds() - 86400) < 60
    by_name = {s["name"]: s for s in report["tasks"]}
    assert by_name["send_invoice"]["states"] == {"SUCCESS": 4, "FAILURE": 1}
    assert by_name["send_invoice"]["failure_rate"] == pytest.approx(0.2)
    assert by_name["send_invoice"]["runtime_max"] == pytest.approx(invoice.runtime_max)
    assert by_name["send_mail"]["total"] == 6 and by_name[None]["total"] == 1

    newer = run_json("stats", "--since", history.mark.isoformat(), env=history.env)
    assert {s["name"] for s in newer["tasks"]} == {"send_mail", EVIL_NAME, None}
    older = run_json("stats", "--until", history.mark.isoformat(), env=history.env)
    assert [s["name"] for s in older["tasks"]] == ["send_invoice"]
    empty = run_ok("stats", "--since", "1h", "--until", "30m", env=history.env)
    assert empty.rstrip("\n").endswith(":\nno tasks")


# -- usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tasks", "--since", "5 parsecs"], "argument --since: '5 parsecs' is neither an age"),
        (["tasks", "--since", "-1h"], "argument --since"),
        (["tasks", "--until", "soon"], "argument --until"),
        (["stats", "--since", "yesterday"], "argument --since"),
        (["tasks", "--since", "99999999999d"], "argument --since: '99999999999d' is too long"),
        (["tasks", "--since", "9999999d"], "--since: 9999999d ago is before year 1"),
        (["tasks", "--since", "10m", "--until", "1h"], "--since/--until: since ("),
        (["tasks", "--limit", "0"], "argument --limit"),
        (["tasks", "--limit", "1001"], "over the page limit of 1000"),
        (["tasks", "--state", "DONE"], "argument --state: unknown task state 'DONE'"),
        (["tasks", "--cursor", "not-a-cursor"], "argument --cursor: cursor is not one"),
        (["tasks", "--name", "x" * 300], "argument --name: name is 300 characters long"),
        (["task", "x" * 300], "argument ID: task id is 300 characters long"),
        (["task"], "ID"),
    ],
)
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    env = clean_environment() | {"CHICORY_BACKEND_SQLITE_FILE_PATH": str(tmp_path / "r.db")}
    done = run_cli(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert done.stdout == ""

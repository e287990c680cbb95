"""The rolling switch from Chicory's own result backend to ours, end to end, with real workers.

What a Chicory 0.1.0 user does (README, "Switching from Chicory's own backend"), on one
queue (Redis broker) and one result store (PostgreSQL, MariaDB, SQLite file, Redis):

- before: ``chicory worker`` on Chicory's own backend (rolling_app.py ``old``) and a client
  of the same app dispatch and wait; Chicory's backend makes its tables itself;
- step A (SQL): ``chicory-backends migrate`` while the old worker keeps consuming, tasks
  being dispatched and in flight throughout;
- step B: a second ``chicory worker`` on ours (``new``, ``WRITE_CHICORY_FORMAT=true``) joins
  the same queue, the old one still running; clients of both kinds dispatch and wait;
- step C: the old worker gets SIGTERM while dispatching goes on; then the new worker
  serves alone;
- step D, the way back: an old worker again, the new one stopped, and on SQL
  ``alembic downgrade base``; Chicory's own client reads every task of every step.

Each task is read by the client that dispatched it and by a client of the other kind
(Chicory's own AsyncResult over Chicory's backend; ours, ``async_result``), once when it is
done and again at the end: its value must come back equal and of the same type (strings
that look like JSON stay strings), a failure as a failure with its error. Every task runs
once; the one exception is Chicory's own: its worker cancels the tasks it holds when
SIGTERM stops it (``Worker.run`` returns as soon as the consume loop ends, and
``asyncio.run`` cancels the rest), and at-least-once (Chicory's default) hands them to the
remaining worker once idle ``CLAIM_MIN_IDLE_MS``, so a task cancelled after it began runs
again. In step B each worker must run some tasks.

KNOWN_BUGS lists the bugs of this library the switch runs into today, each recognised by
its exact symptom: the test then ends as xfail naming it, and only if nothing else went
wrong. Delete an entry once its bug is fixed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chicory import Chicory
from chicory.result import AsyncResult as ChicoryAsyncResult
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from chicory_backends import TaskFailedError
from chicory_backends.chicory import async_result
from tests.support import rolling_app
from tests.support.result_helpers import same
from tests.support.rolling_app import VALUES, failure_message
from tests.support.services import REDIS_HOST, REDIS_PORT, require, services_required
from tests.support.sql_databases import drop_database, fresh_config, run_database_name

ROOT = Path(__file__).resolve().parents[2]  # the workers import tests.support
BIN = Path(sys.executable).parent
CHICORY_CLI = "import sys; from chicory.cli import app; sys.argv[0] = 'chicory'; sys.exit(app())"
# The Redis db of the Redis result store: Chicory's own RedisBackend always writes
# "chicory:*" keys in the db of its URL, so the test takes a whole db and empties it.
RESULTS_REDIS_DB = 12
# One task, dispatch to result: room for the take-over of what a stopped Chicory worker
# held (step C: idle CLAIM_MIN_IDLE_MS, then looked for every 10 s), ~10 s here.
READ_TIMEOUT = 30.0
STEP_TIMEOUT = 150.0
WAITS_AT_ONCE = 16  # clients waiting at the same time (Chicory's polls every 100 ms)
CHICORY_COLUMNS = {
    "chicory_task_results": {"task_id", "state", "result_json", "created_at", "updated_at"},
    "chicory_worker_heartbeats": {"worker_id", "heartbeat_json", "expires_at", "updated_at"},
}

# Bugs of chicory_backends this test runs into today, recognised by their symptom where they
# show (Ledger.problem, migrate, the end of the test).
REDIS_TORN_READ = (
    "redis: ours reads one task as its document (GET), then, none being there yet, Chicory's "
    "state key (a second read): when Chicory's worker stores the outcome in between, "
    "get_result answers SUCCESS with result None (FAILURE with error None), and "
    "AsyncResult.get() returns that (redis/backend.py RedisBackend._documents, _settle)"
)
KNOWN_BUGS: set[str] = set()  # every bug it found is fixed; a symptom seen again fails

pytestmark = pytest.mark.slow


def _param(kind: str, *marks: pytest.MarkDecorator) -> Any:
    # Every case needs Redis: it is the broker.
    return pytest.param(kind, marks=[pytest.mark.redis, *marks], id=kind)


KINDS = [
    _param("postgres", pytest.mark.postgres),
    _param("mysql", pytest.mark.mysql),
    _param("sqlite"),
    _param("redis"),
]


# -- what was sent, and what was read ----------------------------------------------------


@dataclass
class Sent:
    task_id: str
    step: str
    by: str  # the kind of client that dispatched it: "old" (Chicory's own) or "new" (ours)
    index: int
    fails: bool

    @property
    def value(self) -> Any:
        return VALUES[self.index]

    def expected(self) -> str:
        return f"FAILURE {failure_message(self.index)!r}" if self.fails else _show(self.value)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


TORN_FAILURE = "failure error=None traceback=''"  # what read_new says of a bare FAILURE


@dataclass
class Ledger:
    kind: str
    sent: list[Sent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    known: dict[str, set[str]] = field(default_factory=dict)  # KNOWN_BUGS entry -> where
    reads: Counter[str] = field(default_factory=Counter)  # "<step> <reader>" -> good reads
    slowest: dict[str, float] = field(default_factory=dict)  # step -> longest wait (s)

    def step(self, *steps: str) -> list[Sent]:
        return [task for task in self.sent if task.step in steps]

    def seen(self, bug: str, where: str) -> None:
        assert bug in KNOWN_BUGS, bug
        self.known.setdefault(bug, set()).add(where)

    def problem(self, task: Sent, key: str, side: str, got: str, text: str) -> None:
        if (
            self.kind == "redis"
            and key == task.step  # a read as the task finished: the final read must be right
            and side == "new"
            and got in (_show(None), TORN_FAILURE)
        ):
            self.seen(REDIS_TORN_READ, f"task {task.task_id}")
        else:
            self.problems.append(text)


# -- the two kinds of client ----------------------------------------------------------------


async def read_old(app: Chicory, task: Sent, timeout: float) -> str | None:  # noqa: ASYNC109
    """Chicory's own AsyncResult over Chicory's own backend; None when right."""
    try:
        value = await ChicoryAsyncResult(task.task_id, app.backend).get(timeout=timeout)
    except TimeoutError:
        return "lost (no result within the timeout)"
    except Exception as error:  # Chicory raises a bare Exception(error) for a FAILURE
        if task.fails and str(error) == failure_message(task.index):
            return None
        return f"failure {error!r}"
    return None if not task.fails and same(value, task.value) else _show(value)


async def read_new(app: Chicory, task: Sent, timeout: float) -> str | None:  # noqa: ASYNC109
    """Our AsyncResult (``async_result``) over our backend; None when right."""
    try:
        value = await async_result(app, task.task_id).get(timeout=timeout)
    except TimeoutError:
        assert app.backend is not None
        now = await app.backend.get_result(task.task_id)
        return f"lost (no result within the timeout; a read now gives {now!r})"
    except TaskFailedError as error:
        message = failure_message(task.index)
        traceback = error.traceback or ""
        if task.fails and error.error == message and message in traceback:
            return None
        return f"failure error={error.error!r} traceback={traceback[-300:]!r}"
    return None if not task.fails and same(value, task.value) else _show(value)


@dataclass
class Clients:
    old: Chicory | None = None
    new: Chicory | None = None  # connected once the store is ours to read (after step A)

    def of(self, side: str) -> Chicory:
        app = self.old if side == "old" else self.new
        assert app is not None, f"no {side} client"
        return app


async def read(
    clients: Clients,
    ledger: Ledger,
    tasks: list[Sent],
    readers: tuple[str, ...],
    timeout: float = READ_TIMEOUT,  # noqa: ASYNC109
    label: str = "",
) -> None:
    """Each task read by each of ``readers`` ("own", "other", "old", "new"), at most
    WAITS_AT_ONCE waiting at a time; every wrong or missing result goes to the ledger."""
    gate = asyncio.Semaphore(WAITS_AT_ONCE)

    async def one(task: Sent, reader: str) -> None:
        side = {"own": task.by, "other": "new" if task.by == "old" else "old"}.get(reader, reader)
        async with gate:
            began = time.monotonic()
            if side == "old":
                problem = await read_old(clients.of("old"), task, timeout)
            else:
                problem = await read_new(clients.of("new"), task, timeout)
            took = time.monotonic() - began
        key = label or task.step
        ledger.slowest[key] = max(ledger.slowest.get(key, 0.0), took)
        if problem is None:
            ledger.reads[f"{key} {side}"] += 1
        else:
            ledger.problem(
                task,
                key,
                side,
                problem,
                f"{key}: task {task.task_id} of step {task.step} (sent by {task.by}, expected "
                f"{task.expected()}) read by {side} after {took:.1f} s: {problem}",
            )

    await asyncio.gather(*(one(task, reader) for task in tasks for reader in readers))


async def dispatch(
    clients: Clients, ledger: Ledger, step: str, by: str, number: int, delay: float
) -> Sent:
    """Dispatch task ``number`` of ``step`` with the ``by`` client: every seventh fails."""
    fails = number % 7 == 3
    index = number % len(VALUES)
    name = "rolling.fail" if fails else "rolling.value"
    result = await clients.of(by).get_task(name).delay(index, delay)
    sent = Sent(result.task_id, step, by, index, fails)
    ledger.sent.append(sent)
    return sent


async def dispatch_many(
    clients: Clients, ledger: Ledger, step: str, numbers: range, delay: float
) -> list[Sent]:
    """Alternately by the old client and by the new one (or the one there is)."""
    sides = [side for side in ("old", "new") if getattr(clients, side) is not None]
    return [
        await dispatch(clients, ledger, step, sides[number % len(sides)], number, delay)
        for number in numbers
    ]


# -- the store, the broker, the workers, the migrations ------------------------------------


@dataclass
class Store:
    kind: str
    runs: Path  # the workers' run logs (rolling_app._ran)
    logs: Path
    url: str | None = None  # SQL: the database, as Chicory's and our settings name it

    @property
    def sql(self) -> bool:
        return self.kind != "redis"


def _flush_results_db() -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=RESULTS_REDIS_DB)
    try:
        client.flushdb()
    finally:
        client.close()


def _delete_broker_keys(namespace: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    try:
        keys = list(client.scan_iter(match=f"chicory:*:{namespace}.*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Store]:
    """An empty store of the kind and the environment both apps read (Chicory's settings
    and ours are the same CHICORY_BACKEND_<KIND>_* variables)."""
    kind: str = request.param
    require("Redis", REDIS_HOST, REDIS_PORT)  # the broker, whatever the store
    try:
        __import__("typer")  # the worker runs Chicory's own CLI
    except ImportError:
        message = "typer is not installed: pip install 'chicory[cli]'"
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    namespace = f"rolling-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {
        "ROLLING_BACKEND": kind,
        "ROLLING_NAMESPACE": namespace,
        "ROLLING_RUNS_DIR": str(runs),
        "CHICORY_BROKER_REDIS_HOST": REDIS_HOST,
        "CHICORY_BROKER_REDIS_PORT": str(REDIS_PORT),
        # Chicory 0.1.0's Redis broker loses its consume loop after 5 s idle otherwise.
        "CHICORY_BROKER_REDIS_BLOCK_MS": "1000",
        # What a stopped Chicory worker held goes to another once idle this long (default
        # 30 s; the consume loop looks every 10 s).
        "CHICORY_BROKER_REDIS_CLAIM_MIN_IDLE_MS": "5000",
        "CHICORY_WORKER_SHUTDOWN_TIMEOUT": "20",
        # Ours only (Chicory ignores it): our writes also fill what Chicory's clients read.
        f"CHICORY_BACKEND_{kind.upper()}_WRITE_CHICORY_FORMAT": "true",
        # For `chicory-backends migrate` and alembic.
        "CHICORY_BACKEND_TYPE": kind,
    }
    database = run_database_name(f"rolling_{kind}")
    url = None
    if kind == "redis":
        env["CHICORY_BACKEND_REDIS_HOST"] = REDIS_HOST
        env["CHICORY_BACKEND_REDIS_PORT"] = str(REDIS_PORT)
        env["CHICORY_BACKEND_REDIS_DB"] = str(RESULTS_REDIS_DB)
        _flush_results_db()
    else:
        config = fresh_config(kind, database)  # empty: Chicory's backend makes its tables
        if config.url is not None:
            url = config.url.get_secret_value()
            env[f"CHICORY_BACKEND_{kind.upper()}_URL"] = url
        else:
            env["CHICORY_BACKEND_SQLITE_FILE_PATH"] = str(config.address())
            url = f"sqlite+aiosqlite:///{config.address()}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield Store(kind, runs, tmp_path, url)
    finally:
        if kind == "redis":
            _flush_results_db()
        else:
            drop_database(kind, database)
        _delete_broker_keys(namespace)


@contextmanager
def chicory_worker(side: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``chicory worker rolling_app:<side>`` in a subprocess; stopped (or killed) on exit."""
    command = [
        sys.executable, "-c", CHICORY_CLI, "worker", f"tests.support.rolling_app:{side}",
        "--concurrency", "4", "--heartbeat-interval", "0.5", "--heartbeat-ttl", "10",
        "--log-level", "INFO",
    ]  # fmt: skip
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(os.environ), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield process
    except BaseException:
        print(f"--- {side} worker log ({log}) ---\n{log.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def stopped(process: subprocess.Popen[bytes], within: float = 30.0) -> float:
    """SIGTERM to a worker, then the seconds until it exited (0 expected)."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    while process.poll() is None:
        assert time.monotonic() - start < within, f"worker pid {process.pid} still running"
        await asyncio.sleep(0.05)
    assert process.returncode == 0, f"worker pid {process.pid} exited {process.returncode}"
    return time.monotonic() - start


async def wait_for_heartbeat(app: Chicory, pid: int, within: float = READ_TIMEOUT) -> float:
    """Seconds until the worker of ``pid`` shows in the app's active workers."""
    assert app.backend is not None
    start = time.monotonic()
    while time.monotonic() - start < within:
        if any(stats.pid == pid for stats in await app.backend.get_active_workers()):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"no heartbeat from worker pid {pid} within {within}s")


def runs_by_pid(store: Store) -> dict[int, list[str]]:
    """The ids of the tasks each worker process started (rolling_app._ran)."""
    return {
        int(path.stem): path.read_text(encoding="utf-8").split()
        for path in store.runs.glob("*.log")
    }


async def run_command(*command: str, cwd: Path | None = None) -> tuple[int, float, str]:
    """A command as an operator runs it: exit code, seconds, output."""
    start = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(command)} did not finish within 90 s") from None
    assert process.returncode is not None
    return process.returncode, time.monotonic() - start, output.decode(errors="replace")


async def migrate(store: Store) -> tuple[float, str]:
    """``chicory-backends migrate``, once: its time and output."""
    code, seconds, output = await run_command(str(BIN / "chicory-backends"), "migrate")
    assert code == 0, f"chicory-backends migrate failed after {seconds:.2f} s:\n{output}"
    return seconds, output


async def downgrade(store: Store) -> tuple[float, str]:
    """``alembic downgrade base`` with the alembic.ini ``chicory-backends alembic-ini`` writes."""
    code, _, ini = await run_command(str(BIN / "chicory-backends"), "alembic-ini")
    assert code == 0, ini
    (store.logs / "alembic.ini").write_text(ini)
    code, seconds, output = await run_command(
        str(BIN / "alembic"), "downgrade", "base", cwd=store.logs
    )
    assert code == 0, f"alembic downgrade base failed:\n{output}"
    return seconds, output


async def table_columns(url: str) -> dict[str, set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:

            def columns(sync: Any) -> dict[str, set[str]]:
                inspector = inspect(sync)
                return {
                    table: {column["name"] for column in inspector.get_columns(table)}
                    for table in inspector.get_table_names()
                }

            return await connection.run_sync(columns)
    finally:
        await engine.dispose()


@contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[label] = time.monotonic() - start


async def connected(side: str) -> Chicory:
    app = rolling_app.make_app(side)
    await app.connect()
    return app


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    holder = Clients()
    yield holder
    for app in (holder.new, holder.old):
        if app is not None:
            with suppress(Exception):
                await app.disconnect()


# -- the switch ----------------------------------------------------------------------------


@pytest.mark.parametrize("store", KINDS, indirect=True)
async def test_rolling_switch(store: Store, clients: Clients) -> None:
    ledger = Ledger(store.kind)
    timings: dict[str, float] = {}
    runs: dict[str, Counter[str]] = {}
    workers: dict[int, str] = {}  # pid -> "old", "new", "old again"

    def count_runs(step: str) -> Counter[str]:
        ids = {task.task_id for task in ledger.step(step)}
        counts: Counter[str] = Counter()
        for pid, ran in runs_by_pid(store).items():
            counts[workers.get(pid, f"pid {pid}")] += sum(1 for task_id in ran if task_id in ids)
        runs[step] = counts
        return counts

    # Before: Chicory's own backend everywhere. Its client connects first and makes the
    # tables (Chicory's DatabaseBackend.connect runs create_all), then its worker starts.
    clients.old = await connected("old")
    with chicory_worker("old", store.logs / "old.log") as old_worker:
        workers[old_worker.pid] = "old"
        async with asyncio.timeout(STEP_TIMEOUT):
            with timed("before", timings):
                await wait_for_heartbeat(clients.old, old_worker.pid)
                sent = await dispatch_many(clients, ledger, "before", range(60), 0.0)
                await read(clients, ledger, sent, ("own",))
        count_runs("before")

        # Step A (SQL): adopt while the old worker consumes, tasks dispatched throughout.
        if store.sql:
            async with asyncio.timeout(STEP_TIMEOUT):
                with timed("A", timings):
                    migration = asyncio.create_task(migrate(store))
                    number = 0
                    while not migration.done() and number < 150:
                        await dispatch(clients, ledger, "A", "old", number, 0.05)
                        number += 1
                        await asyncio.sleep(0.02)
                    timings["migrate"], output = await migration
                    timings["tasks sent during migrate"] = number
                    await dispatch_many(clients, ledger, "A", range(number, number + 20), 0.02)
                    await read(clients, ledger, ledger.step("A"), ("own",))
            print(f"\n[{store.kind}] {output.strip()}")
            count_runs("A")

        # Our client: after the migration on SQL (before it, ours refuses Chicory's tables).
        clients.new = await connected("new")
        async with asyncio.timeout(STEP_TIMEOUT):
            await read(clients, ledger, ledger.step("before", "A"), ("other",))

        # Step B: a new worker on our backend joins; both kinds of client dispatch.
        with chicory_worker("new", store.logs / "new.log") as new_worker:
            workers[new_worker.pid] = "new"
            async with asyncio.timeout(STEP_TIMEOUT):
                with timed("B", timings):
                    await wait_for_heartbeat(clients.new, new_worker.pid)
                    sent = await dispatch_many(clients, ledger, "B", range(80), 0.02)
                    await read(clients, ledger, sent, ("own", "other"))
                # Each kind of client sees both workers' heartbeats (with the setting on,
                # ours writes Chicory's heartbeat too).
                for app in (clients.old, clients.new):
                    assert app.backend is not None
                    pids = {stats.pid for stats in await app.backend.get_active_workers()}
                    assert {old_worker.pid, new_worker.pid} <= pids, (app.backend, pids)
            counts = count_runs("B")
            assert old_worker.poll() is None, "the old worker died during step B"
            assert counts["old"] >= 1, f"the old worker ran no task of step B: {counts}"
            assert counts["new"] >= 1, f"the new worker ran no task of step B: {counts}"

            # Step C: SIGTERM to the old worker while dispatching goes on; then ours alone.
            async with asyncio.timeout(STEP_TIMEOUT):
                with timed("C", timings):
                    sent = await dispatch_many(clients, ledger, "C", range(10), 0.02)
                    stopping = asyncio.create_task(stopped(old_worker))
                    sent += await dispatch_many(clients, ledger, "C", range(10, 40), 0.02)
                    timings["old worker stop"] = await stopping
                    sent += await dispatch_many(clients, ledger, "C", range(40, 80), 0.0)
                    await read(clients, ledger, sent, ("own", "other"))
            count_runs("C")

            # Step D, the way back: an old worker again, the new one stopped (idle: nothing
            # in flight), our client gone, and on SQL Chicory's layout given back.
            with chicory_worker("old", store.logs / "old-again.log") as old_again:
                workers[old_again.pid] = "old again"
                async with asyncio.timeout(STEP_TIMEOUT):
                    with timed("D", timings):
                        await wait_for_heartbeat(clients.old, old_again.pid)
                        timings["new worker stop"] = await stopped(new_worker)
                        # Every task once more, by both kinds, before our client goes.
                        await read(clients, ledger, ledger.sent, ("old", "new"), 5.0, "final")
                        await clients.new.disconnect()
                        clients.new = None
                        if store.sql:
                            assert store.url is not None
                            timings["downgrade"], output = await downgrade(store)
                            print(f"[{store.kind}] alembic downgrade base:\n{output.strip()}")
                            layout = await table_columns(store.url)
                            ours = {table: layout.get(table) for table in CHICORY_COLUMNS}
                            assert ours == CHICORY_COLUMNS, layout
                            print(f"[{store.kind}] tables after the downgrade: {sorted(layout)}")
                        everything = list(ledger.sent)
                        sent = await dispatch_many(clients, ledger, "D", range(30), 0.0)
                        await read(clients, ledger, sent, ("old",))
                        await read(clients, ledger, everything, ("old",), 5.0, "rolled back")
                count_runs("D")
                by_pid = runs_by_pid(store)

    _report(ledger, runs, timings)
    ran = Counter(task_id for ids in by_pid.values() for task_id in ids)
    never = [task.task_id for task in ledger.sent if ran[task.task_id] == 0]
    # A task the old worker had begun when SIGTERM cancelled it runs again on the new one:
    # the one repeat allowed, and only of step C.
    retaken = {task.task_id for task in ledger.step("C")} & set(by_pid.get(old_worker.pid, []))
    twice = [
        task_id for task_id, times in ran.items()
        if times > 2 or (times == 2 and task_id not in retaken)
    ]  # fmt: skip
    print(f"  step C: {sum(1 for task_id in retaken if ran[task_id] == 2)} task(s) begun by "
          "the old worker when SIGTERM cancelled them ran again on the new one")  # fmt: skip
    problems = "\n".join(problem[:600] for problem in ledger.problems[:30])
    assert not ledger.problems, f"{len(ledger.problems)} wrong or missing result(s):\n{problems}"
    assert not never, f"{len(never)} task(s) never ran: {never[:10]}"
    assert not twice, f"{len(twice)} task(s) ran more than once: {twice[:10]}"
    if ledger.known:
        pytest.xfail("; ".join(f"{bug} ({len(where)}x)" for bug, where in ledger.known.items()))


def _report(ledger: Ledger, runs: dict[str, Counter[str]], timings: dict[str, float]) -> None:
    known = {bug.split(":")[0]: sorted(where) for bug, where in ledger.known.items()}
    print(f"\n[{ledger.kind}] rolling switch: {len(ledger.sent)} tasks, "
          f"{len(ledger.problems)} wrong or missing reads; known bugs seen: {known}")  # fmt: skip
    for step, counts in runs.items():
        tasks = ledger.step(step)
        by = Counter(task.by for task in tasks)
        reads = {side: ledger.reads[f"{step} {side}"] for side in ("old", "new")}
        print(
            f"  step {step:<6} {len(tasks):3} sent (old client {by['old']}, new client "
            f"{by['new']}); ran by {dict(counts)}; good reads {reads}; "
            f"{timings.get(step, 0.0):.2f} s, longest wait {ledger.slowest.get(step, 0.0):.2f} s"
        )
    for label in ("final", "rolled back"):
        reads = {side: ledger.reads[f"{label} {side}"] for side in ("old", "new")}
        print(f"  {label} read: good reads {reads}, longest {ledger.slowest.get(label, 0.0):.2f} s")
    print("  timings: " + ", ".join(f"{name} {value:.2f}" for name, value in timings.items()))

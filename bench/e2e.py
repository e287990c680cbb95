"""``python -m bench e2e``: the real Chicory worker, end to end, storing into each backend.

Per case a fresh ``chicory worker bench.worker_app:app`` subprocess (Chicory's own CLI at
its defaults: concurrency 32, INFO logging, 10 s heartbeats) consumes from the Redis
broker (or RabbitMQ) and stores through ours, through Chicory 0.1.0's own backend for
the same engine (at Chicory's defaults), or through no backend at all: the ceiling.

This process is the client, with the same app: it connects, starts the worker, publishes
``warmup`` tasks and waits for them (worker up, pools in use, statements prepared), then
times ``tasks`` sequential ``delay()`` calls of ``add(x, y)``. Done is the same signal in
every case: the task appends one byte to a file, and the file holds warmup + tasks bytes.
Where there is a backend, every result is then read back (``get_result``, 32 in flight,
what Chicory's AsyncResult.get calls, re-asked after 5 ms rather than its 100 ms when a
result is not stored yet) and its value checked. The figure is
tasks / (first ``delay()`` -> last result checked), or -> the last execution without a
backend. Server sessions opened in that window come from the servers' counters
(``bench.sessions``) and, in both processes, from ``bench.connects``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import connects, env, sessions, worker_app
from bench.env import LABELS, Servers, describe, log

REPO = Path(__file__).resolve().parent.parent
# Chicory's console script, run by this interpreter whatever the PATH.
CHICORY_CLI = "import sys; from chicory.cli import app; sys.argv[0] = 'chicory'; sys.exit(app())"
BROKERS = ("redis", "rabbitmq")
BROKER_LABELS = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
# "tracked": ours with track(app) in the worker and the client (the task history: one
# more write per dispatch); "tracked-worker": in the worker only (its own path).
ROLES = ("ours", "tracked-worker", "tracked", "chicory")
ROLE_LABELS = {
    "ours": "ours", "tracked-worker": "ours + track(app) in the worker",
    "tracked": "ours + track(app)", "chicory": "Chicory 0.1.0",
    "none": "no backend (ceiling)",
}  # fmt: skip
OURS_ROLES = ("ours", "tracked-worker", "tracked")
TERMINAL = {"SUCCESS", "FAILURE", "DEAD_LETTERED"}
Y_OFFSET = 1_000_000  # add(i, Y_OFFSET + i): every expected value differs


@dataclass
class Settings:
    tasks: int = 3000
    warmup: int = 64
    kinds: list[str] = field(default_factory=lambda: list(env.KINDS))
    brokers: list[str] = field(default_factory=lambda: list(BROKERS))
    rabbitmq_kinds: list[str] | None = None  # None: the same as kinds
    runs: int = 1
    readers: int = 32
    timeout: float = 300.0  # per timed phase of a case
    stall: float = 20.0  # no task executed (or result read) for this long: give up
    keep: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    rabbitmq_url: str = field(
        default_factory=lambda: os.environ.get(
            "BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"
        )
    )
    redis_broker_db: int = field(
        default_factory=lambda: int(os.environ.get("BENCH_REDIS_BROKER_DB", "13"))
    )


@dataclass(frozen=True)
class Case:
    broker: str
    kind: str | None  # None: the worker has no backend
    role: str  # one of ROLES, or "none"

    @property
    def spec(self) -> str:
        return "none" if self.kind is None else f"{self.role}:{self.kind}"

    @property
    def label(self) -> str:
        if self.kind is None:
            return ROLE_LABELS["none"]
        return f"{LABELS[self.kind]} {ROLE_LABELS[self.role]}"


def cases(settings: Settings) -> list[Case]:
    """Per broker: the ceiling first, then ours and Chicory's for each engine."""
    found: list[Case] = []
    for broker in settings.brokers:
        kinds = settings.kinds
        if broker == "rabbitmq" and settings.rabbitmq_kinds is not None:
            kinds = settings.rabbitmq_kinds
        found.append(Case(broker, None, "none"))
        found.extend(Case(broker, kind, role) for kind in kinds for role in ROLES)
    return found


# -- where each case keeps its results ----------------------------------------------------


@dataclass
class Storage:
    env: dict[str, str]
    database: str | None = None  # PostgreSQL / MariaDB database of this case
    sqlite_file: Path | None = None
    redis_db: int | None = None
    key_prefix: str | None = None


async def prepare_storage(case: Case, name: str, servers: Servers) -> Storage:
    """A fresh place for the case's results: ours migrated, Chicory's left empty."""
    kind = case.kind
    if kind is None:
        return Storage(env={})
    if kind == "redis":
        if case.role in OURS_ROLES:
            storage = Storage(env={}, redis_db=servers.redis_db, key_prefix=name)
            storage.env["CHICORY_BACKEND_REDIS_KEY_PREFIX"] = name
        else:  # Chicory's keys are fixed ("chicory:*"): a database apart from ours
            storage = Storage(env={}, redis_db=servers.redis_chicory_db)
        storage.env.update({
            "CHICORY_BACKEND_REDIS_HOST": servers.redis_host,
            "CHICORY_BACKEND_REDIS_PORT": str(servers.redis_port),
            "CHICORY_BACKEND_REDIS_DB": str(storage.redis_db),
        })  # fmt: skip
        return storage
    if case.role in OURS_ROLES:
        await env.migrate_database(servers, kind, name)
    elif kind == "sqlite":
        env.remove_sqlite_files(servers.sqlite_path(name))
    else:
        await env.recreate_database(servers, kind, name)
    if kind == "sqlite":
        path = servers.sqlite_path(name)
        return Storage(env={"CHICORY_BACKEND_SQLITE_FILE_PATH": str(path)}, sqlite_file=path)
    url = env.plain_url(servers.database_url(kind, name))
    # The same variable for both: ours and Chicory's settings share the CHICORY_BACKEND_ names.
    return Storage(env={f"CHICORY_BACKEND_{kind.upper()}_URL": url}, database=name)


async def remove_storage(
    case: Case, storage: Storage, servers: Servers, task_ids: list[str]
) -> None:
    if case.kind in ("postgres", "mysql") and storage.database:
        await env.recreate_database(servers, case.kind, storage.database, create=False)
    elif case.kind == "sqlite" and storage.sqlite_file is not None:
        env.remove_sqlite_files(storage.sqlite_file)
    elif case.kind == "redis":
        from redis.asyncio import Redis

        client = Redis(host=servers.redis_host, port=servers.redis_port, db=storage.redis_db or 0)
        try:
            if storage.key_prefix:
                for pattern in (f"{storage.key_prefix}:*", f"{{{storage.key_prefix}:*"):
                    await _delete_matching(client, pattern)
            else:  # Chicory's: the case's own ids, and the worker's heartbeat
                keys = [f"chicory:{k}:{t}" for t in task_ids for k in ("state", "result")]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()


async def _delete_matching(client: Any, pattern: str) -> None:
    keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])


async def remove_chicory_heartbeat(servers: Servers, worker_pid: int) -> None:
    """Chicory's Redis backend keeps heartbeats under fixed keys; drop this worker's."""
    from redis.asyncio import Redis

    client = Redis(host=servers.redis_host, port=servers.redis_port, db=servers.redis_chicory_db)
    try:
        keys = [k async for k in client.scan_iter(match=f"chicory:heartbeat:*-{worker_pid}-*")]
        for key in keys:
            await client.delete(key)
            await client.srem("chicory:workers", key.decode().removeprefix("chicory:heartbeat:"))
    finally:
        await client.aclose()


# -- brokers --------------------------------------------------------------------------------


def broker_env(broker: str, settings: Settings, servers: Servers) -> dict[str, str]:
    if broker == "rabbitmq":
        return {"CHICORY_BROKER_RABBITMQ_URL": settings.rabbitmq_url}
    return {
        "CHICORY_BROKER_REDIS_HOST": servers.redis_host,
        "CHICORY_BROKER_REDIS_PORT": str(servers.redis_port),
        "CHICORY_BROKER_REDIS_DB": str(settings.redis_broker_db),
        # Only how long an idle XREADGROUP blocks, i.e. how long the worker takes to stop
        # (Chicory's default is 5 s); a busy worker never waits on it.
        "CHICORY_BROKER_REDIS_BLOCK_MS": "1000",
    }


async def remove_broker(broker: str, namespace: str, settings: Settings, servers: Servers) -> None:
    if broker == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(settings.rabbitmq_url)
        try:
            for name in worker_app.rabbitmq_queue_names(namespace):
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
        finally:
            await connection.close()
        return
    from redis.asyncio import Redis

    client = Redis(host=servers.redis_host, port=servers.redis_port, db=settings.redis_broker_db)
    try:
        for pattern in worker_app.redis_key_patterns(namespace):
            await _delete_matching(client, pattern)
    finally:
        await client.aclose()


def unreachable(case: Case, settings: Settings, servers: Servers) -> str | None:
    """Why the case cannot run here (a server closed, a client library missing), or None."""
    import socket

    def closed(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return False
        except OSError:
            return True

    if case.broker == "rabbitmq":
        try:
            import aio_pika  # noqa: F401
        except ImportError:
            return "aio-pika is not installed (pip install 'chicory[rabbitmq]')"
        from urllib.parse import urlsplit

        parts = urlsplit(settings.rabbitmq_url)
        if closed(parts.hostname or "127.0.0.1", parts.port or 5672):
            return f"RabbitMQ is not reachable at {parts.hostname}:{parts.port or 5672}"
    needed: list[tuple[str, str, int]] = []
    if case.broker == "redis" or case.kind == "redis":
        needed.append(("Redis", servers.redis_host, servers.redis_port))
    if case.kind in ("postgres", "mysql"):
        url = servers.admin_url(case.kind)
        needed.append((LABELS[case.kind], url.host or "127.0.0.1", url.port or 0))
    for name, host, port in needed:
        if closed(host, port):
            return f"{name} is not reachable at {host}:{port}"
    try:
        import typer  # noqa: F401
    except ImportError:
        return "Chicory's CLI is not installed (pip install 'chicory[cli]')"
    return None


# -- the worker process ----------------------------------------------------------------------


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """os.environ with every CHICORY_*/BENCH_E2E_* variable replaced by ``variables``."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("CHICORY_", "BENCH_E2E_"))]:
        del os.environ[key]
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def worker_environment(variables: Mapping[str, str]) -> dict[str, str]:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHICORY_", "BENCH_E2E_"))
    }
    path = inherited.get("PYTHONPATH")
    inherited["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return {**inherited, **variables}


class Worker:
    """``chicory worker bench.worker_app:app`` with no options: Chicory's defaults."""

    def __init__(self, run_dir: Path, variables: Mapping[str, str]) -> None:
        self.log_path = run_dir / "worker.log"
        self._run_dir = run_dir
        self._env = worker_environment(variables)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as output:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHICORY_CLI, "worker", "bench.worker_app:app",
                cwd=self._run_dir, env=self._env, stdout=output, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def check_alive(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise RuntimeError(
                f"the worker exited with code {self.process.returncode}: {self.tail(3)}"
            )

    def tail(self, lines: int = 15) -> str:
        """The exception the worker died of, if its log ends in one; else its last lines."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        last = text.strip().splitlines()[-lines:]
        errors = [line for line in last if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        return errors[-1] if errors else " | ".join(last)

    def concurrency(self) -> int | None:
        """What the worker says it runs with (its CLI prints it at start)."""
        with contextlib.suppress(OSError):
            found = re.search(r"^Concurrency: (\d+)", self.log_path.read_text(), re.MULTILINE)
            if found:
                return int(found.group(1))
        return None

    async def stop(self) -> int | None:
        """SIGTERM (Chicory's graceful stop), then SIGKILL after 15 s; the exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode


# -- one case ---------------------------------------------------------------------------------


def _executed(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def wait_executed(path: Path, count: int, worker: Worker, limit: float, stall: float) -> None:
    """Until the done file holds ``count`` bytes; errors if the worker dies or stalls."""
    deadline = time.monotonic() + limit
    last, changed = -1, time.monotonic()
    while True:
        size = _executed(path)
        if size >= count:
            return
        now = time.monotonic()
        worker.check_alive()
        if size != last:
            last, changed = size, now
        elif now - changed > stall:
            raise TimeoutError(f"no task executed for {stall:g} s ({size} of {count} done)")
        if now > deadline:
            raise TimeoutError(f"{size} of {count} tasks executed after {limit:g} s")
        await asyncio.sleep(0.002)


@dataclass
class ReadBack:
    checked: int = 0
    retries: int = 0  # get_result calls that found the result not yet stored
    wrong: list[str] = field(default_factory=list)
    progress: float = field(default_factory=time.monotonic)  # when the last one was checked


async def read_back(
    backend: Any, expected: list[tuple[str, int]], readers: int, limit: float, stall: float
) -> ReadBack:
    """Every result read once it is terminal, ``readers`` calls in flight; values checked.

    Gives up after ``limit`` s, or when no result has become readable for ``stall`` s
    (a result the worker failed to store never will)."""
    outcome = ReadBack()
    pending = iter(expected)
    deadline = time.monotonic() + limit

    async def reader() -> None:
        for task_id, value in pending:
            while True:
                result = await backend.get_result(task_id)
                if result is not None and str(result.state.value) in TERMINAL:
                    break
                now = time.monotonic()
                if now > deadline or now - outcome.progress > stall:
                    raise TimeoutError(
                        f"{outcome.checked} of {len(expected)} results readable; "
                        f"{task_id} still {result.state.value if result else 'missing'}"
                    )
                outcome.retries += 1
                await asyncio.sleep(0.005)
            outcome.progress = time.monotonic()
            if result.state.value != "SUCCESS" or result.result != value:
                if len(outcome.wrong) < 5:
                    outcome.wrong.append(
                        f"{task_id}: {result.state.value} {result.result!r} (expected {value})"
                    )
                else:
                    outcome.wrong.append("...")
            outcome.checked += 1

    await asyncio.gather(*(reader() for _ in range(readers)))
    return outcome


async def _readings(
    case: Case, storage: Storage, counters: sessions.ServerCounters, connects_file: Path,
    *, settle: bool,
) -> dict[str, Any]:  # fmt: skip
    server = None
    if case.kind is not None:
        server = await counters.read(case.kind, storage.database, settle=settle)
    return {
        "server": server,
        "redis": await counters.redis_connections(),
        "client": connects.snapshot(),
        "worker": connects.read(connects_file),
    }


def _session_figures(
    case: Case, storage: Storage, servers: Servers, start: dict[str, Any], end: dict[str, Any]
) -> dict[str, Any]:
    client = connects.difference(end["client"], start["client"])
    worker = connects.difference(end["worker"], start["worker"])
    figures: dict[str, Any] = {
        "server": sessions.delta(end["server"], start["server"]),
        "redis_server": sessions.delta(end["redis"], start["redis"]),
        "client_connects": client,
        "worker_connects": worker,
        "backend_connects": None,  # worker + client
        "backend_connects_worker": None,
    }
    if case.kind is not None:
        options: dict[str, Any] = {
            "sqlite_file": storage.sqlite_file.name if storage.sqlite_file else None,
            "redis_db": storage.redis_db,
        }
        in_worker = sessions.backend_connects(worker, case.kind, servers, **options)
        in_client = sessions.backend_connects(client, case.kind, servers, **options)
        figures["backend_connects"] = in_worker + in_client
        figures["backend_connects_worker"] = in_worker
    return figures


async def run_case(
    case: Case, index: int, settings: Settings, servers: Servers,
    counters: sessions.ServerCounters,
) -> dict[str, Any]:  # fmt: skip
    """One worker process, one case; never raises (the error goes into the record)."""
    record: dict[str, Any] = {
        "broker": case.broker, "kind": case.kind, "role": case.role, "label": case.label,
        "tasks": settings.tasks, "warmup": settings.warmup, "error": None,
    }  # fmt: skip
    why = unreachable(case, settings, servers)
    if why is not None:
        record["error"] = f"not available: {why}"
        return record
    name = f"chicory_bench_e2e_{settings.tag}_{index}"
    namespace = f"bench-e2e-{settings.tag}-{index}"
    run_dir = Path(tempfile.mkdtemp(prefix="chicory-bench-e2e-"))
    done, connects_file = run_dir / "done", run_dir / "connects.json"
    task_ids: list[str] = []
    storage = Storage(env={})
    worker: Worker | None = None
    app: Any = None
    try:
        storage = await prepare_storage(case, name, servers)
        variables = {
            **broker_env(case.broker, settings, servers), **storage.env,
            "BENCH_E2E_BROKER": case.broker, "BENCH_E2E_NAMESPACE": namespace,
            "BENCH_E2E_BACKEND": case.spec,
        }  # fmt: skip
        boot = await _readings(case, storage, counters, connects_file, settle=False)
        with environment(variables):
            app = worker_app.make_app()
        await app.connect()  # before the worker: Chicory's create_all must not race itself
        worker = Worker(run_dir, {
            **variables, "BENCH_E2E_DONE_FILE": str(done),
            "BENCH_E2E_CONNECTS_FILE": str(connects_file),
        })  # fmt: skip
        await worker.start()
        add = app.get_task(worker_app.TASK_NAME)

        warm: list[tuple[str, int]] = []
        for n in range(settings.warmup):
            warm.append(((await add.delay(n, n)).task_id, 2 * n))
            task_ids.append(warm[-1][0])
        await wait_executed(done, settings.warmup, worker, 120.0, 60.0)
        if app.backend is not None:
            await read_back(app.backend, warm, settings.readers, 60.0, settings.stall)
        before = await _readings(case, storage, counters, connects_file, settle=True)
        commits_before = await _commits(case, storage, counters)

        expected: list[tuple[str, int]] = []
        started = time.perf_counter()
        for n in range(settings.tasks):
            result = await add.delay(n, Y_OFFSET + n)
            expected.append((result.task_id, Y_OFFSET + 2 * n))
        published = time.perf_counter()
        task_ids += [t for t, _ in expected]  # (after the clock: not part of the figure)
        await wait_executed(
            done, settings.warmup + settings.tasks, worker, settings.timeout, settings.stall
        )
        executed = time.perf_counter()
        checked = None
        if app.backend is not None:
            checked = await read_back(
                app.backend, expected, settings.readers, settings.timeout, settings.stall
            )
        finished = time.perf_counter()
        after = await _readings(case, storage, counters, connects_file, settle=True)
        commits_after = await _commits(case, storage, counters)

        elapsed = finished - started
        record.update({
            "publish_s": published - started,
            "executed_s": executed - started,
            "readback_s": finished - executed,
            "elapsed_s": elapsed,
            "tasks_per_s": settings.tasks / elapsed,
            "executed_per_s": settings.tasks / (executed - started),
            "executions": _executed(done) - settings.warmup,  # > tasks: some ran twice
            "checked": None if checked is None else checked.checked,
            "not_yet_stored_reads": None if checked is None else checked.retries,
            "wrong": [] if checked is None else checked.wrong,
            "worker_concurrency": worker.concurrency(),
            "sessions": _session_figures(case, storage, servers, before, after),
            # PostgreSQL: commits per task (the server's count, worker and client alike).
            "commits_per_task": (
                None
                if commits_before is None or commits_after is None
                else (commits_after - commits_before) / settings.tasks
            ),
            "startup_sessions": _session_figures(case, storage, servers, boot, before),
        })  # fmt: skip
        figures = record["sessions"]
        # Redis: the server's counter has the broker's connections in it, so the per-1k
        # figure takes the client-side count of the backend's own Redis database.
        base = figures["server"] if case.kind in ("postgres", "mysql") else None
        if base is None:
            base = figures["backend_connects"]
        record["sessions_per_1k"] = None if base is None else 1000 * base / settings.tasks
        if checked is not None and checked.wrong:
            record["error"] = f"{len(checked.wrong)} wrong result(s): {checked.wrong[0]}"
    except Exception as error:
        record["error"] = f"error: {describe(error)}"
        if worker is not None:
            record["worker_log_tail"] = worker.tail()
        log(f"   {case.label}: {record['error']}")
        if worker is not None:
            log(f"   worker log: {record['worker_log_tail'][-1500:]}")
    finally:
        code = None if worker is None else await worker.stop()
        record["worker_exit_code"] = code
        if app is not None:
            with contextlib.suppress(Exception):
                await app.disconnect()
        if not settings.keep:
            await _cleanup(case, storage, servers, settings, namespace, task_ids, worker)
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            record["run_dir"] = str(run_dir)
    return record


async def _commits(case: Case, storage: Storage, counters: sessions.ServerCounters) -> int | None:
    if case.kind != "postgres" or storage.database is None:
        return None
    return await counters.postgres_commits(storage.database)


async def _cleanup(
    case: Case, storage: Storage, servers: Servers, settings: Settings, namespace: str,
    task_ids: list[str], worker: Worker | None,
) -> None:  # fmt: skip
    steps = [remove_broker(case.broker, namespace, settings, servers)]
    if case.kind is not None:
        steps.append(remove_storage(case, storage, servers, task_ids))
    if case.kind == "redis" and case.role == "chicory" and worker is not None:
        steps.append(remove_chicory_heartbeat(servers, worker.pid))
    for step in steps:
        try:
            await step
        except Exception as error:
            log(f"   cleanup ({case.label}): {describe(error)}")


# -- the whole run ------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over its runs: medians of the figures, the runs themselves kept."""
    good = [r for r in runs if r["error"] is None]
    first = runs[0]
    summary: dict[str, Any] = {
        k: first[k] for k in ("broker", "kind", "role", "label", "tasks", "warmup")
    }
    summary["runs"] = runs
    summary["error"] = None if good else first["error"]
    for key in (
        "tasks_per_s", "executed_per_s", "publish_s", "readback_s", "sessions_per_1k",
        "commits_per_task",
    ):  # fmt: skip
        summary[key] = _median([r[key] for r in good if r.get(key) is not None])
    for key in ("server", "backend_connects", "backend_connects_worker", "redis_server"):
        summary[f"sessions_{key}"] = _median(
            [r["sessions"][key] for r in good if r["sessions"].get(key) is not None]
        )
        summary[f"startup_{key}"] = _median(
            [r["startup_sessions"][key] for r in good if r["startup_sessions"].get(key) is not None]
        )
    summary["checked"] = sum(r.get("checked") or 0 for r in good) if good else None
    summary["worker_concurrency"] = next(
        (r["worker_concurrency"] for r in good if r.get("worker_concurrency")), None
    )
    return summary


def ratios(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per broker and engine: ours / ceiling, Chicory / ceiling, ours / Chicory."""
    rows: list[dict[str, Any]] = []
    for broker in dict.fromkeys(s["broker"] for s in summaries):
        mine = [s for s in summaries if s["broker"] == broker]
        ceiling = next((s["tasks_per_s"] for s in mine if s["kind"] is None), None)
        for kind in dict.fromkeys(s["kind"] for s in mine if s["kind"] is not None):
            figure = {s["role"]: s for s in mine if s["kind"] == kind}
            ours = figure.get("ours", {}).get("tasks_per_s")
            chicory = figure.get("chicory", {}).get("tasks_per_s")
            tracked = figure.get("tracked", {}).get("tasks_per_s")
            in_worker = figure.get("tracked-worker", {}).get("tasks_per_s")
            rows.append({
                "broker": broker, "kind": kind, "ours": ours, "chicory": chicory,
                "tracked": tracked, "tracked_vs_ours": _ratio(tracked, ours),
                "tracked_worker": in_worker, "tracked_worker_vs_ours": _ratio(in_worker, ours),
                "ceiling": ceiling,
                "ours_vs_ceiling": _ratio(ours, ceiling),
                "chicory_vs_ceiling": _ratio(chicory, ceiling),
                "ours_vs_chicory": _ratio(ours, chicory),
                "sessions_per_1k": {
                    role: figure.get(role, {}).get("sessions_per_1k") for role in ROLES
                },
            })  # fmt: skip
    return rows


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top and bottom else None


async def run(settings: Settings, servers: Servers | None = None) -> dict[str, Any]:
    """Every case, ``runs`` times (case by case, round after round)."""
    with connects.counting():
        return await _run(settings, servers or Servers.from_env())


async def _run(settings: Settings, servers: Servers) -> dict[str, Any]:
    counters = sessions.ServerCounters(servers)
    await counters.open({*settings.kinds, *(settings.rabbitmq_kinds or [])})
    started = time.perf_counter()
    chosen = cases(settings)
    records: dict[Case, list[dict[str, Any]]] = {case: [] for case in chosen}
    try:
        index = 0
        for round_number in range(settings.runs):
            for case in chosen:
                index += 1
                tag = f" (run {round_number + 1})" if settings.runs > 1 else ""
                log(f"== e2e {BROKER_LABELS[case.broker]} broker, {case.label}{tag}")
                record = await run_case(case, index, settings, servers, counters)
                records[case].append(record)
                if record["error"] is None:
                    log(
                        f"   {record['tasks_per_s']:,.0f} tasks/s end to end "
                        f"({record['executed_per_s']:,.0f}/s executed), sessions "
                        f"{record['sessions']['server']} (server) / "
                        f"{record['sessions']['backend_connects']} (client-side count)"
                    )
                elif record["error"].startswith("not available"):
                    log(f"   {record['error']}")
    finally:
        await counters.close()
        servers.remove_sqlite_dir()
    summaries = [summarize(runs) for runs in records.values()]
    return {
        "machine": env.machine(),
        "settings": {
            "tasks": settings.tasks,
            "warmup": settings.warmup,
            "runs": settings.runs,
            "readers": settings.readers,
            "brokers": settings.brokers,
            "backends": settings.kinds,
            "rabbitmq_backends": settings.rabbitmq_kinds,
            "redis_broker_db": settings.redis_broker_db,
            "redis_dbs": {"ours": servers.redis_db, "chicory": servers.redis_chicory_db},
            "worker_command": "python -c <chicory CLI> worker bench.worker_app:app",
        },
        "counters": sessions.COUNTERS,
        "cases": summaries,
        "ratios": ratios(summaries),
        "elapsed_s": time.perf_counter() - started,
    }


# -- the report -----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _count(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _cell(summary: dict[str, Any], text: str) -> str:
    error = summary["error"]
    if error is None:
        return text
    return "n/a" if error.startswith("not available") else "error"


def summary_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| broker | backend | ours | Chicory 0.1.0 | no backend | ours / ceiling "
        "| Chicory / ceiling | ours / Chicory | track(app) in the worker (/ ours) "
        "| track(app) in worker and client (/ ours) "
        "| sessions per 1k tasks: ours / worker tracked / both tracked / Chicory |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["ratios"]:
        per_1k = " / ".join(_count(row["sessions_per_1k"][r]) for r in ROLES)
        lines.append(
            f"| {BROKER_LABELS[row['broker']]} | {LABELS[row['kind']]} | {_num(row['ours'])} "
            f"| {_num(row['chicory'])} | {_num(row['ceiling'])} | {_x(row['ours_vs_ceiling'])} "
            f"| {_x(row['chicory_vs_ceiling'])} | {_x(row['ours_vs_chicory'])} "
            f"| {_num(row.get('tracked_worker'))} ({_x(row.get('tracked_worker_vs_ours'))}) "
            f"| {_num(row.get('tracked'))} ({_x(row.get('tracked_vs_ours'))}) | {per_1k} |"
        )
    return lines


def _connects(s: dict[str, Any]) -> str:
    total, worker = s["sessions_backend_connects"], s["sessions_backend_connects_worker"]
    if total is None or worker is None:
        return _count(total)
    return f"{_count(total)} ({_count(worker)} + {_count(total - worker)})"


def _case_row(s: dict[str, Any]) -> list[str]:
    if s["kind"] is None:  # the ceiling: nothing stored, nothing to read or count
        backend = ["-"] * 6
    else:
        server = s["sessions_server"] if s["kind"] in ("postgres", "mysql") else None
        startup = s["startup_server"] if server is not None else s["startup_backend_connects"]
        backend = [
            _num(s["readback_s"], 2),
            _count(s["checked"]),
            _count(server) if s["kind"] in ("postgres", "mysql") else "n/a",
            _count(s["sessions_per_1k"]),
            _connects(s),
            _count(startup),
        ]
    commits = s.get("commits_per_task")
    figures = [
        _num(s["tasks_per_s"]), _num(s["executed_per_s"]), _num(s["publish_s"], 2),
        *backend[:5], _count(s["sessions_redis_server"]), backend[5],
        "-" if commits is None else f"{commits:.2f}",
    ]  # fmt: skip
    return [_cell(s, text) for text in figures]


def cases_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| broker | backend | tasks/s | executed/s | publish s | read-back s | results checked "
        "| sessions (server) | per 1k tasks | connects (client-side): worker + client "
        "| Redis conns (server) "
        "| startup sessions | commits per task (PostgreSQL) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for s in report["cases"]:
        cells = " | ".join(_case_row(s))
        lines.append(f"| {BROKER_LABELS[s['broker']]} | {s['label']} | {cells} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    concurrency = {s["worker_concurrency"] for s in report["cases"] if s["worker_concurrency"]}
    lines = [
        "# chicory-backends end to end: the real Chicory worker",
        "",
        f"- date: {machine['date']}; nproc {machine['nproc']} (client, worker and servers "
        f"share them); Python {machine['python']}; {versions}",
        f"- worker: `{settings['worker_command']}`, a fresh process per case, Chicory's CLI "
        f"defaults (concurrency {', '.join(map(str, sorted(concurrency))) or '?'} as it "
        "reported, INFO logging, heartbeat every 10 s); Redis broker "
        f"(db {settings['redis_broker_db']}, its own key namespace per case) and RabbitMQ "
        "(Chicory's defaults: durable queues, prefetch_count=1, which lets the worker hold "
        "one unacknowledged message at a time, whatever its concurrency).",
        f"- per case: {settings['warmup']} warm-up tasks, then {settings['tasks']:,} sequential "
        "`add.delay(x, y)` from this process; tasks/s = tasks / (first delay() -> last result "
        "read back and checked); without a backend -> the last task executed. The task "
        "appends one byte to a file in every case (the completion signal); results are read "
        f"after it by get_result, {settings['readers']} in flight. Median of "
        f"{settings['runs']} run(s).",
        "- backends at their defaults, configured only by CHICORY_BACKEND_* (URL / file / "
        "db / key prefix): ours through `chicory_backend()`, Chicory 0.1.0's built by "
        "Chicory itself from its BackendType.",
        "- sessions: opened between the first delay() and the last check, by the worker and "
        "this client together. Server counters: "
        + "; ".join(f"{LABELS[k]}: {v}" for k, v in report["counters"].items())
        + ". connects (client-side): connections the worker and this client opened to the "
        "backend's server (or SQLite file, or Redis db), counted at the driver's connect call "
        "(bench/connects.py). per 1k tasks uses the server count on PostgreSQL and MariaDB, "
        "the client-side one on SQLite (no server) and Redis (whose server counter holds the "
        "broker's connections too: the Redis conns column, for every case). startup: from "
        "before the client connected to the end of the warm-up (server count where there is "
        "one).",
        f"- whole run: {report['elapsed_s']:.0f} s",
        "",
        "## tasks/s end to end",
        "",
        *summary_table(report),
        "",
        "## Every case",
        "",
        *cases_table(report),
        "",
    ]
    errors = [s for s in report["cases"] if s["error"]]
    if errors:
        lines += ["## Not measured", ""]
        lines += [f"- {BROKER_LABELS[s['broker']]} {s['label']}: {s['error']}" for s in errors]
        lines.append("")
    return "\n".join(lines)


def write(report: dict[str, Any], out_dir: Path, stem: str = "e2e") -> str:
    import json

    text = markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return text

"""The dashboard and /metrics over HTTP, against every SQL backend and Redis, seeded
through the contract (set_state / store_result with TaskDetails, store_heartbeat)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from html import unescape
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.errors import ConfigurationError
from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import TaskState
from chicory_backends.web import create_app
from chicory_backends.web.metrics import backend_kind
from chicory_backends.web.serve import check_bind, run_dashboard
from tests.support.backends import sql_backends
from tests.support.redis_servers import redis_backends
from tests.support.services import REDIS_HOST, REDIS_PORT, free_port, require
from tests.support.sql_databases import SQL_KINDS
from tests.support.web_seed import XSS_ERROR, XSS_ID, run_task, seed, task_ids_in

LOCAL = ("127.0.0.1", 50123)
REMOTE = ("203.0.113.7", 50123)
EVERYWHERE = "0.0.0.0"  # noqa: S104 - only ever refused here, never bound


def client_for(app: Any, address: tuple[str, int] = LOCAL, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard", **kwargs)


# Every SQL dialect, and Redis as a single server (its other modes add nothing the
# dashboard sees: it only asks the contract).
WEB_KINDS = (*SQL_KINDS, "redis")


@pytest.fixture(params=WEB_KINDS)
async def web_backend(
    request: pytest.FixtureRequest, sql_databases: Callable[[str], SQLBackendConfig]
) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind == "redis":
        require("Redis", REDIS_HOST, REDIS_PORT)
        factory: Any = redis_backends(kind)
    else:
        factory = sql_backends(kind, sql_databases)
    async with factory as make:
        yield await make()


@pytest.fixture
async def seeded(web_backend: Backend) -> tuple[Backend, Any]:
    return web_backend, await seed(web_backend)


@pytest.fixture
async def sqlite_backend(
    sql_databases: Callable[[str], SQLBackendConfig],
) -> AsyncIterator[Backend]:
    """For the tests of the application itself (auth, forms): one SQLite database."""
    backend = DatabaseBackend(sql_databases("sqlite"))
    await backend.connect()
    for task_id in ("auth-1", "auth-2"):
        await backend.delete_result(task_id)
    await run_task(backend, "auth-1", "add", "w1", TaskState.SUCCESS, result=1)
    try:
        yield backend
    finally:
        await backend.disconnect()


# -- every page, with the seeded data ---------------------------------------------------


async def test_every_page_answers_with_the_seeded_data(seeded: tuple[Backend, Any]) -> None:
    backend, stored = seeded
    async with client_for(create_app(backend)) as client:
        overview = await client.get("/")
        assert overview.status_code == 200
        assert 'id="total-tasks">34<' in overview.text
        assert 'id="failed-tasks">6<' in overview.text  # 5 charge + the hostile one
        assert ">charge</a>" in overview.text and 'id="chart-runtime"' in overview.text
        for window in ("15m", "1h", "7d", "all"):
            assert (await client.get("/", params={"window": window})).status_code == 200

        workers = await client.get("/workers")
        assert workers.status_code == 200
        assert 'id="workers-up">2<' in workers.text
        assert "host-w1" in workers.text and "host-w2" in workers.text

        tasks = await client.get("/tasks")
        assert tasks.status_code == 200
        ids = task_ids_in(tasks.text)
        assert len(ids) == 34 and set(ids) == set(stored.ids)
        assert ids[0] == XSS_ID  # newest first: the last one stored

        detail = await client.get("/task", params={"id": "charge-3"})
        assert detail.status_code == 200
        assert "CardDeclined: card 3 declined" in detail.text
        assert "Traceback (most recent call last)" in detail.text
        assert 'id="task-attempts">1<' in detail.text
        for step in ("enqueued", "started", "finished"):
            assert f'<span class="label">{step}</span>' in detail.text
        success = await client.get("/task", params={"id": "add-007"})
        assert '"sum": 7' in unescape(success.text)

        assert (await client.get("/static/chart.js")).status_code == 200
        assert (await client.get("/static/dashboard.js")).status_code == 200


async def test_unknown_task_is_404_and_bad_filters_are_400(seeded: tuple[Backend, Any]) -> None:
    backend, _ = seeded
    async with client_for(create_app(backend)) as client:
        missing = await client.get("/task", params={"id": "no-such-task"})
        assert missing.status_code == 404 and "no-such-task" in missing.text
        for params in (
            {"state": "EXPLODED"},
            {"since": "yesterday-ish"},
            {"cursor": "not-a-cursor"},
            {"limit": "0"},
            {"since": "2026-12-02T00:00", "until": "2026-12-01T00:00"},
        ):
            response = await client.get("/tasks", params=params)
            assert response.status_code == 400, params
        assert (await client.get("/", params={"window": "3y"})).status_code == 400
        # Ages past what a date can hold: a 400 saying so, in the CLI's words (timetext.py).
        for since, says in (
            ("99999999999d", "since: '99999999999d' is too long ago"),
            ("9999999d", "since: 9999999d ago is before year 1"),
        ):
            response = await client.get("/tasks", params={"since": since})
            assert response.status_code == 400, since
            assert says in unescape(response.text)


async def test_filters_and_keyset_pages(seeded: tuple[Backend, Any]) -> None:
    backend, stored = seeded
    async with client_for(create_app(backend)) as client:
        failures = task_ids_in((await client.get("/tasks", params={"state": "FAILURE"})).text)
        assert sorted(failures) == sorted([f"charge-{i}" for i in range(5)] + [XSS_ID])

        named = task_ids_in((await client.get("/tasks", params={"name": "report"})).text)
        assert sorted(named) == ["report-0", "report-1", "report-2"]

        on_w2 = task_ids_in((await client.get("/tasks", params={"worker": "w2"})).text)
        assert len(on_w2) == 8 and all(i.startswith(("charge-", "report-")) for i in on_w2)

        both = await client.get("/tasks", params={"worker": "w2", "state": "STARTED"})
        assert sorted(task_ids_in(both.text)) == ["report-0", "report-1", "report-2"]

        assert len(task_ids_in((await client.get("/tasks", params={"since": "1h"})).text)) == 34
        before = await client.get("/tasks", params={"until": "2000-01-01T00:00"})
        assert task_ids_in(before.text) == [] and "No tasks match." in before.text

        # Keyset pages of 10, newest first, following the page's own "Older" link.
        seen: list[str] = []
        url: str | None = "/tasks?limit=10"
        pages = 0
        while url is not None:
            page = await client.get(url)
            assert page.status_code == 200
            ids = task_ids_in(page.text)
            assert 0 < len(ids) <= 10
            seen.extend(ids)
            pages += 1
            found = re.search(r'id="next-page" href="([^"]+)"', page.text)
            url = unescape(found.group(1)) if found else None
        assert pages == 4 and len(seen) == 34 and set(seen) == set(stored.ids)
        everything = task_ids_in((await client.get("/tasks", params={"limit": "100"})).text)
        assert seen == everything  # the same order as one big page

        # Filtered pages keep their filter on the next page.
        first = await client.get("/tasks", params={"name": "add", "limit": "20"})
        found = re.search(r'id="next-page" href="([^"]+)"', first.text)
        assert found is not None
        rest = task_ids_in((await client.get(unescape(found.group(1)))).text)
        assert len(task_ids_in(first.text)) + len(rest) == 25
        assert all(task_id.startswith("add-") for task_id in rest)


async def test_the_partial_rows_are_what_the_live_script_fetches(
    seeded: tuple[Backend, Any],
) -> None:
    backend, _ = seeded
    async with client_for(create_app(backend)) as client:
        page = await client.get("/tasks", params={"state": "STARTED"})
        src = re.search(r'id="task-rows" data-live-src="([^"]+)"', page.text)
        assert src is not None
        rows = await client.get(unescape(src.group(1)))
        assert rows.status_code == 200 and "<html" not in rows.text
        assert sorted(task_ids_in(rows.text)) == ["report-0", "report-1", "report-2"]


async def test_script_tag_task_id_and_error_are_escaped(seeded: tuple[Backend, Any]) -> None:
    backend, _ = seeded
    async with client_for(create_app(backend, allow_delete=True)) as client:
        pages = [
            await client.get("/tasks"),
            await client.get("/tasks", params={"name": "hostile"}),
            await client.get("/task", params={"id": XSS_ID}),
            await client.get("/task", params={"id": XSS_ID + "-missing"}),
        ]
        for page in pages:
            assert "<script>alert" not in page.text
            assert "<img src=x" not in page.text
        detail = pages[2]
        assert detail.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
        assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt; &amp; &#34;quotes&#34;" in detail.text
        assert "script-src 'self'" in detail.headers["content-security-policy"]
        assert task_ids_in(pages[0].text)[0] == XSS_ID  # the link round-trips the id
        assert XSS_ERROR not in detail.text


async def test_metrics_equal_what_was_stored(seeded: tuple[Backend, Any]) -> None:
    backend, stored = seeded
    async with client_for(create_app(backend)) as client:
        await client.get("/tasks")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    tasks = {
        (s.labels["name"], s.labels["state"]): s.value
        for s in families["chicory_tasks_total"].samples  # a gauge: the name is kept whole
    }
    for key, count in stored.counts.items():
        assert tasks[key] == count, key
    assert sum(tasks.values()) == 34
    assert all(tasks[key] == 0 for key in tasks if key not in stored.counts)

    runtime = {
        (s.labels["name"], s.labels["quantile"]): s.value
        for s in families["chicory_task_runtime_seconds"].samples
    }
    for summary in await backend.task_summary():
        assert summary.name is not None
        if summary.runtime_p50 is None:
            continue
        assert runtime[(summary.name, "0.5")] == pytest.approx(summary.runtime_p50)
        assert runtime[(summary.name, "0.95")] == pytest.approx(summary.runtime_p95)
        assert runtime[(summary.name, "1")] == pytest.approx(summary.runtime_max)
    assert ("report", "0.5") not in runtime  # still running: no runtime yet

    assert families["chicory_workers_up"].samples[0].value == 2
    active = {s.labels["worker"]: s.value for s in families["chicory_worker_active_tasks"].samples}
    assert active == {"w1": 1, "w2": 3}

    ops = {
        (s.labels["op"], s.labels["backend"])
        for s in families["chicory_backend_operation_seconds"].samples
        if s.name.endswith("_count") and s.value > 0
    }
    kind = backend_kind(backend)
    assert kind in ("sqlite", "postgres", "mysql", "redis")
    assert {("list_tasks", kind), ("task_summary", kind), ("get_active_workers", kind)} <= ops
    # never a task id in a label
    assert all(task_id not in response.text for task_id in stored.ids if "-" in task_id)


# -- reading only, unless allowed -------------------------------------------------------


async def test_delete_only_when_allowed(sqlite_backend: Backend) -> None:
    async with client_for(create_app(sqlite_backend)) as client:
        detail = await client.get("/task", params={"id": "auth-1"})
        assert "delete-button" not in detail.text and 'name="csrf"' not in detail.text
        refused = await client.post("/delete", data={"task_id": "auth-1", "csrf": "x"})
        assert refused.status_code == 403
    assert await sqlite_backend.get_task("auth-1") is not None

    async with client_for(create_app(sqlite_backend, allow_delete=True)) as client:
        detail = await client.get("/task", params={"id": "auth-1"})
        assert "delete-button" in detail.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', detail.text)
        assert csrf is not None
        forged = await client.post("/delete", data={"task_id": "auth-1", "csrf": "forged"})
        assert forged.status_code == 403
        assert await sqlite_backend.get_task("auth-1") is not None
        deleted = await client.post("/delete", data={"task_id": "auth-1", "csrf": csrf.group(1)})
        assert deleted.status_code == 303 and deleted.headers["location"].startswith("/tasks")
        assert (await client.get("/delete")).status_code == 405
    assert await sqlite_backend.get_task("auth-1") is None


# -- who may look -----------------------------------------------------------------------


async def test_no_token_serves_loopback_only(sqlite_backend: Backend) -> None:
    app = create_app(sqlite_backend)
    async with client_for(app) as local:
        assert (await local.get("/tasks")).status_code == 200
    async with client_for(app, REMOTE) as remote:
        for path in ("/", "/tasks", "/metrics", "/events", "/task?id=auth-1"):
            response = await remote.get(path)
            assert response.status_code == 403, path
            assert "loopback" in response.text


async def test_token_by_header_or_once_by_query_then_cookie(sqlite_backend: Backend) -> None:
    app = create_app(sqlite_backend, auth_token="s3cret-token")
    async with client_for(app, REMOTE) as client:
        assert (await client.get("/tasks")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/tasks", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await client.get("/tasks", params={"token": "nope"})).status_code == 401

        bearer = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200 and "chicory_tasks_total" in bearer.text

        once = await client.get("/tasks", params={"token": "s3cret-token", "state": "SUCCESS"})
        assert once.status_code == 303
        assert once.headers["location"] == "/tasks?state=SUCCESS"  # the token is gone
        cookie = once.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "s3cret-token" not in cookie
        followed = await client.get(once.headers["location"])  # the client kept the cookie
        assert followed.status_code == 200 and "auth-1" in followed.text
        assert "s3cret-token" not in followed.text
        assert (await client.get("/static/chart.js")).status_code == 200
    async with client_for(app, REMOTE) as client:
        path = "http://dashboard//evil.example/tasks"  # the path, not another host
        sneaky = await client.get(path, params={"token": "s3cret-token"})
        assert sneaky.status_code == 303
        assert sneaky.headers["location"] == "/evil.example/tasks"  # never "//evil.example"


def test_serving_off_loopback_needs_a_token() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_bind(host, None)
    for host in (EVERYWHERE, "::", "192.168.1.20", "dashboard.example.com"):
        with pytest.raises(ConfigurationError, match="without a token"):
            check_bind(host, None)
        check_bind(host, "a-token")
    with pytest.raises(ConfigurationError, match="must not be empty"):
        check_bind(EVERYWHERE, " ")

    def factory() -> Backend:
        raise AssertionError("must refuse before building a backend or binding")

    with pytest.raises(ConfigurationError, match="without a token"):
        run_dashboard(factory, host=EVERYWHERE, port=free_port())


async def test_mounted_under_a_prefix(sqlite_backend: Backend) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/chicory", app=create_app(sqlite_backend))])
    async with client_for(host) as client:
        page = await client.get("/chicory/tasks")
        assert page.status_code == 200
        assert 'href="/chicory/task?id=auth-1"' in page.text
        assert 'src="/chicory/static/chart.js"' in page.text
        assert (await client.get("/chicory/static/chart.js")).status_code == 200


# -- live updates over a real server ----------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """uvicorn in this event loop (where the backend's connections live)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_events_push_when_a_task_is_stored(seeded: tuple[Backend, Any]) -> None:
    backend, _ = seeded
    app = create_app(backend, poll_interval=0.05)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        page = await client.get("/tasks")
        since = re.search(r'data-live-since="([^"]+)"', page.text)
        assert since is not None
        async with client.stream("GET", "/events", params={"since": since.group(1)}) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.aiter_lines()
            async with asyncio.timeout(10):
                assert (await anext(lines)).startswith("retry:")
                await run_task(backend, "live-1", "add", "w1", TaskState.SUCCESS, result=1)
                async for line in lines:
                    if line == "event: tasks":
                        break
        rows = await client.get("/tasks", params={"partial": "1"})
        assert task_ids_in(rows.text)[0] == "live-1"

        # A page that carries an old signature hears about the change at once.
        async with client.stream("GET", "/events", params={"since": since.group(1)}) as events:
            async with asyncio.timeout(10):
                async for line in events.aiter_lines():
                    if line == "event: tasks":
                        break


def test_the_web_package_imports_no_driver_and_holds_no_sql() -> None:
    """The house plan's arrow: web/ asks the backend through the contract."""
    import ast
    from pathlib import Path

    import chicory_backends.web

    forbidden = ("asyncpg", "aiomysql", "aiosqlite", "aioodbc", "pyodbc", "redis", "sqlalchemy")
    package = Path(chicory_backends.web.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, (path.name, name)
                assert not name.startswith(("chicory_backends.sql", "chicory_backends.redis"))


async def test_a_backend_that_does_not_answer_is_a_503_without_the_password() -> None:
    from chicory_backends.config import PostgresBackendConfig

    config = PostgresBackendConfig(
        url=f"postgresql+asyncpg://app:hunter2-secret@127.0.0.1:{free_port()}/nowhere",
        connect_timeout=1,
    )
    backend = DatabaseBackend(config)  # never connected
    async with client_for(create_app(backend)) as client:
        for path in ("/", "/tasks", "/workers", "/task?id=x", "/metrics"):
            response = await client.get(path)
            assert response.status_code == 503, path
            assert "hunter2" not in response.text


def test_without_the_web_extra_the_dashboard_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("uvicorn", "starlette"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)

    def factory() -> Backend:
        raise AssertionError("must refuse before building a backend")

    with pytest.raises(ConfigurationError, match=r"chicory-backends\[web\]"):
        run_dashboard(factory)

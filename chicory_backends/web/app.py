"""The dashboard: an ASGI application (Starlette) over any backend's contract.

``create_app(backend)`` returns an application that an existing Starlette or FastAPI
service can mount (``Mount("/chicory", app=create_app(backend))``); links follow the
mount's ``root_path``. The caller connects the backend, unless ``manage_backend=True``
(then the application's lifespan connects and disconnects it, as ``run_dashboard`` does).

Pages are rendered on the server with Jinja2, autoescape on for every template: task
ids, names, results and errors are user data and are only ever text. The scripts are
static files of the package (no CDN, no inline script), under a Content-Security-Policy
that allows nothing else.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from chicory_backends.base import Backend
from chicory_backends.errors import ChicoryBackendError
from chicory_backends.history import MAX_PAGE_SIZE, check_state
from chicory_backends.redact import redact
from chicory_backends.timetext import format_duration, parse_age, parse_when
from chicory_backends.types import (
    TERMINAL_STATES,
    TaskRecord,
    TaskState,
    TaskSummary,
    WorkerStats,
)
from chicory_backends.web.auth import TokenAuth
from chicory_backends.web.live import NewestTaskWatcher, signature
from chicory_backends.web.metrics import Metrics, TimedBackend

HERE = Path(__file__).parent
PAGE_SIZE = 50
WINDOWS = ("15m", "1h", "24h", "7d", "all")
DEFAULT_WINDOW = "24h"
BUCKETS = 12  # points of the tasks-per-minute chart
FAILED = (TaskState.FAILURE, TaskState.DEAD_LETTERED)
NONE = "\N{EN DASH}"  # what a page shows for no value

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(ValueError):
    """A filter the user typed that means nothing: a 400 page that says why."""


# -- formatting (Jinja filters) ---------------------------------------------------------


def format_when(value: datetime | None) -> str:
    if value is None:
        return NONE
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def duration_or_none(seconds: float | None) -> str:
    return NONE if seconds is None else format_duration(seconds)


def format_ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    now = now or datetime.now(UTC)
    return format_duration(max(0.0, (now - value).total_seconds())) + " ago"


def format_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def window_bound(text: str, now: datetime, label: str) -> datetime | None:
    """``15m`` (that long ago) or an ISO time (naive means UTC); empty means no bound.
    The CLI's --since/--until parser (timetext.py): the same words, the same errors."""
    try:
        return parse_when(text, now)
    except ValueError as error:
        raise BadRequest(f"{label}: {error}") from None


# -- the application --------------------------------------------------------------------


@dataclass
class Dashboard:
    backend: Backend
    allow_delete: bool
    stale_after: float
    metrics: Metrics
    watcher: NewestTaskWatcher
    templates: jinja2.Environment
    csrf: str

    @property
    def ops(self) -> TimedBackend:
        return self.metrics.ops

    # -- rendering ---------------------------------------------------------------------

    def render(
        self, request: Request, name: str, context: Mapping[str, Any], status_code: int = 200
    ) -> HTMLResponse:
        base: str = request.scope.get("root_path", "").rstrip("/")

        def link(path: str, **params: Any) -> str:
            query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
            return base + path + ("?" + query if query else "")

        page: str = self.templates.get_template(name).render(
            base=base,
            link=link,
            allow_delete=self.allow_delete,
            csrf=self.csrf,
            states=[state.value for state in TaskState],
            **context,
        )
        return HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)

    def problem(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return self.render(
            request,
            "problem.html",
            {"page": "", "title": title, "message": message},
            status_code=status,
        )

    # -- pages -------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        window = request.query_params.get("window", DEFAULT_WINDOW)
        if window not in WINDOWS:
            raise BadRequest(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
        now = datetime.now(UTC)
        since = None if window == "all" else now - parse_age(window)
        summaries = await self.ops.task_summary(since=since)
        totals = {state: 0 for state in TaskState}
        for summary in summaries:
            for state, count in summary.states.items():
                totals[state] += count
        total = sum(totals.values())
        finished = sum(totals[state] for state in TERMINAL_STATES)
        failed = sum(totals[state] for state in FAILED)
        throughput = await self._throughput(since, now) if since is not None else None
        charts = {
            "states": {
                "labels": [state.value for state in TaskState],
                "series": [{"name": "tasks", "values": [totals[s] for s in TaskState]}],
            },
            "runtime": {
                "labels": [_name(summary) for summary in summaries],
                "series": [
                    {"name": "p50 (s)", "values": [s.runtime_p50 for s in summaries]},
                    {"name": "p95 (s)", "values": [s.runtime_p95 for s in summaries]},
                ],
            },
            "throughput": throughput,
        }
        context = {
            "page": "overview",
            "window": window,
            "windows": WINDOWS,
            "summaries": summaries,
            "totals": totals,
            "total": total,
            "failed": failed,
            "failure_rate": None if finished == 0 else failed / finished,
            "charts": charts,
            "live_since": await self.watcher.current(),
            "name_of": _name,
        }
        if request.query_params.get("partial") == "1":
            return self.render(request, "overview_live.html", context)
        return self.render(request, "overview.html", context)

    async def _throughput(self, since: datetime, now: datetime) -> dict[str, Any]:
        """Tasks per minute (all, and failed) in ``BUCKETS`` equal slices of the window."""
        step = (now - since) / BUCKETS
        minutes = step.total_seconds() / 60
        labels, everything, failures = [], [], []
        for index in range(BUCKETS):
            start = since + step * index
            summaries = await self.ops.task_summary(since=start, until=start + step)
            count = sum(s.total for s in summaries)
            bad = sum(s.states.get(state, 0) for s in summaries for state in FAILED)
            labels.append((start + step).strftime("%H:%M" if step < timedelta(days=1) else "%m-%d"))
            everything.append(round(count / minutes, 3))
            failures.append(round(bad / minutes, 3))
        return {
            "labels": labels,
            "series": [
                {"name": "tasks/min", "values": everything},
                {"name": "failed/min", "values": failures},
            ],
        }

    async def workers(self, request: Request) -> Response:
        now = datetime.now(UTC)
        workers = await self.ops.get_active_workers()
        rows = [self._worker_row(worker, now) for worker in workers]
        context = {
            "page": "workers",
            "workers": rows,
            "up": sum(1 for row in rows if row["status"] == "up"),
            "stale": sum(1 for row in rows if row["status"] != "up"),
            "live_since": await self.watcher.current(),
            "stale_after": self.stale_after,
        }
        if request.query_params.get("partial") == "1":
            return self.render(request, "workers_live.html", context)
        return self.render(request, "workers.html", context)

    def _worker_row(self, worker: WorkerStats, now: datetime) -> dict[str, Any]:
        beat = worker.last_heartbeat
        if not worker.is_running:
            status = "stopped"
        elif beat is None or (now - beat).total_seconds() > self.stale_after:
            status = "stale"
        else:
            status = "up"
        return {
            "worker": worker,
            "status": status,
            "heartbeat_ago": format_ago(beat, now),
            "broker_error": redact(worker.broker.error) if worker.broker else None,
            "backend_error": redact(worker.backend.error) if worker.backend else None,
        }

    async def tasks(self, request: Request) -> Response:
        params = request.query_params
        now = datetime.now(UTC)
        filters = {
            "state": params.get("state", "").strip(),
            "name": params.get("name", "").strip(),
            "worker": params.get("worker", "").strip(),
            "since": params.get("since", "").strip(),
            "until": params.get("until", "").strip(),
        }
        limit_text = params.get("limit", str(PAGE_SIZE))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            raise BadRequest(f"limit must be a number from 1 to {MAX_PAGE_SIZE}")
        limit = int(limit_text)
        cursor = params.get("cursor") or None
        query: dict[str, Any] = {
            "state": check_state(filters["state"] or None),
            "name": filters["name"] or None,
            "worker_id": filters["worker"] or None,
            "since": window_bound(filters["since"], now, "since"),
            "until": window_bound(filters["until"], now, "until"),
            "limit": limit,
            "cursor": cursor,
        }
        page = await self.ops.list_tasks(**query)
        unfiltered_first = cursor is None and not any(filters.values())
        if unfiltered_first:
            live_since = signature(page.items[0] if page.items else None)
        else:
            live_since = await self.watcher.current()
        context = {
            "page": "tasks",
            "items": page.items,
            "next_cursor": page.next_cursor,
            "filters": filters,
            "limit": limit if limit != PAGE_SIZE else None,
            "cursor": cursor,
            "live_since": live_since,
            "deleted": params.get("deleted"),
        }
        if params.get("partial") == "1":
            return self.render(request, "task_rows.html", context)
        return self.render(request, "tasks.html", context)

    async def task_detail(self, request: Request) -> Response:
        task_id = request.query_params.get("id", "")
        if not task_id:
            raise BadRequest("which task? /task?id=<task id>")
        record = await self.ops.get_task(task_id)
        if record is None:
            return self.problem(
                request, 404, "No such task", f"No task {task_id!r} is stored (or it expired)."
            )
        return self.render(
            request,
            "task.html",
            {"page": "tasks", "task": record, "timeline": _timeline(record)},
        )

    async def delete(self, request: Request) -> Response:
        if not self.allow_delete:
            return self.problem(
                request, 403, "Read-only", "Deleting is off: start the dashboard with it allowed."
            )
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if not secrets.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
            return self.problem(request, 403, "Refused", "The form is stale: reload the page.")
        task_id = form.get("task_id", "")
        if not task_id:
            raise BadRequest("which task? a task_id field is needed")
        if await self.ops.get_task(task_id) is None:
            return self.problem(request, 404, "No such task", f"No task {task_id!r} is stored.")
        await self.ops.delete_result(task_id)
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(base + "/tasks?" + urlencode({"deleted": task_id}), status_code=303)

    async def events(self, request: Request) -> Response:
        since = request.query_params.get("since") or None
        return StreamingResponse(
            self.watcher.events(since),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def metrics_page(self, request: Request) -> Response:
        body = await self.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _name(summary: TaskSummary) -> str:
    return summary.name if summary.name is not None else "(unnamed)"


def _timeline(record: TaskRecord) -> list[dict[str, Any]]:
    """Enqueued, started, finished: each time and its offset from the first one known."""
    steps = [
        ("enqueued", record.enqueued_at),
        ("started", record.started_at),
        ("finished", record.finished_at),
    ]
    known = [when for _, when in steps if when is not None]
    first = min(known) if known else None
    return [
        {
            "label": label,
            "when": when,
            "offset": None if when is None or first is None else (when - first).total_seconds(),
        }
        for label, when in steps
    ]


class _Errors:
    """Turn bad filters into 400 pages and backend failures into 503 pages."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except (BadRequest, ValueError) as error:
            if started:
                raise
            response = self.dashboard.problem(Request(scope), 400, "Bad request", str(error))
            await response(scope, receive, send)
        except ChicoryBackendError as error:
            if started:
                raise
            message = f"The backend did not answer: {type(error).__name__}: {redact(str(error))}"
            response = self.dashboard.problem(Request(scope), 503, "Backend unavailable", message)
            await response(scope, receive, send)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = format_when
    env.filters["duration"] = duration_or_none
    env.filters["ago"] = format_ago
    env.filters["pretty_json"] = format_json
    env.filters["q"] = lambda text: quote(str(text), safe="")
    env.filters["percent"] = lambda value: NONE if value is None else f"{100 * value:.1f} %"
    return env


def create_app(
    backend: Backend,
    *,
    allow_delete: bool = False,
    auth_token: str | None = None,
    manage_backend: bool = False,
    stale_after: float = 30.0,
    poll_interval: float = 1.0,
) -> Starlette:
    """The dashboard over ``backend``, read-only unless ``allow_delete``.

    Without ``auth_token`` only loopback clients are served; with it, every request
    needs the token (see auth.py). ``stale_after``: seconds since a worker's last
    heartbeat after which the workers page calls it stale. ``poll_interval``: how often
    the live updates ask the backend for the newest task while a page listens.
    """
    metrics = Metrics(backend)
    dashboard = Dashboard(
        backend=backend,
        allow_delete=allow_delete,
        stale_after=stale_after,
        metrics=metrics,
        watcher=NewestTaskWatcher(metrics.ops, interval=poll_interval),
        templates=_templates(),
        csrf=secrets.token_urlsafe(32),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_backend:
            await backend.connect()
        try:
            yield
        finally:
            await dashboard.watcher.close()
            if manage_backend:
                await backend.disconnect()

    routes = [
        Route("/", dashboard.overview),
        Route("/workers", dashboard.workers),
        Route("/tasks", dashboard.tasks),
        Route("/task", dashboard.task_detail),
        Route("/delete", dashboard.delete, methods=["POST"]),
        Route("/events", dashboard.events),
        Route("/metrics", dashboard.metrics_page),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TokenAuth, token=auth_token),
            Middleware(_Errors, dashboard=dashboard),
        ],
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    app.state.started = time.time()
    return app

"""OpenTelemetry spans for a backend's calls: ``instrument(backend)``.

Optional (the ``otel`` extra, ``opentelemetry-api``). Each contract call of the
instrumented backend object (store, get, wait, cleanup, history, heartbeats) runs in a
span ``chicory.<operation>`` carrying the backend kind and the operation. The spans wrap
the contract methods themselves, so every path is covered alike, the fast SQL path that
never reaches SQLAlchemy's cursor events included.

No cost when not used: nothing is wrapped until ``instrument`` is called, and without
opentelemetry installed it returns the backend untouched. With the API but no SDK
configured, OpenTelemetry's own no-op tracer makes each span nearly free.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chicory_backends.base import Backend

B = TypeVar("B", bound=Backend)

# The calls that get a span; cleanup_old_results exists on the SQL backends only.
OPERATIONS = (
    "set_state",
    "store_result",
    "get_result",
    "get_results",
    "delete_result",
    "wait_for_result",
    "get_task",
    "list_tasks",
    "task_summary",
    "store_heartbeat",
    "get_heartbeat",
    "get_active_workers",
    "cleanup_stale_clients",
    "cleanup_old_results",
    "healthcheck",
)
# db.system of OpenTelemetry's semantic conventions, by backend kind.
DB_SYSTEM = {
    "postgres": "postgresql",
    "mysql": "mysql",
    "sqlite": "sqlite",
    "mssql": "mssql",
    "redis": "redis",
}
_MARK = "_chicory_otel_instrumented"


def kind_of(backend: Backend) -> str:
    """postgres, mysql, sqlite, mssql or redis, from the backend's config class."""
    config = getattr(backend, "config", None)
    name = type(config).__name__ if config is not None else ""
    if name.endswith("BackendConfig") and name != "SQLBackendConfig":
        return name.removesuffix("BackendConfig").lower()
    return type(backend).__name__.removesuffix("Backend").lower() or "unknown"


def instrument(backend: B, tracer_provider: Any = None) -> B:
    """Wrap this backend object's calls in spans (once; a second call changes nothing).

    ``tracer_provider``: an SDK TracerProvider; by default the global one. The task id
    of single-task calls is an attribute (``chicory.task_id``): spans are per call, not
    metrics, so an id there costs no cardinality.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return backend
    if getattr(backend, _MARK, False):
        return backend
    tracer = trace.get_tracer("chicory_backends", tracer_provider=tracer_provider)
    kind = kind_of(backend)
    for operation in OPERATIONS:
        method = getattr(backend, operation, None)
        if method is not None:
            setattr(backend, operation, _traced(method, operation, kind, tracer))
    setattr(backend, _MARK, True)
    return backend


def _traced(
    method: Callable[..., Awaitable[Any]], operation: str, kind: str, tracer: Any
) -> Callable[..., Awaitable[Any]]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes = {
        "chicory.backend": kind,
        "chicory.operation": operation,
        "db.system": DB_SYSTEM.get(kind, kind),
        "db.operation.name": operation,
    }

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span(
            f"chicory.{operation}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=False,
        ) as span:
            task_id = kwargs.get("task_id", args[0] if args else None)
            if isinstance(task_id, str) and operation not in ("store_heartbeat", "get_heartbeat"):
                span.set_attribute("chicory.task_id", task_id)
            try:
                return await method(*args, **kwargs)
            except Exception as error:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise

    return call

"""OpenTelemetry spans of an instrumented backend, captured with the SDK's in-memory
exporter, on every SQL dialect (PostgreSQL's store_result takes the fast path that
bypasses SQLAlchemy's cursor events) and on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chicory_backends.base import Backend
from chicory_backends.config import SQLBackendConfig
from chicory_backends.otel import instrument, kind_of
from chicory_backends.types import TaskDetails, TaskResult, TaskState
from tests.support.backends import sql_backends
from tests.support.redis_servers import redis_backends
from tests.support.services import REDIS_HOST, REDIS_PORT, require
from tests.support.sql_databases import SQL_KINDS


@pytest.fixture(params=(*SQL_KINDS, "redis"))
async def backend(
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
def exporter() -> tuple[InMemorySpanExporter, TracerProvider]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return spans, provider


async def test_a_span_per_backend_call(
    backend: Backend, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans, provider = exporter
    traced = instrument(backend, tracer_provider=provider)
    assert traced is backend and instrument(backend, tracer_provider=provider) is backend
    details = TaskDetails(name="add", worker_id="w1", attempt=1)

    await backend.set_state("otel-1", TaskState.STARTED, details)
    result = TaskResult(task_id="otel-1", state=TaskState.SUCCESS, result=3)
    await backend.store_result("otel-1", result, details)
    assert (await backend.get_result("otel-1")) == result
    assert (await backend.wait_for_result("otel-1", timeout=5)) == result
    await backend.get_results(["otel-1", "otel-none"])
    await backend.list_tasks(limit=5)
    await backend.task_summary()
    await backend.delete_result("otel-1")
    await backend.cleanup_stale_clients()

    finished = spans.get_finished_spans()
    names = [span.name for span in finished]
    for operation in (
        "set_state",
        "store_result",
        "get_result",
        "wait_for_result",
        "get_results",
        "list_tasks",
        "task_summary",
        "delete_result",
        "cleanup_stale_clients",
    ):
        assert f"chicory.{operation}" in names, (operation, names)
    kind = kind_of(backend)
    assert kind in ("sqlite", "postgres", "mysql", "redis")
    for span in finished:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["chicory.backend"] == kind
        assert span.name == "chicory." + str(span.attributes["chicory.operation"])
        assert span.status.status_code is not StatusCode.ERROR
    store = next(span for span in finished if span.name == "chicory.store_result")
    assert store.attributes is not None and store.attributes["chicory.task_id"] == "otel-1"


async def test_a_failing_call_is_an_error_span(
    backend: Backend, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans, provider = exporter
    instrument(backend, tracer_provider=provider)
    with pytest.raises(ValueError):
        await backend.list_tasks(limit=0)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "chicory.list_tasks"]
    assert span.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


def test_without_opentelemetry_the_backend_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from chicory_backends.config import SQLiteBackendConfig
    from chicory_backends.sql.backend import DatabaseBackend

    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    backend = DatabaseBackend(SQLiteBackendConfig(file_path="/tmp/unused-otel.db"))
    assert instrument(backend) is backend
    assert "store_result" not in vars(backend)  # nothing wrapped

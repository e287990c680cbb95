"""bench/whatif.py: a variant measures the statement it names, on the backend's fast path.

The driver fast path finds a statement by its ``id()``: a variant that swapped only
``_statements`` silently ran on SQLAlchemy instead and measured the wrong thing. SQLite
(a temporary file, no server) is enough to check that it no longer does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench import whatif
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.sql import dialects, execution
from chicory_backends.sql.backend import DatabaseBackend


@pytest.fixture
async def literal(tmp_path: Path) -> AsyncIterator[whatif.LiteralGuard]:
    config = SQLiteBackendConfig(file_path=str(tmp_path / "whatif.db"), auto_migrate=True)
    impl = whatif.LiteralGuard(config)
    await impl.open()
    yield impl
    await impl.close()


async def test_the_literal_guard_variant_runs_its_own_statements_on_the_fast_path(
    literal: whatif.LiteralGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: DatabaseBackend = literal.backend
    statements = backend._statements
    assert statements is not None
    assert {"set_state", "store_result", "get_result"} <= whatif.fast_path(backend, statements)

    def slow_path(*_args: Any) -> Any:
        raise AssertionError("a hot statement went through SQLAlchemy's Connection")

    monkeypatch.setattr(execution, "on_pool", slow_path)
    await literal.set_started("whatif-1")
    await literal.store("whatif-1", 7)
    assert await literal.get("whatif-1") == {"value": 7}


async def test_a_swap_that_leaves_the_fast_path_is_refused(
    literal: whatif.LiteralGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: DatabaseBackend = literal.backend
    assert backend._statements is not None and backend._engine is not None
    statements = dialects.statements_for(backend._engine.dialect)  # not compiled
    monkeypatch.setattr(backend, "_compiled", lambda statements, _dialect: statements)
    with pytest.raises(RuntimeError, match="left the driver fast path"):
        whatif.swap_statements(backend, statements)

"""The library internals the package leans on are checked at import, with a clear error."""

from __future__ import annotations

import importlib

import pytest
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection

from chicory_backends.sql import internals


def test_the_internals_the_hot_path_needs_are_there() -> None:
    assert callable(internals.greenlet_spawn)
    assert callable(AsyncAdapt_dbapi_connection._handle_exception)


def test_a_moved_internal_fails_the_import_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AsyncAdapt_dbapi_connection, "_handle_exception")
    with pytest.raises(ImportError, match=r"_handle_exception.*SQLAlchemy >=2\.1,<2\.2"):
        importlib.reload(internals)
    monkeypatch.undo()
    importlib.reload(internals)  # as it was, for the tests after this one


def test_adapted_error_gives_the_dbapi_exception() -> None:
    class Adapter:
        def _handle_exception(self, error: Exception) -> None:
            raise RuntimeError(f"adapted {error}")

    adapted = internals.adapted_error(Adapter(), ValueError("raw"))
    assert isinstance(adapted, RuntimeError) and str(adapted) == "adapted raw"

"""The SQLAlchemy internals the hot path cannot do without, checked at import.

Public API is used wherever it exists (``AdaptedConnection.run_async``, the types'
``bind_processor``). Two pieces have no public equivalent:

- ``sqlalchemy.util.greenlet_spawn``: runs the whole checkout-execute-return of one call
  in one greenlet on the sync engine. The public ``AsyncConnection`` costs a greenlet
  switch for each of connect, execute, fetch and close, most of a local query's time.
- the async adapters' ``_handle_exception``: turns a raw driver exception into the DBAPI
  exception SQLAlchemy would have raised, so that ``dialect.is_disconnect`` can tell a
  dropped connection (and the call be retried on a fresh one). Without it every failure
  would read as a plain database error and the reconnect retry would stop silently.

If an upgrade moves either, importing the backend fails here, naming what moved and the
versions that CI proves (pyproject.toml pins them), instead of misbehaving later.

Why the upper pin stays at <2.2: both pieces are internal and may move in a minor
release, and CI installs the newest 2.x that PyPI serves (2.1.9 on 2026-12-04; `pip index
versions sqlalchemy` lists no 2.2), so every version the pin admits is one CI has run.
Lift it when a 2.2 exists and CI passes on it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection

PROVEN = "SQLAlchemy >=2.1,<2.2"


def _require(present: bool, what: str) -> None:
    if not present:
        raise ImportError(
            f"chicory-backends needs {what}, which SQLAlchemy {sqlalchemy.__version__} does "
            f"not have; install a version CI proves: {PROVEN}"
        )


try:
    from sqlalchemy.util import greenlet_spawn  # internal: see the module docstring
except ImportError:  # pragma: no cover - only with an unproven SQLAlchemy
    _require(False, "sqlalchemy.util.greenlet_spawn")

_require(
    callable(getattr(AsyncAdapt_dbapi_connection, "_handle_exception", None)),
    "AsyncAdapt_dbapi_connection._handle_exception",
)


def adapted_error(dbapi_connection: Any, error: Exception) -> BaseException:
    """The DBAPI exception SQLAlchemy's async adapter makes of a raw driver exception."""
    try:
        dbapi_connection._handle_exception(error)  # noqa: SLF001 - internal, checked above
    except Exception as adapted:
        return adapted
    return error


__all__ = ["PROVEN", "adapted_error", "greenlet_spawn"]

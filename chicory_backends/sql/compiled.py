"""SQLAlchemy statements compiled once into the driver's own SQL, for the hot path.

Executing through a SQLAlchemy Connection costs about as much CPU per call as the driver
itself (cache lookup, execution context, result wrapping). The hot single-row statements
never change shape, so they are compiled once per dialect here and then run on the pooled
driver connection with a positional argument list, converted by the same bind processors
SQLAlchemy would apply (SQLite, for instance, stores datetimes in SQLAlchemy's format).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """One statement as the driver takes it: SQL text and how to build its arguments."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            params[name] if process is None else process(params[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )


def compile_for_driver(statement: Executable, dialect: Dialect) -> DriverStatement | None:
    """``statement`` as driver SQL, or None when it cannot be run that way (its shape
    depends on the parameters)."""
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if compiled.positiontup is None or any(
        bind.expanding
        or bind.literal_execute
        or bind.value is not None
        or bind.callable is not None
        for bind in compiled.binds.values()
    ):
        return None
    names = tuple(compiled.positiontup)
    # The processor SQLAlchemy itself would apply to each value (SQLite's datetimes, say),
    # from the type's public API.
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    return DriverStatement(sql=compiled.string, names=names, processors=processors)

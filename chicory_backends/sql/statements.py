"""Named statements: each one built once per dialect, compiled once per engine.

A ``NamedStatement`` carries its name (for logs, tests and the bench), the SQLAlchemy
statement, and, where the driver fast path applies, the same statement compiled into the
driver's own SQL (compiled.py). The execution path (execution.py) reads the compiled form
from the object it is given: nothing is looked up by ``id()``, and a statement swapped in
by a test or the bench carries its own compiled form with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect

from chicory_backends.sql.compiled import DriverStatement, compile_for_driver


@dataclass(frozen=True, slots=True, eq=False)
class NamedStatement:
    """One statement of ours: what it is called, what it is, and how the driver runs it
    (``driver`` is None where it runs through SQLAlchemy's Connection)."""

    name: str
    statement: Executable
    driver: DriverStatement | None = None

    def compiled_for(self, dialect: Dialect) -> NamedStatement:
        """This statement with its driver form, where its shape allows one (a statement
        whose SQL depends on its parameters, such as an expanding IN, keeps None)."""
        return replace(self, driver=compile_for_driver(self.statement, dialect))

    def __repr__(self) -> str:
        path = "driver" if self.driver is not None else "SQLAlchemy"
        return f"<statement {self.name} via {path}>"


# What may run as a named statement or, for a one-off (``SELECT 1``), a bare one.
Runnable = NamedStatement | Executable


def executable_of(runnable: Runnable) -> Executable:
    return runnable.statement if isinstance(runnable, NamedStatement) else runnable

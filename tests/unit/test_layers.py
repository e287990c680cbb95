"""The arrows of the house plan (docs/architecture.md), read from the package's imports.

Faces use backends through the contract; the SQL and Redis backends never import each
other; result.py never imports a driver; the CLI holds no SQL (it asks the backend).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chicory_backends"
DRIVERS = ("asyncpg", "aiomysql", "aiosqlite", "aioodbc", "pyodbc", "redis")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def files(under: str) -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py")) if (PACKAGE / under).is_dir() else []


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", files("sql"), ids=lambda p: p.name)
def test_the_sql_backend_never_imports_redis(path: Path) -> None:
    assert not {m for m in imports_of(path) if m.startswith("chicory_backends.redis")}
    assert "redis" not in {_top(m) for m in imports_of(path)}


@pytest.mark.parametrize("path", files("redis"), ids=lambda p: p.name)
def test_the_redis_backend_never_imports_sql(path: Path) -> None:
    assert not {m for m in imports_of(path) if m.startswith("chicory_backends.sql")}
    assert "sqlalchemy" not in {_top(m) for m in imports_of(path)}


@pytest.mark.parametrize(
    "name",
    [
        "result.py",
        "waiting.py",
        "coalesce.py",
        "base.py",
        "codec.py",
        "types.py",
        "history.py",
        "chicory_format.py",
        "timetext.py",
        "redact.py",
    ],
)
def test_shared_pieces_import_no_driver(name: str) -> None:
    tops = {_top(m) for m in imports_of(PACKAGE / name)}
    assert not tops & {*DRIVERS, "sqlalchemy"}, tops


# Every module of the CLI package (without it, reading cli.py fails: never a silent skip).
@pytest.mark.parametrize("path", files("cli") or [PACKAGE / "cli.py"], ids=lambda p: p.name)
def test_the_cli_holds_no_sql(path: Path) -> None:
    modules = imports_of(path)
    assert "sqlalchemy" not in {_top(m) for m in modules}, modules
    assert not {m for m in modules if m.startswith("chicory_backends.sql.")} - {
        "chicory_backends.sql.backend",  # the backend it asks
        "chicory_backends.sql.drivers",  # what the driver can do (PgBouncer)
        "chicory_backends.sql.engine",  # error translation for alembic's failures
        "chicory_backends.sql.maintenance",  # the progress callback's type
        "chicory_backends.sql.migrate",  # alembic configuration and the revision read
    }


def test_the_contract_knows_no_implementation() -> None:
    modules = imports_of(PACKAGE / "base.py")
    # history: the checks of the history queries' arguments, shared by every backend;
    # codec: the one id check (no driver, no settings).
    assert not {m for m in modules if m.startswith("chicory_backends.")} - {
        "chicory_backends.types",
        "chicory_backends.history",
        "chicory_backends.codec",
    }, modules
    history = imports_of(PACKAGE / "history.py")
    assert not {m for m in history if m.startswith("chicory_backends.")} - {
        "chicory_backends.types",
        "chicory_backends.codec",
    }, history

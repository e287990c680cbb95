"""The two tables, written once for every dialect; per-dialect column types are variants here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UnicodeText,
)
from sqlalchemy.dialects import mssql, mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

# The Alembic revision these tables correspond to; connect() refuses any other.
SCHEMA_REVISION = "0006"

metadata = MetaData()

# PostgreSQL only (revision 0003): who waits for which task, so that the NOTIFY trigger
# fires only when someone listens (see sql/notify.py). Not in ``metadata``: the other
# dialects have no such table, and `alembic check` would report it missing there; env.py
# leaves it out of the comparison instead.
RESULT_WAITERS_TABLE = "chicory_result_waiters"
POSTGRESQL_ONLY_TABLES = frozenset({RESULT_WAITERS_TABLE})

# Microseconds and UTC on every dialect: MySQL's plain DATETIME drops fractions, and
# SQL Server's DATETIME rounds to 3 ms.
UtcDateTime = (
    DateTime(timezone=True)
    .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    .with_variant(mssql.DATETIMEOFFSET(precision=6), "mssql")  # type: ignore[no-untyped-call]
)

# JSON text the backend encodes itself (strictly, once); JSONB on PostgreSQL so it can be
# queried, JSON on MySQL, NVARCHAR(MAX) on SQL Server, TEXT on SQLite.
JsonDocument = (
    JSON()
    .with_variant(postgresql.JSONB(), "postgresql")
    .with_variant(mssql.NVARCHAR(None), "mssql")
    .with_variant(Text(), "sqlite")
)

# A task's return value, the JSON text our codec made and checked: as JsonDocument, but
# plain TEXT on PostgreSQL (revision 0006), where JSONB parses every write and prints every
# read, about 40 ms per MB of server time (make bench-sizes), and nothing queries inside a
# result.
ValueDocument = (
    JSON()
    .with_variant(Text(), "postgresql")
    .with_variant(mssql.NVARCHAR(None), "mssql")
    .with_variant(Text(), "sqlite")
)

LongText = (
    UnicodeText()
    .with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    .with_variant(mssql.NVARCHAR(None), "mssql")
)

# Ids compare byte for byte everywhere: MySQL's default collations are case-insensitive
# and MariaDB's _bin ones ignore trailing spaces, either of which would merge two tasks.
# (255 utf8mb4 characters are 1020 bytes, within InnoDB's 3072-byte key limit.)


class IdString(TypeDecorator[str]):
    """VARCHAR(255), with a byte-exact, no-pad collation on MySQL and MariaDB.

    The collation has a different name on each, and SQLAlchemy's mysql dialect serves
    both, so it is chosen from the connected server rather than the URL.
    """

    impl = String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            mariadb = getattr(dialect, "is_mariadb", False) or dialect.name == "mariadb"
            collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
            return dialect.type_descriptor(
                mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
            )
        if dialect.name == "mssql":  # SQL Server's default collation ignores case
            return dialect.type_descriptor(mssql.NVARCHAR(255, collation="Latin1_General_100_BIN2"))
        return dialect.type_descriptor(String(255))


# Keyset pages of list_tasks, newest first, unfiltered or filtered by name or by state:
# each ends in (created_at, task_id), the page order. (A worker filter walks the first.)
HISTORY_INDEXES = (
    Index("ix_chicory_task_results_created_at", "created_at", "task_id"),
    Index("ix_chicory_task_results_name_created_at", "name", "created_at", "task_id"),
    Index("ix_chicory_task_results_state_created_at", "state", "created_at", "task_id"),
)

task_results = Table(
    "chicory_task_results",
    metadata,
    Column("task_id", IdString(), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("result", ValueDocument, nullable=True),
    Column("error", LongText, nullable=True),
    Column("traceback", LongText, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    # The task's history (revision 0004): see types.TaskRecord.
    Column("name", IdString(), nullable=True),
    Column("queue", IdString(), nullable=True),
    Column("worker_id", IdString(), nullable=True),
    Column("attempts", Integer(), nullable=False, server_default="0"),
    Column("enqueued_at", UtcDateTime, nullable=True),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("args", JsonDocument, nullable=True),
    # Chicory 0.1.0's own document (revision 0005, sql/adopt.py): read instead of the
    # columns above while it is set; our writes clear it (or rewrite it, with
    # write_chicory_format), Chicory's own workers write it during a switch.
    Column("result_json", LongText, nullable=True),
    Index("ix_chicory_task_results_updated_at", "updated_at"),
    Index("ix_chicory_task_results_expires_at", "expires_at"),
    *HISTORY_INDEXES,
    mysql_charset="utf8mb4",
)

worker_heartbeats = Table(
    "chicory_worker_heartbeats",
    metadata,
    Column("worker_id", IdString(), primary_key=True),
    # Ours in ``stats``; a heartbeat of Chicory's own worker in ``heartbeat_json`` (0005).
    Column("stats", JsonDocument, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("heartbeat_json", LongText, nullable=True),
    Index("ix_chicory_worker_heartbeats_expires_at", "expires_at"),
    mysql_charset="utf8mb4",
)

"""Task results and worker heartbeats, or Chicory 0.1.0's own two tables adopted in place.

On a database that Chicory's own backend wrote, its tables are kept with every row and
only given our columns (chicory_backends/sql/adopt.py says how and why).

Offline (``--sql``) there is no database to look at: ``-x adopt=chicory`` writes out the
adoption's steps instead of the CREATE TABLEs.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context as alembic_context
from alembic import op

from chicory_backends.sql.adopt import (
    CHICORY_RESULT_COLUMN,
    RESULTS,
    adopt_chicory_tables,
    inspect_layout,
    restore_chicory_layout,
)
from chicory_backends.sql.schema import IdString, JsonDocument, LongText, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().as_sql:
        if alembic_context.get_x_argument(as_dictionary=True).get("adopt") == "chicory":
            adopt_chicory_tables(op, None)
        else:
            _create_tables()
        return
    layout = inspect_layout(op.get_bind())
    if CHICORY_RESULT_COLUMN in layout.tables.get(RESULTS, set()):
        adopt_chicory_tables(op, layout)
    elif not layout.tables:
        _create_tables()
    else:  # ours, left by a migration that stopped before it was recorded
        _create_missing(set(layout.tables), layout.indexes)


def _create_missing(tables: set[str], indexes: set[str]) -> None:
    """A rerun after a migration died between its DDL statements (MariaDB and SQLite
    commit each one): only what is still missing."""
    if RESULTS not in tables or "chicory_worker_heartbeats" not in tables:
        raise RuntimeError(
            f"found only some of our tables ({', '.join(sorted(tables))}): "
            "drop them, or restore the database, then run the upgrade again"
        )
    for name, table, columns in _INDEXES:
        if name not in indexes:
            op.create_index(name, table, columns)


_INDEXES = (
    ("ix_chicory_task_results_updated_at", RESULTS, ["updated_at"]),
    ("ix_chicory_task_results_expires_at", RESULTS, ["expires_at"]),
    ("ix_chicory_worker_heartbeats_expires_at", "chicory_worker_heartbeats", ["expires_at"]),
)


def _create_tables() -> None:
    op.create_table(
        "chicory_task_results",
        sa.Column("task_id", IdString(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result", JsonDocument, nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("traceback", LongText, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "chicory_worker_heartbeats",
        sa.Column("worker_id", IdString(), primary_key=True),
        sa.Column("stats", JsonDocument, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        mysql_charset="utf8mb4",
    )
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    if not op.get_context().as_sql and inspect_layout(op.get_bind()).adopted:
        restore_chicory_layout(op)  # Chicory's own layout, holding every result
        return
    op.drop_table("chicory_worker_heartbeats")
    op.drop_table("chicory_task_results")

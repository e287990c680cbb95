"""Task history: who ran each task, when, how often (see chicory_backends.types.TaskRecord).

New nullable columns, ``attempts`` with a server default so existing rows read as 0
("no attempt recorded"), and three indexes for the keyset pages of ``list_tasks``. Every
dialect; the downgrade drops exactly what the upgrade added.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chicory_backends.sql.adopt import inspect_layout
from chicory_backends.sql.schema import IdString, JsonDocument, UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "chicory_task_results"
INDEXES = {
    "ix_chicory_task_results_created_at": ["created_at", "task_id"],
    "ix_chicory_task_results_name_created_at": ["name", "created_at", "task_id"],
    "ix_chicory_task_results_state_created_at": ["state", "created_at", "task_id"],
}


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("name", IdString(), nullable=True),
        sa.Column("queue", IdString(), nullable=True),
        sa.Column("worker_id", IdString(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("enqueued_at", UtcDateTime, nullable=True),
        sa.Column("started_at", UtcDateTime, nullable=True),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        sa.Column("args", JsonDocument, nullable=True),
    ]


def upgrade() -> None:
    # batch_alter_table: one ALTER where the dialect can, a table copy on SQLite only when
    # it must (adding nullable columns and indexes needs none). Online, only what is still
    # missing: a rerun after a migration that died between two DDL statements (MariaDB and
    # SQLite commit each one) finishes it.
    layout = None if op.get_context().as_sql else inspect_layout(op.get_bind())
    present = layout.tables.get(TABLE, set()) if layout else set()
    with op.batch_alter_table(TABLE) as batch:
        for column in _columns():
            if column.name not in present:
                batch.add_column(column)
    for name, columns in INDEXES.items():
        if layout is None or name not in layout.indexes:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        for column in reversed(_columns()):
            # SQL Server refuses to drop a column while its DEFAULT constraint stands.
            extra = {"mssql_drop_default": True} if column.server_default is not None else {}
            batch.drop_column(column.name, **extra)

"""Task results and worker heartbeats.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chicory_backends.sql.schema import IdString, JsonDocument, LongText, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
    op.create_index("ix_chicory_task_results_updated_at", "chicory_task_results", ["updated_at"])
    op.create_index("ix_chicory_task_results_expires_at", "chicory_task_results", ["expires_at"])
    op.create_table(
        "chicory_worker_heartbeats",
        sa.Column("worker_id", IdString(), primary_key=True),
        sa.Column("stats", JsonDocument, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_index(
        "ix_chicory_worker_heartbeats_expires_at", "chicory_worker_heartbeats", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("chicory_worker_heartbeats")
    op.drop_table("chicory_task_results")

"""Chicory 0.1.0's own columns in our tables: ``result_json`` and ``heartbeat_json``.

A database adopted from Chicory's backend (revision 0001) already has them, and keeps
them: Chicory's workers and clients read and write them during a rolling switch, and our
backend reads a row from ``result_json`` while it is set (sql/adopt.py). Here every
other database gets them too, so that one schema serves both and ``alembic check``
agrees everywhere. ``stats`` becomes nullable: a heartbeat that Chicory's own worker
writes fills ``heartbeat_json`` only. Nullable columns: a catalogue change, no rewrite.

The downgrade on an adopted database keeps them (they are Chicory's; the downgrade of
0001 gives its whole layout back); elsewhere it drops them again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chicory_backends.sql.adopt import (
    CHICORY_HEARTBEAT_COLUMN,
    CHICORY_RESULT_COLUMN,
    HEARTBEATS,
    RESULTS,
    StoreLayout,
    inspect_layout,
)
from chicory_backends.sql.schema import IdString, JsonDocument, LongText, UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _layout() -> StoreLayout | None:
    return None if op.get_context().as_sql else inspect_layout(op.get_bind())


def _heartbeats_at_0004() -> sa.Table:
    """The heartbeats table as revisions 0001-0004 left it: SQLite's batch copy needs it
    offline (``--sql``), where it cannot reflect the table."""
    return sa.Table(
        HEARTBEATS,
        sa.MetaData(),
        sa.Column("worker_id", IdString(), primary_key=True),
        sa.Column("stats", JsonDocument, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Index("ix_chicory_worker_heartbeats_expires_at", "expires_at"),
    )


def upgrade() -> None:
    layout = _layout()
    if layout is None or CHICORY_RESULT_COLUMN not in layout.tables.get(RESULTS, set()):
        op.add_column(RESULTS, sa.Column(CHICORY_RESULT_COLUMN, LongText, nullable=True))
    if layout is None or CHICORY_HEARTBEAT_COLUMN not in layout.tables.get(HEARTBEATS, set()):
        with op.batch_alter_table(HEARTBEATS, copy_from=_heartbeats_at_0004()) as batch:
            batch.add_column(sa.Column(CHICORY_HEARTBEAT_COLUMN, LongText, nullable=True))
            batch.alter_column("stats", existing_type=JsonDocument, nullable=True)


def downgrade() -> None:
    layout = _layout()
    if layout is not None and layout.adopted:
        return
    op.drop_column(RESULTS, CHICORY_RESULT_COLUMN)
    with op.batch_alter_table(HEARTBEATS) as batch:
        batch.drop_column(CHICORY_HEARTBEAT_COLUMN)
        batch.alter_column("stats", existing_type=JsonDocument, nullable=False)

"""PostgreSQL: a task's value as TEXT instead of JSONB.

The value is JSON text that our codec made and checked before any write; JSONB parsed it
again on every write and printed it again on every read, about 40 ms of server time per
MB (``make bench-sizes``: raw asyncpg inserting 1 MB into JSONB 32-46 ms, into TEXT 6 ms),
and nothing queries inside a stored result. Other dialects keep their column (MySQL's
JSON, text elsewhere): there this revision does nothing.

The change rewrites the table once (``ALTER COLUMN ... TYPE text``, writes wait for it):
on a table adopted from Chicory's backend (0001) the column is created as TEXT already and
nothing is rewritten. The downgrade turns the text back into JSONB (every stored value is
JSON).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "chicory_task_results"


def _result_type() -> str | None:
    """The column's type name online (None offline, where every step is written out)."""
    if op.get_context().as_sql:
        return None
    for column in sa.inspect(op.get_bind()).get_columns(TABLE):
        if column["name"] == "result":
            return type(column["type"]).__name__.upper()
    return None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    if _result_type() in ("TEXT",):
        return  # adopted from Chicory's tables: created as TEXT
    op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN result TYPE text USING result::text")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN result TYPE jsonb USING result::jsonb")

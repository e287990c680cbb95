"""PostgreSQL: NOTIFY waiting clients when a task's result becomes terminal.

A trigger sends ``pg_notify('chicory_results', task_id)`` in the same transaction that
stores a SUCCESS, FAILURE or DEAD_LETTERED row, so a waiter listening on that channel is
woken exactly when the finished result is readable (see chicory_backends/sql/notify.py).
Other dialects have no LISTEN/NOTIFY and keep polling: there this revision does nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here rather than imported: a migration must mean the same thing forever.
_TERMINAL = "'SUCCESS', 'FAILURE', 'DEAD_LETTERED'"


def _is_postgresql() -> bool:
    # get_context() works offline (--sql) too, where there is no bind.
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _is_postgresql():
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION chicory_notify_terminal_result() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('chicory_results', NEW.task_id);
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER chicory_task_results_notify
        AFTER INSERT OR UPDATE ON chicory_task_results
        FOR EACH ROW
        WHEN (NEW.state IN ({_TERMINAL}))
        EXECUTE FUNCTION chicory_notify_terminal_result()
        """
    )


def downgrade() -> None:
    if not _is_postgresql():
        return
    op.execute("DROP TRIGGER IF EXISTS chicory_task_results_notify ON chicory_task_results")
    op.execute("DROP FUNCTION IF EXISTS chicory_notify_terminal_result()")

"""PostgreSQL: NOTIFY a terminal result only when some client is waiting for it.

0002 notified on every terminal write. PostgreSQL serialises the commits of notifying
transactions (PreCommit_Notify holds a database-wide lock through the commit flush), so
concurrent stores could no longer share a WAL flush. Waiting clients are rare compared
with stores: now a waiting backend registers the task ids it waits for in the UNLOGGED
table ``chicory_result_waiters`` and the trigger notifies only when a registration exists.

The race between "the writer decided not to notify" and "the waiter registered" is closed
with a per-task advisory lock (class 1128810819, key ``hashtext(task_id)``):

- the trigger takes it SHARED, then checks the table (a fresh READ COMMITTED snapshot per
  query), then its transaction commits and only after that (once the row is visible)
  releases the lock;
- the waiter registers (committed), then runs ``chicory_await_result_writers``, which takes
  and drops the lock EXCLUSIVELY for each id, then reads the result.

A writer whose check missed the registration took its lock before the registration
committed, so the waiter's exclusive acquisition waits for that writer's commit and the
waiter's read sees its row; any later check sees the registration and notifies. The locks
are taken one id at a time, each inside a subtransaction that is rolled back at once (which
releases a transaction-level advisory lock): the waiter never holds one lock while waiting
for another, so it cannot deadlock with a writer of many rows, and a cancelled statement
leaves nothing held. See chicory_backends/sql/notify.py for the client side.

Other dialects have no LISTEN/NOTIFY and keep polling: there this revision does nothing.
The table is PostgreSQL-only and not in schema.py's metadata (migrations/env.py leaves it
out of `alembic check`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here rather than imported: a migration must mean the same thing forever.
_LOCK_CLASS = 1128810819  # 'CHIC'; the two-int advisory key space, apart from the bigint one


def _is_postgresql() -> bool:
    # get_context() works offline (--sql) too, where there is no bind.
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _is_postgresql():
        return
    op.execute(
        """
        CREATE UNLOGGED TABLE chicory_result_waiters (
            task_id VARCHAR(255) NOT NULL,
            waiter UUID NOT NULL,
            registered_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
            PRIMARY KEY (task_id, waiter)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_chicory_result_waiters_registered_at "
        "ON chicory_result_waiters (registered_at)"
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION chicory_notify_terminal_result() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Held until this transaction has committed (and its row is visible).
            PERFORM pg_advisory_xact_lock_shared({_LOCK_CLASS}, hashtext(NEW.task_id));
            IF EXISTS (SELECT 1 FROM chicory_result_waiters WHERE task_id = NEW.task_id) THEN
                PERFORM pg_notify('chicory_results', NEW.task_id);
            END IF;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION chicory_await_result_writers(task_ids text[])
        RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE
            id text;
            n integer := 0;
        BEGIN
            FOREACH id IN ARRAY task_ids LOOP
                BEGIN
                    PERFORM pg_advisory_xact_lock({_LOCK_CLASS}, hashtext(id));
                    -- Roll the subtransaction back: that releases the lock right away.
                    RAISE SQLSTATE 'CH001';
                EXCEPTION WHEN SQLSTATE 'CH001' THEN
                    n := n + 1;
                END;
            END LOOP;
            RETURN n;
        END;
        $$
        """
    )


def downgrade() -> None:
    if not _is_postgresql():
        return
    op.execute("DROP FUNCTION IF EXISTS chicory_await_result_writers(text[])")
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
    op.execute("DROP TABLE IF EXISTS chicory_result_waiters")

"""Taking over a database that Chicory 0.1.0's own ``DatabaseBackend`` wrote, and giving it back.

Chicory's backend creates tables with our names but its own columns::

    chicory_task_results(task_id, state, result_json, created_at, updated_at)
    chicory_worker_heartbeats(worker_id, heartbeat_json, expires_at, updated_at)

``result_json`` holds the JSON of Chicory's ``TaskResult`` (chicory_format.py).

**The design: in place, with a lazy read of Chicory's column.** Adoption (revision 0001,
when it finds these tables) keeps the tables and every row where they are and only adds
our columns; ``result_json`` and ``heartbeat_json`` stay, as columns of our schema
(revision 0005 adds them to databases that never held Chicory's). A row whose
``result_json`` is set is read from it (its ``state`` column stays the state), a row
without from our columns; every ``store_result`` of ours clears ``result_json`` (or, with
``write_chicory_format``, writes it afresh). The trade-off, against renaming Chicory's
tables aside and copying their rows into new ones:

- no row is copied or rewritten, so adoption takes the time of its DDL, whatever the row
  count: adding nullable columns is a catalogue change on PostgreSQL, MariaDB and SQLite;
  only MySQL/MariaDB rewrite the table once (timestamps to microseconds, byte-exact ids),
  which MariaDB does with the table locked for writes for the length of a copy;
- Chicory's own workers and clients keep working on the same table during a rolling
  switch: they read and write ``result_json``, which we read first;
- the price: a read of an adopted row decodes Chicory's document, a page of
  ``list_tasks`` carries ``result_json`` to show an adopted row's error, and adopted rows
  have no history (name, attempts, start and finish times are unknown; created_at and
  updated_at are Chicory's).

Every step checks before it acts, so a migration killed halfway (a SIGKILL between two
DDL statements on MariaDB or SQLite, which commit each one) is finished by running the
same command again; on PostgreSQL the DDL is transactional and nothing is half-done.
The downgrade below 0001 on an adopted database gives Chicory's layout back: every row
that has no ``result_json`` (ours, written since) gets one, in batches, then our columns
and indexes go and Chicory's indexes return. Databases that never held Chicory's tables
are recorded as such, and there the downgrade drops our tables as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from chicory_backends.chicory_format import encode_chicory_result

RESULTS = "chicory_task_results"
HEARTBEATS = "chicory_worker_heartbeats"
# One row, present exactly when our tables were made from Chicory's (never in
# schema.metadata: migrations/env.py leaves it out of `alembic check`).
ADOPTION_TABLE = "chicory_adoption"
CHICORY_RESULT_COLUMN = "result_json"
CHICORY_HEARTBEAT_COLUMN = "heartbeat_json"
# Chicory's indexes that ours replace: ``ix_chicory_task_results_created_at`` is also the
# name of our (created_at, task_id) index (revision 0004); ours on state starts with it.
CHICORY_ONLY_INDEXES = {
    RESULTS: {
        "ix_chicory_task_results_created_at": ["created_at"],
        "ix_chicory_task_results_state": ["state"],
    },
    HEARTBEATS: {"ix_chicory_worker_heartbeats_updated_at": ["updated_at"]},
}
RESTORE_BATCH_SIZE = 5000


@dataclass(frozen=True)
class StoreLayout:
    """What a database holds, as far as our tables go (``inspect_layout``)."""

    tables: dict[str, set[str]] = field(default_factory=dict)  # table -> its columns
    indexes: set[str] = field(default_factory=set)  # the names of our tables' indexes
    adopted: bool = False  # the adoption marker is there

    @property
    def has_chicory_tables(self) -> bool:
        """Chicory 0.1.0's own results table, not yet (or not fully) adopted."""
        columns = self.tables.get(RESULTS, set())
        return CHICORY_RESULT_COLUMN in columns and "result" not in columns

    def missing_columns(self, expected: dict[str, set[str]]) -> dict[str, set[str]]:
        """Per table of ``expected``, the columns this database lacks (all of them when
        the table is missing)."""
        return {
            table: columns - self.tables.get(table, set())
            for table, columns in expected.items()
            if columns - self.tables.get(table, set())
        }


def inspect_layout(connection: Connection) -> StoreLayout:
    """Read our tables' columns and the adoption marker (a few catalogue queries)."""
    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names())
    tables = {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in (RESULTS, HEARTBEATS)
        if table in names
    }
    indexes = {str(index["name"]) for table in tables for index in inspector.get_indexes(table)}
    return StoreLayout(tables=tables, indexes=indexes, adopted=ADOPTION_TABLE in names)


def count_rows(connection: Connection, layout: StoreLayout) -> dict[str, int]:
    """Rows per table of ours that exists (an exact count: a full scan of an index)."""
    return {
        table: connection.execute(
            sa.select(sa.func.count()).select_from(sa.table(table))
        ).scalar_one()
        for table in layout.tables
    }


# -- the upgrade: Chicory's tables become ours -----------------------------------------


def adopt_chicory_tables(op: Any, layout: StoreLayout | None) -> None:
    """Revision 0001's upgrade on a database holding Chicory's tables: our columns (all of
    the head layout's at once, so that later revisions find them there), our indexes,
    Chicory's indexes that ours replace dropped, the adoption recorded. ``layout`` is None
    offline (``--sql``), where every step is written out; online each step runs only if
    it is still to do, so a rerun after a kill finishes the work.

    Nothing here blocks Chicory's own workers for longer than a catalogue change: no
    column type changes (they would rewrite the table), indexes built without a write
    lock (PostgreSQL CONCURRENTLY outside the migration's transaction, MySQL/MariaDB
    LOCK=NONE), and on MySQL/MariaDB one ALTER for the columns and one for the indexes
    (each DDL statement can make a transaction of Chicory's, a SELECT then an UPDATE,
    fail with a deadlock error, so there are as few as can be).
    """
    from chicory_backends.sql.schema import task_results

    dialect = op.get_context().dialect.name
    chicory_only = {name for names in CHICORY_ONLY_INDEXES.values() for name in names}
    present = layout.tables.get(RESULTS, set()) if layout else set(CHICORY_RESULTS_COLUMNS)
    indexes = layout.indexes if layout else chicory_only | {"ix_chicory_task_results_updated_at"}
    columns = [column for column in task_results.columns if column.name not in present]
    ours = indexes - chicory_only
    new_indexes = [index for index in task_results.indexes if index.name not in ours]
    if dialect == "postgresql" and layout is not None:
        _drop_invalid_indexes(op)
    if dialect in ("mysql", "mariadb"):
        _adopt_mysql(op, columns, new_indexes, indexes)
    else:
        for table, chicory_indexes in CHICORY_ONLY_INDEXES.items():
            for name in chicory_indexes:
                if name in indexes:
                    op.drop_index(name, table_name=table)
        for column in columns:
            op.add_column(RESULTS, _detached(column))
        _heartbeats_nullable(op, layout)
        _create_indexes(op, new_indexes, concurrently=dialect == "postgresql")
    if layout is None or not layout.adopted:
        # Last: the marker says the steps above are all done.
        marker = op.create_table(
            ADOPTION_TABLE, sa.Column("source", sa.String(64), primary_key=True)
        )
        op.bulk_insert(marker, [{"source": "chicory 0.1.0"}])


def _detached(column: sa.Column[Any]) -> sa.Column[Any]:
    """A column of schema.py's table as a new one, for ``op.add_column``."""
    return sa.Column(
        column.name, column.type, nullable=column.nullable, server_default=column.server_default
    )


# The columns of Chicory 0.1.0's results table (chicory/backend/models.py).
CHICORY_RESULTS_COLUMNS = ("task_id", "state", CHICORY_RESULT_COLUMN, "created_at", "updated_at")


def _heartbeats_nullable(op: Any, layout: StoreLayout | None) -> None:
    """Our heartbeats fill ``stats`` only: Chicory's ``heartbeat_json`` becomes nullable
    (on SQLite a copy of the heartbeats table, a few rows)."""
    from chicory_backends.sql.schema import JsonDocument

    if layout is not None and "stats" in layout.tables.get(HEARTBEATS, set()):
        return
    if layout is not None and op.get_context().dialect.name == "sqlite":
        # What a batch copy killed halfway leaves behind (SQLite rolls the copy back, not
        # the CREATE of its temporary table); the table itself is intact.
        op.execute(f"DROP TABLE IF EXISTS _alembic_tmp_{HEARTBEATS}")
    with op.batch_alter_table(HEARTBEATS, copy_from=_chicory_heartbeats()) as batch:
        batch.add_column(sa.Column("stats", JsonDocument, nullable=True))
        batch.alter_column(CHICORY_HEARTBEAT_COLUMN, existing_type=sa.Text(), nullable=True)


def _create_indexes(op: Any, indexes: list[sa.Index], *, concurrently: bool) -> None:
    """Our indexes on the adopted table. PostgreSQL builds them CONCURRENTLY, which cannot
    run inside a transaction: the migration's transaction is committed first (the
    columns above are then in place) and each build runs on its own."""
    if not concurrently:
        for index in indexes:
            op.create_index(index.name, RESULTS, [column.name for column in index.columns])
        return
    if indexes:
        with op.get_context().autocommit_block():
            for index in indexes:
                op.create_index(
                    index.name,
                    RESULTS,
                    [column.name for column in index.columns],
                    postgresql_concurrently=True,
                )


def _drop_invalid_indexes(op: Any) -> None:
    """A CONCURRENTLY build that was killed leaves an index marked invalid under its name;
    drop it, so that the rerun builds it again."""
    found = op.get_bind().execute(
        sa.text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_class t ON t.oid = i.indrelid WHERE NOT i.indisvalid AND t.relname = :t"
        ),
        {"t": RESULTS},
    )
    invalid = list(found.scalars())
    if invalid:
        with op.get_context().autocommit_block():
            for name in invalid:
                op.drop_index(name, table_name=RESULTS, postgresql_concurrently=True)


def _chicory_heartbeats() -> sa.Table:
    """Chicory 0.1.0's heartbeats table less the index the adoption drops first, for a
    SQLite batch copy that cannot reflect it (offline, ``--sql``)."""
    return sa.Table(
        HEARTBEATS,
        sa.MetaData(),
        sa.Column("worker_id", sa.String(255), primary_key=True),
        sa.Column(CHICORY_HEARTBEAT_COLUMN, sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_chicory_worker_heartbeats_expires_at", "expires_at"),
    )


def _adopt_mysql(
    op: Any, columns: list[sa.Column[Any]], indexes: list[sa.Index], present: set[str]
) -> None:
    """Two ALTERs on the results table, neither of which copies it or locks out writes:
    the columns (LOCK=NONE: MariaDB adds them in place or refuses, never copying), then
    Chicory's two indexes out and ours in. Chicory's column types stay (DATETIME to the
    second, TEXT documents of at most 64 KB, its id collation): changing any of them
    rewrites the table with writes locked out (MariaDB 10.11 has no online copy)."""
    dialect = op.get_context().dialect
    if columns:
        added = ", ".join(
            f"ADD COLUMN {sa.schema.CreateColumn(column).compile(dialect=dialect)}"
            for column in columns
        )
        _alter_between_writes(op, RESULTS, f"{added}, LOCK=NONE")
    changes = [f"DROP INDEX {name}" for name in CHICORY_ONLY_INDEXES[RESULTS] if name in present]
    changes += [
        f"ADD INDEX {index.name} ({', '.join(column.name for column in index.columns)})"
        for index in indexes
    ]
    if changes:
        _alter_between_writes(op, RESULTS, f"{', '.join(changes)}, ALGORITHM=INPLACE, LOCK=NONE")
    beats = [f"DROP INDEX {name}" for name in CHICORY_ONLY_INDEXES[HEARTBEATS] if name in present]
    if "stats" not in _present_columns(op, HEARTBEATS):
        beats += ["ADD COLUMN stats JSON NULL", "MODIFY heartbeat_json TEXT NULL"]
    if beats:
        _alter_between_writes(op, HEARTBEATS, ", ".join(beats))


# How long the adoption keeps trying to find its table between two of Chicory's writes.
ALTER_PATIENCE = 300.0
_LOCK_WAIT_TIMEOUT = 1205  # MySQL/MariaDB: what NOWAIT answers when the table is in use


def _alter_between_writes(op: Any, table: str, changes: str) -> None:
    """``ALTER TABLE table changes`` on MariaDB without ever making a write fail.

    An ALTER waiting for its table's metadata lock, while a transaction of Chicory's own
    backend holds it (a SELECT, then an UPDATE), makes that transaction the victim of a
    deadlock (error 1213): Chicory's worker then records the task as failed. With NOWAIT
    the ALTER never waits: when the table is in use it fails at once (1205), nothing
    else does, and it is tried again a moment later, for up to ``ALTER_PATIENCE``
    seconds. (MySQL has no NOWAIT for ALTER: there it runs as it is. Offline, the script
    holds the plain statement.)"""
    context = op.get_context()
    mariadb = context.dialect.name == "mariadb" or getattr(context.dialect, "is_mariadb", False)
    if context.as_sql or not mariadb:
        op.execute(f"ALTER TABLE {table} {changes}")
        return
    deadline = time.monotonic() + ALTER_PATIENCE
    pause = 0.02
    while True:
        try:
            op.execute(f"ALTER TABLE {table} NOWAIT {changes}")
            return
        except DBAPIError as error:
            code = error.orig.args[0] if error.orig is not None and error.orig.args else None
            if code != _LOCK_WAIT_TIMEOUT or time.monotonic() > deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
        pause = min(pause * 2, 0.5)


def _present_columns(op: Any, table: str) -> set[str]:
    if op.get_context().as_sql:
        return set()
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}


# -- the downgrade: our tables become Chicory's again ------------------------------------


def restore_chicory_layout(op: Any) -> None:
    """Revision 0001's downgrade on an adopted database (runs after 0004's downgrade has
    dropped the history): every row gets Chicory's document, then our columns go and
    Chicory's indexes return. Online only: the documents are written by Python, in
    batches of ``RESTORE_BATCH_SIZE`` rows, each batch committed with the migration."""
    bind = op.get_bind()
    for _ in _fill_result_documents(bind):
        pass
    beats = sa.table(HEARTBEATS, sa.column("stats"), sa.column(CHICORY_HEARTBEAT_COLUMN))
    bind.execute(
        sa.update(beats)
        .where(beats.c[CHICORY_HEARTBEAT_COLUMN].is_(None))
        .values({CHICORY_HEARTBEAT_COLUMN: sa.cast(beats.c.stats, sa.Text())})
    )
    op.drop_index("ix_chicory_task_results_expires_at", table_name=RESULTS)
    with op.batch_alter_table(RESULTS) as batch:
        for name in ("result", "error", "traceback", "expires_at"):
            batch.drop_column(name)
    with op.batch_alter_table(HEARTBEATS) as batch:
        batch.drop_column("stats")
    for table, indexes in CHICORY_ONLY_INDEXES.items():
        for name, columns in indexes.items():
            op.create_index(name, table, columns)
    op.drop_table(ADOPTION_TABLE)


def _fill_result_documents(bind: Connection) -> Iterator[int]:
    """Give each row without ``result_json`` Chicory's document of what we stored; yields
    the rows done per batch. Walks the primary key, so each batch is one index range."""
    table = sa.table(
        RESULTS,
        sa.column("task_id"),
        sa.column("state"),
        sa.column("result"),
        sa.column("error"),
        sa.column("traceback"),
        sa.column(CHICORY_RESULT_COLUMN),
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(
                table.c.task_id,
                table.c.state,
                sa.cast(table.c.result, sa.Text()),
                table.c.error,
                table.c.traceback,
            )
            .where(table.c[CHICORY_RESULT_COLUMN].is_(None), table.c.task_id > after)
            .order_by(table.c.task_id)
            .limit(RESTORE_BATCH_SIZE)
        ).all()
        if not rows:
            return
        bind.execute(
            sa.update(table)
            .where(table.c.task_id == sa.bindparam("key"))
            .values({CHICORY_RESULT_COLUMN: sa.bindparam("document")}),
            [{"key": row[0], "document": encode_chicory_result(*row)} for row in rows],
        )
        after = rows[-1][0]
        yield len(rows)

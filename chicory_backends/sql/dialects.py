"""Every difference between SQL dialects, in one place.

Each backend operation is one statement; this module builds those statements once per
engine so that the hot path only binds parameters. PostgreSQL and SQLite share
``INSERT .. ON CONFLICT``, MySQL/MariaDB use ``ON DUPLICATE KEY UPDATE`` and SQL Server
``MERGE .. WITH (HOLDLOCK)``; the terminal-state guard is inside each of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Executable,
    Integer,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from chicory_backends.sql.schema import RESULT_WAITERS_TABLE, task_results, worker_heartbeats
from chicory_backends.sql.statements import NamedStatement
from chicory_backends.types import TERMINAL_STATES, WriteKind

TERMINAL = sorted(str(state) for state in TERMINAL_STATES)
# Inlined as SQL literals: a list of bound values would be an "expanding" parameter that
# SQLAlchemy re-renders into the statement on every execution.
_TERMINAL_LITERALS: list[ColumnElement[str]] = [literal_column(f"'{state}'") for state in TERMINAL]

# The history columns every write carries (history.write_fields), and how each merges
# with the stored row when the write lands. "fill": set once, the first non-null value
# stays (what was dispatched: name, queue, enqueue time, arguments); "keep": the new
# value unless it is null (who runs the latest attempt, since when); any other updated
# column is replaced. Whether it lands is the guard (``_may_write``): a terminal write
# always does and a non-terminal one only over a non-terminal row, and never a write of
# an older attempt; a refused write changes nothing. Where the upsert has a WHERE (ON
# CONFLICT, MERGE's WHEN MATCHED) the guard is that WHERE, once; MySQL's ON DUPLICATE
# KEY UPDATE has none, so there each assignment carries it.
HISTORY_COLUMNS = (
    "name", "queue", "worker_id", "attempts", "enqueued_at", "started_at", "finished_at", "args"
)  # fmt: skip
FILL_COLUMNS = frozenset({"name", "queue", "enqueued_at", "args"})
KEEP_COLUMNS = frozenset({"worker_id", "started_at"})

# ``result_json``: Chicory 0.1.0's document (sql/adopt.py), which a store of ours clears
# (or rewrites, with write_chicory_format) and a set_state of ours leaves as it is.
RESULT_INSERT_COLUMNS = (
    "task_id", "state", "result", "error", "traceback", "result_json", "created_at",
    "updated_at", "expires_at", *HISTORY_COLUMNS,
)  # fmt: skip
STATE_INSERT_COLUMNS = (
    "task_id", "state", "created_at", "updated_at", "expires_at", *HISTORY_COLUMNS
)  # fmt: skip
# Fills first, then the guarded columns, ``attempts`` and ``state`` last: MySQL applies
# assignments left to right and later ones see earlier results, and the guard reads both.
_GUARDED_LAST = ("attempts", "state")
RESULT_UPDATE_COLUMNS = (
    "name", "queue", "enqueued_at", "args", "result", "error", "traceback", "result_json",
    "updated_at", "expires_at", "worker_id", "started_at", "finished_at", *_GUARDED_LAST,
)  # fmt: skip
STATE_UPDATE_COLUMNS = tuple(
    name
    for name in RESULT_UPDATE_COLUMNS
    if name not in ("result", "error", "traceback", "result_json")
)
# heartbeat_json: Chicory's own clients read it (write_chicory_format); null otherwise.
HEARTBEAT_COLUMNS = ("worker_id", "stats", "updated_at", "expires_at", "heartbeat_json")
# Where Chicory's own backend made the table, result_json is TEXT: at most 64 KB on
# MySQL/MariaDB (sql/adopt.py keeps the column type, since changing it would rewrite the
# table). A longer document is not written there (write_chicory_format), as Chicory's own
# backend could not have written it either.
CHICORY_DOCUMENT_MAX_BYTES = {"mysql": 65_535, "mariadb": 65_535}
# A row Chicory's own backend wrote carries its document; reads decode it instead
# (sql/backend.py), so every read of a result selects it last.
CHICORY_DOCUMENT = "result_json"
# What a page of list_tasks carries; get_task adds the rest (TaskRecord). Both end in
# Chicory's document, the source of an adopted row's result, error and traceback.
_LISTED = (
    "task_id", "state", "name", "queue", "worker_id", "attempts", "enqueued_at",
    "started_at", "finished_at", "created_at", "updated_at", "error",
)  # fmt: skip
PAGE_COLUMNS = (*_LISTED, CHICORY_DOCUMENT)
RECORD_COLUMNS = (*_LISTED, "result", "traceback", "args", CHICORY_DOCUMENT)


@dataclass(frozen=True)
class Statements:
    """The named statements of one dialect (statements.py); parameters are named after
    the columns."""

    # Run on the driver fast path where the driver has one (compiled once at connect).
    HOT: ClassVar[tuple[str, ...]] = (
        "set_state", "store_result", "get_result", "get_results", "delete_result",
        "store_heartbeat", "get_heartbeat", "get_active_workers", "store_batch",
    )  # fmt: skip

    store_result: NamedStatement
    set_state: NamedStatement
    store_heartbeat: NamedStatement
    get_result: NamedStatement
    get_results: NamedStatement
    delete_result: NamedStatement
    get_heartbeat: NamedStatement
    get_active_workers: NamedStatement
    delete_expired_results: NamedStatement
    delete_old_results: NamedStatement
    delete_stale_heartbeats: NamedStatement
    # Maintenance reads (sql/maintenance.py): what cleanup would delete, results per state.
    count_reclaimable: NamedStatement
    result_stats: NamedStatement
    # PostgreSQL: a coalesced batch of set_state and store_result rows (distinct task
    # ids) as ONE statement of fixed shape, columns as arrays (``batch_arrays``). None
    # elsewhere, where a batch is one multi-row statement per kind.
    store_batch: NamedStatement | None
    # History (history.py): one task's whole record, and the summary's two reads.
    get_task: NamedStatement
    summary_counts: NamedStatement
    summary_runtimes: NamedStatement
    # A page of list_tasks for each shape of filters, built at first use (history_page).
    page_shapes: dict[tuple[bool, ...], NamedStatement]
    keyset: Callable[[], ColumnElement[bool]]
    # PostgreSQL only: the waiter registry behind LISTEN/NOTIFY wake-ups (revision 0003)
    # exists there alone; None elsewhere, where waiting polls. Each takes a batch of ids
    # as :task_ids and (but the fence) the registering backend's token as :waiter.
    delete_stale_waiters: NamedStatement | None = None
    register_waiters: NamedStatement | None = None
    unregister_waiters: NamedStatement | None = None
    await_writers: NamedStatement | None = None  # the fence: waits for writers of the ids

    def for_driver(self, dialect: Dialect) -> Statements:
        """These statements with the ``HOT`` ones compiled for the driver fast path."""
        compiled = {
            name: statement.compiled_for(dialect)
            for name in self.HOT
            if (statement := getattr(self, name)) is not None
        }
        return replace(self, **compiled)


def _may_write(old: Callable[[str], Any], new: Callable[[str], Any]) -> Any:
    """The guard: a terminal write always lands, a non-terminal one only over a
    non-terminal row; a write of an older attempt never lands."""
    return and_(
        or_(new("state").in_(_TERMINAL_LITERALS), old("state").not_in(_TERMINAL_LITERALS)),
        new("attempts") >= old("attempts"),
    )


def _merged(name: str, old: Callable[[str], Any], new: Callable[[str], Any]) -> Any:
    """The value column ``name`` takes when a write lands on a stored row."""
    if name in FILL_COLUMNS:
        return func.coalesce(old(name), new(name))
    if name in KEEP_COLUMNS:
        return func.coalesce(new(name), old(name))
    return new(name)


def _as_sql(expression: Any, dialect: Dialect) -> str:
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _aliased(alias: str) -> Callable[[str], Any]:
    return lambda column: literal_column(f"{alias}.{column}")


def _on_conflict_upsert(
    insert_fn: Any, table: Table, insert_cols: Sequence[str], update_cols: Sequence[str],
    guarded: bool,
) -> Executable:  # fmt: skip
    stmt = insert_fn(table).values({name: bindparam(name) for name in insert_cols})
    key = [col.name for col in table.primary_key.columns]
    old, new = table.c.__getitem__, stmt.excluded.__getitem__
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=key,
        set_={name: _merged(name, old, new) if guarded else new(name) for name in update_cols},
        where=_may_write(old, new) if guarded else None,
    )


def _mysql_upsert(
    table: Table, insert_cols: Sequence[str], update_cols: Sequence[str], guarded: bool
) -> Executable:
    stmt = mysql.insert(table).values({name: bindparam(name) for name in insert_cols})
    old, new = table.c.__getitem__, stmt.inserted.__getitem__
    may_write = _may_write(old, new) if guarded else None

    def assigned(name: str) -> Any:
        if may_write is None:
            return new(name)
        return case((may_write, _merged(name, old, new)), else_=old(name))

    return stmt.on_duplicate_key_update([(name, assigned(name)) for name in update_cols])


def _mariadb_upsert(
    table: Table, insert_cols: Sequence[str], update_cols: Sequence[str], guarded: bool
) -> Executable:
    """MySQL's upsert with the guard evaluated once per row instead of once per column.

    MariaDB sends and parses the statement's text on every call (aiomysql has no prepared
    statements), and the per-column guard makes it 3.5 times as long: measured, a quarter
    of the throughput of a store. Here the first assignment, a fill column that the guard
    does not read, keeps the guard in a session variable and the others read it; MariaDB
    applies the assignments of a row left to right, so each row sets it before its own
    assignments use it. (MySQL 8 deprecates variables set inside expressions: it keeps
    the per-column form.)
    """
    if not guarded:
        return _mysql_upsert(table, insert_cols, update_cols, guarded)
    dialect = mysql.dialect()
    old = _aliased(table.name)

    def new(column: str) -> Any:
        return literal_column(f"VALUES({column})")

    guard = _as_sql(_may_write(old, new), dialect)
    assert update_cols[0] in FILL_COLUMNS  # assigned first, before the guard's columns
    assignments = []
    for position, name in enumerate(update_cols):
        condition = f"(@chicory_may_write := {guard})" if position == 0 else "@chicory_may_write"
        value = _as_sql(_merged(name, old, new), dialect)
        assignments.append(f"{name} = IF({condition}, {value}, {table.name}.{name})")
    placeholders = ", ".join(f":{name}" for name in insert_cols)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(insert_cols)}) VALUES ({placeholders}) "  # noqa: S608
        f"ON DUPLICATE KEY UPDATE {', '.join(assignments)}"
    )
    return text(sql).bindparams(
        *(bindparam(name, type_=table.c[name].type) for name in insert_cols)
    )


def _mssql_merge(
    table: Table, insert_cols: Sequence[str], update_cols: Sequence[str], guarded: bool
) -> Executable:
    # SQLAlchemy has no MERGE construct; HOLDLOCK makes the match-or-insert atomic.
    key = [col.name for col in table.primary_key.columns]
    source = ", ".join(f":{name} AS {name}" for name in insert_cols)
    on = " AND ".join(f"t.{name} = s.{name}" for name in key)
    dialect = mssql.dialect()  # type: ignore[no-untyped-call]
    old, new = _aliased("t"), _aliased("s")
    guard = f" AND {_as_sql(_may_write(old, new), dialect)}" if guarded else ""
    sets = ", ".join(
        f"{name} = " + (_as_sql(_merged(name, old, new), dialect) if guarded else f"s.{name}")
        for name in update_cols
    )
    cols = ", ".join(insert_cols)
    values = ", ".join(f"s.{name}" for name in insert_cols)
    # Names and literals of our own schema only; every value is a bound parameter.
    sql = (
        f"MERGE {table.name} WITH (HOLDLOCK) AS t USING (SELECT {source}) AS s ON {on} "  # noqa: S608
        f"WHEN MATCHED{guard} THEN UPDATE SET {sets} "
        f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values});"
    )
    return text(sql).bindparams(
        *(bindparam(name, type_=table.c[name].type) for name in insert_cols)
    )


def _batched_delete(
    table: Table, column: Column[Any], batch_size: int, use_delete_limit: bool
) -> Executable:
    """Delete at most ``batch_size`` rows with ``column < :cutoff``, found through its index."""
    condition = column < bindparam("cutoff")
    if use_delete_limit:  # MySQL refuses LIMIT inside an IN subquery, but has DELETE .. LIMIT
        return delete(table).where(condition).with_dialect_options(mysql_limit=batch_size)
    key = next(iter(table.primary_key.columns))
    batch = select(key).where(condition).limit(batch_size)
    return delete(table).where(key.in_(batch.scalar_subquery()))


# Expired rows are invisible from the moment they expire, before any cleanup reclaims them.
_select_results = select(
    task_results.c.task_id,
    task_results.c.state,
    task_results.c.result,
    task_results.c.error,
    task_results.c.traceback,
    task_results.c[CHICORY_DOCUMENT],
).where(or_(task_results.c.expires_at.is_(None), task_results.c.expires_at > bindparam("now")))
# Ours in stats, a heartbeat of Chicory's own worker in heartbeat_json.
_select_heartbeats = select(
    worker_heartbeats.c.worker_id, worker_heartbeats.c.stats, worker_heartbeats.c.heartbeat_json
).where(worker_heartbeats.c.expires_at > bindparam("now"))


def _any_of_ids(dialect_name: str) -> ColumnElement[bool]:
    """``task_id`` in :task_ids; on PostgreSQL one array parameter (``= ANY($1)``), so that
    any number of ids shares one prepared statement instead of a new one per list length."""
    if dialect_name == "postgresql":
        ids = bindparam("task_ids", type_=postgresql.ARRAY(String))
        return task_results.c.task_id == any_(ids)
    return task_results.c.task_id.in_(bindparam("task_ids", expanding=True))


# -- history -------------------------------------------------------------------------

_not_expired = or_(
    task_results.c.expires_at.is_(None), task_results.c.expires_at > bindparam("now")
)
_in_window = and_(
    task_results.c.created_at >= bindparam("since"), task_results.c.created_at < bindparam("until")
)
# Each filter of list_tasks, in the order of a page shape's flags.
PAGE_FILTERS = ("state", "name", "worker_id")


def _readable(name: str) -> ColumnElement[Any]:
    """A column as the backend decodes it: JSON documents as their text on every dialect."""
    column = task_results.c[name]
    return type_coerce(column, Text()) if name in ("result", "args") else column


def _keyset(dialect_name: str) -> ColumnElement[bool]:
    """Rows after the cursor in page order (created_at, task_id descending). A row-value
    comparison walks the index as one range; SQL Server has none, so it is spelled out."""
    created, task_id = task_results.c.created_at, task_results.c.task_id
    after_created = bindparam("after_created_at", type_=created.type)
    after_id = bindparam("after_task_id", type_=task_id.type)
    if dialect_name == "mssql":
        return or_(created < after_created, and_(created == after_created, task_id < after_id))
    return tuple_(created, task_id) < tuple_(after_created, after_id)


def history_page(stmts: Statements, shape: tuple[bool, ...]) -> NamedStatement:
    """The list_tasks statement for one shape: which of PAGE_FILTERS are given, then
    whether a cursor is. Built once per shape; every value is a bound parameter."""
    statement = stmts.page_shapes.get(shape)
    if statement is None:
        conditions = [_not_expired, _in_window]
        conditions += [
            task_results.c[name] == bindparam(name)
            for name, given in zip(PAGE_FILTERS, shape, strict=False)
            if given
        ]
        if shape[len(PAGE_FILTERS)]:
            conditions.append(stmts.keyset())
        given = [name for name, on in zip((*PAGE_FILTERS, "after"), shape, strict=True) if on]
        statement = NamedStatement(
            f"list_tasks({', '.join(given)})",
            select(*(_readable(name) for name in PAGE_COLUMNS))
            .where(*conditions)
            .order_by(task_results.c.created_at.desc(), task_results.c.task_id.desc())
            .limit(bindparam("limit", type_=Integer())),
        )
        stmts.page_shapes[shape] = statement
    return statement


def _runtime_seconds(dialect_name: str) -> ColumnElement[Any]:
    """finished_at - started_at in seconds, as each dialect subtracts times."""
    started, finished = task_results.c.started_at, task_results.c.finished_at
    if dialect_name == "postgresql":
        return func.extract("epoch", finished - started)
    if dialect_name in ("mysql", "mariadb"):
        return func.timestampdiff(literal_column("MICROSECOND"), started, finished) / 1e6
    if dialect_name == "mssql":
        return func.datediff_big(literal_column("microsecond"), started, finished) / 1e6
    return (func.julianday(finished) - func.julianday(started)) * 86400.0  # SQLite


def _summary_runtimes(dialect_name: str) -> Executable:
    """Per name, the runtimes at the nearest ranks of p50 and p95 and the longest: the
    smallest rank r with r * 100 >= p * n (history.rank_of), in integers everywhere."""
    runtime = _runtime_seconds(dialect_name).label("runtime")
    name = task_results.c.name
    ranked = (
        select(
            name,
            runtime,
            func.row_number().over(partition_by=name, order_by=runtime).label("rank"),
            func.count().over(partition_by=name).label("n"),
        )
        .where(
            _not_expired,
            _in_window,
            task_results.c.started_at.is_not(None),
            task_results.c.finished_at.is_not(None),
        )
        .subquery("ranked")
    )
    rank, count = ranked.c["rank"], ranked.c["n"]

    def nearest(percent: int) -> ColumnElement[bool]:
        return and_(rank * 100 >= percent * count, (rank - 1) * 100 < percent * count)

    return select(ranked.c.name, rank, count, ranked.c.runtime).where(
        or_(nearest(50), nearest(95), rank == count)
    )


def statements_for(dialect: Dialect, cleanup_batch_size: int = 5000) -> Statements:
    name = dialect.name
    upsert: Callable[[Table, Sequence[str], Sequence[str], bool], Executable]
    if name in ("postgresql", "sqlite"):
        insert_fn = postgresql.insert if name == "postgresql" else sqlite.insert

        def upsert(
            table: Table, ins: Sequence[str], upd: Sequence[str], guarded: bool
        ) -> Executable:
            return _on_conflict_upsert(insert_fn, table, ins, upd, guarded)
    elif name in ("mysql", "mariadb"):
        mariadb = name == "mariadb" or getattr(dialect, "is_mariadb", False)
        upsert = _mariadb_upsert if mariadb else _mysql_upsert
    elif name == "mssql":
        upsert = _mssql_merge
    else:
        raise NotImplementedError(f"no statements for SQL dialect {name!r}")

    use_delete_limit = name in ("mysql", "mariadb")
    return _named(
        store_result=upsert(task_results, RESULT_INSERT_COLUMNS, RESULT_UPDATE_COLUMNS, True),
        set_state=upsert(task_results, STATE_INSERT_COLUMNS, STATE_UPDATE_COLUMNS, True),
        store_heartbeat=upsert(worker_heartbeats, HEARTBEAT_COLUMNS, HEARTBEAT_COLUMNS[1:], False),
        get_result=_select_results.where(task_results.c.task_id == bindparam("task_id")),
        get_results=_select_results.where(_any_of_ids(name)),
        delete_result=delete(task_results).where(task_results.c.task_id == bindparam("task_id")),
        get_heartbeat=_select_heartbeats.where(
            worker_heartbeats.c.worker_id == bindparam("worker_id")
        ),
        get_active_workers=_select_heartbeats.order_by(worker_heartbeats.c.worker_id),
        delete_expired_results=_batched_delete(
            task_results, task_results.c.expires_at, cleanup_batch_size, use_delete_limit
        ),
        delete_old_results=_batched_delete(
            task_results, task_results.c.updated_at, cleanup_batch_size, use_delete_limit
        ),
        delete_stale_heartbeats=_batched_delete(
            worker_heartbeats, worker_heartbeats.c.expires_at, cleanup_batch_size, use_delete_limit
        ),
        count_reclaimable=select(func.count())
        .select_from(task_results)
        .where(
            or_(
                task_results.c.expires_at < bindparam("now"),
                task_results.c.updated_at < bindparam("cutoff"),
            )
        ),
        store_batch=_postgres_store_batch() if name == "postgresql" else None,
        result_stats=select(
            task_results.c.state,
            func.count(),
            func.sum(case((task_results.c.expires_at < bindparam("now"), 1), else_=0)),
            func.min(task_results.c.updated_at),
            func.max(task_results.c.updated_at),
        )
        .group_by(task_results.c.state)
        .order_by(task_results.c.state),
        get_task=select(*(_readable(column) for column in RECORD_COLUMNS)).where(
            _not_expired, task_results.c.task_id == bindparam("task_id")
        ),
        summary_counts=select(task_results.c.name, task_results.c.state, func.count())
        .where(_not_expired, _in_window)
        .group_by(task_results.c.name, task_results.c.state),
        summary_runtimes=_summary_runtimes(name),
        page_shapes={},
        keyset=lambda: _keyset(name),
        **(_WAITER_REGISTRY if name == "postgresql" else {}),
    )


def _named(**fields: Any) -> Statements:
    """``Statements`` with every statement given its field's name."""
    named: dict[str, Any] = {
        field: NamedStatement(field, value) if isinstance(value, Executable) else value
        for field, value in fields.items()
    }
    return Statements(**named)


_WAITER_REGISTRY: dict[str, Executable] = {
    "delete_stale_waiters": text(
        f"DELETE FROM {RESULT_WAITERS_TABLE} WHERE registered_at < :cutoff"  # noqa: S608
    ),
    "register_waiters": text(
        f"INSERT INTO {RESULT_WAITERS_TABLE} (task_id, waiter, registered_at) "
        "SELECT unnest(CAST(:task_ids AS text[])), CAST(:waiter AS uuid), now() "
        "ON CONFLICT DO NOTHING"
    ),
    "unregister_waiters": text(
        f"DELETE FROM {RESULT_WAITERS_TABLE} "  # noqa: S608 - our table's name
        "WHERE waiter = CAST(:waiter AS uuid) AND task_id = ANY(CAST(:task_ids AS text[]))"
    ),
    "await_writers": text("SELECT chicory_await_result_writers(CAST(:task_ids AS text[]))"),
}


@dataclass(frozen=True)
class MigrationLock:
    """How one migrator at a time is ensured: server statements (each answers 1, or
    nothing, when it got the lock and 0 when it timed out), or, where the server has no
    such lock (SQLite), a lock file beside the database (sql/migrate.py)."""

    lock: str | None = None
    unlock: str | None = None
    lock_file: bool = False


_MIGRATION_LOCKS = {
    "postgresql": MigrationLock(
        "SELECT pg_advisory_lock(7241033310417)", "SELECT pg_advisory_unlock(7241033310417)"
    ),
    "mysql": MigrationLock(
        "SELECT GET_LOCK('chicory_backends_migrate', 600)",
        "SELECT RELEASE_LOCK('chicory_backends_migrate')",
    ),
    "mssql": MigrationLock(
        "DECLARE @granted int; EXEC @granted = sp_getapplock "
        "@Resource = 'chicory_backends_migrate', @LockMode = 'Exclusive', "
        "@LockOwner = 'Session', @LockTimeout = 600000; "
        "SELECT CASE WHEN @granted >= 0 THEN 1 ELSE 0 END",
        "EXEC sp_releaseapplock @Resource = 'chicory_backends_migrate', @LockOwner = 'Session'",
    ),
    "sqlite": MigrationLock(lock_file=True),
}


def migration_lock_for(dialect: Dialect) -> MigrationLock:
    return _MIGRATION_LOCKS.get(
        "mysql" if dialect.name == "mariadb" else dialect.name, MigrationLock()
    )


# -- PostgreSQL: both kinds of write in one statement ----------------------------------

_ARRAY_TYPES = {
    "task_id": "text[]", "state": "text[]", "result": "text[]", "error": "text[]",
    "traceback": "text[]", "result_json": "text[]", "created_at": "timestamptz[]",
    "updated_at": "timestamptz[]",
    "expires_at": "timestamptz[]", "name": "text[]", "queue": "text[]",
    "worker_id": "text[]", "attempts": "int[]", "enqueued_at": "timestamptz[]",
    "started_at": "timestamptz[]", "finished_at": "timestamptz[]", "args": "jsonb[]",
}  # fmt: skip
# Columns a batch does not send: the write's times follow from its state and updated_at
# (history.write_fields' rule, written here for the batch), which spares the client 8 of
# 29 arrays to encode at every batch (its CPU is the limit of a burst).
_TERMINAL_SQL = ", ".join(f"'{state}'" for state in TERMINAL)
_DERIVED_IN_BATCH = {
    "created_at": "u.updated_at",
    "enqueued_at": "CASE WHEN u.state = 'PENDING' THEN u.updated_at END",
    "started_at": "CASE WHEN u.state = 'STARTED' THEN u.updated_at END",
    "finished_at": f"CASE WHEN u.state IN ({_TERMINAL_SQL}) THEN u.updated_at END",
}
# set_state and store_result rows: the columns each sends as arrays.
BATCH_KINDS = {
    kind: tuple(col for col in columns if col not in _DERIVED_IN_BATCH)
    for kind, columns in (
        (WriteKind.STATE, STATE_INSERT_COLUMNS),
        (WriteKind.RESULT, RESULT_INSERT_COLUMNS),
    )
}


def _unnest_upsert(kind: WriteKind, insert_cols: Sequence[str], update_cols: Sequence[str]) -> str:
    table = task_results.name
    sent = BATCH_KINDS[kind]
    arrays = ", ".join(f"CAST(:{kind.value}_{col} AS {_ARRAY_TYPES[col]})" for col in sent)
    values = ", ".join(_DERIVED_IN_BATCH.get(col, f"u.{col}") for col in insert_cols)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    old, new = _aliased("t"), _aliased("excluded")
    return (
        f"INSERT INTO {table} AS t ({', '.join(insert_cols)}) "  # noqa: S608 - our schema
        f"SELECT {values} FROM unnest({arrays}) AS u({', '.join(sent)}) "
        "ON CONFLICT (task_id) DO UPDATE SET "
        + ", ".join(f"{col} = {_as_sql(_merged(col, old, new), dialect)}" for col in update_cols)
        + f" WHERE {_as_sql(_may_write(old, new), dialect)}"
    )


def _postgres_store_batch() -> Executable:
    """The set_state rows in a data-modifying CTE, the store_result rows in the main
    INSERT: one statement, one commit, one prepared statement for any batch size. Both
    merge as the single-row upserts do (``_merged``); a batch never holds one task id
    twice, so no row is touched twice."""
    return text(
        "WITH set_state AS ("
        + _unnest_upsert(WriteKind.STATE, STATE_INSERT_COLUMNS, STATE_UPDATE_COLUMNS)
        + " RETURNING 1) "
        + _unnest_upsert(WriteKind.RESULT, RESULT_INSERT_COLUMNS, RESULT_UPDATE_COLUMNS)
    )


def batch_arrays(rows: dict[WriteKind, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """``store_batch``'s parameters: per kind and column, the rows' values."""
    return {
        f"{kind.value}_{col}": [row[col] for row in rows.get(kind, ())]
        for kind, columns in BATCH_KINDS.items()
        for col in columns
    }

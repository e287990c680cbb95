"""A short tour on the embedded SQLite default: store, read, expire, clean up.

Runs as it stands (`python examples/demo.py`): auto_migrate creates the tables at
connect() on a new file. `make demo` migrates first, as a deploy would, with
`alembic upgrade head`; connect() then finds the schema at head and changes nothing.
"""

from __future__ import annotations

import asyncio

from chicory_backends import TaskResult, TaskState, create_backend
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.sql.backend import DatabaseBackend


async def main() -> None:
    # CHICORY_BACKEND_SQLITE_FILE_PATH picks the file (default chicory_results.db).
    config = SQLiteBackendConfig(result_ttl=1, auto_migrate=True)
    backend = create_backend("sqlite", config)
    assert isinstance(backend, DatabaseBackend)
    print(f"backend: {backend!r}")
    async with backend:
        await backend.set_state("demo-1", TaskState.STARTED)
        print("set_state   demo-1 -> STARTED")
        result = TaskResult(task_id="demo-1", state=TaskState.SUCCESS, result={"value": 42})
        await backend.store_result("demo-1", result)
        print("store_result demo-1 -> SUCCESS {'value': 42}")

        await backend.set_state("demo-1", TaskState.STARTED)  # a late redelivery
        read = await backend.get_result("demo-1")
        assert read is not None and read.state is TaskState.SUCCESS
        print(f"get_result  demo-1 -> {read.state.value} {read.result} (late STARTED ignored)")

        print("waiting 1.2 s for the 1 s result_ttl to pass ...")
        await asyncio.sleep(1.2)
        assert await backend.get_result("demo-1") is None
        print("get_result  demo-1 -> None (expired, row not yet reclaimed)")

        health = await backend.healthcheck()
        print(f"healthcheck -> connected={health.connected} latency={health.latency_ms} ms")

    # The cron path: a backend that was never connected cleans up on its own.
    deleted = await DatabaseBackend(config).cleanup_old_results(86400)
    print(f"cleanup_old_results -> {deleted} row(s) reclaimed")
    assert deleted == 1
    print("demo finished: stored, read, expired and cleaned results on SQLite")


if __name__ == "__main__":
    asyncio.run(main())

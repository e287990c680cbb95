"""Database backends: reclaim old and expired rows with cleanup_old_results.

    backend = DatabaseBackend(config)
    deleted = await backend.cleanup_old_results(older_than_seconds=86400)

It deletes in bounded batches through an index and works on a backend that was never
connected, so a cron line needs nothing else:

    # Cron: daily at 2 AM
    0 2 * * * python -c "import asyncio; from chicory_backends import create_backend; asyncio.run(create_backend('postgres').cleanup_old_results(86400))"
"""  # noqa: E501

from __future__ import annotations

import asyncio
import uuid

from _local import ensure_postgres_database, local_defaults

from chicory_backends import PostgresBackendConfig, TaskResult, TaskState
from chicory_backends.sql.backend import DatabaseBackend


async def main() -> None:
    local_defaults()
    await ensure_postgres_database()
    config = PostgresBackendConfig(result_ttl=1)  # reads CHICORY_BACKEND_POSTGRES_*
    backend = DatabaseBackend(config)
    await backend.connect()
    try:
        ids = [f"cleanup-demo-{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
        for task_id in ids:
            done = TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=len(task_id))
            await backend.store_result(task_id, done)
        print(f"stored {len(ids)} results with a 1 s TTL")
        await asyncio.sleep(1.2)
        print(f"readable after 1.2 s: {len(await backend.get_results(ids))} (expired)")
    finally:
        await backend.disconnect()

    # Clean up results older than 24 hours, and every expired one, on a fresh backend:
    # as a cron job would, without connecting first.
    deleted = await DatabaseBackend(config).cleanup_old_results(older_than_seconds=86400)
    print(f"cleanup: deleted {deleted} expired or old row(s)")
    assert deleted >= len(ids)


if __name__ == "__main__":
    asyncio.run(main())

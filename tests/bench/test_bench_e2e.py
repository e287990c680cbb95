"""The end-to-end benchmark's own code, run short, so that it cannot rot unnoticed.

``python -m bench e2e`` (part of ``make bench``) is only run now and then; here the same
code runs a few hundred tasks through a real ``chicory worker bench.worker_app:app`` on
the Redis broker, with no backend, with ours on PostgreSQL and with Chicory's own, and
checks what the report is made of: every result read back and right, every task executed
once, the session counts present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import e2e
from bench.env import Servers
from tests.support.bench_servers import bench_servers
from tests.support.services import (
    REDIS_HOST,
    REDIS_PORT,
    require,
    services_required,
)

pytestmark = pytest.mark.slow

TASKS = 300


@pytest.fixture
def servers() -> Servers:
    try:
        import typer  # noqa: F401  (the worker runs Chicory's own CLI)
    except ImportError:
        message = "typer is not installed: pip install 'chicory[cli]'"
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    found = bench_servers()
    require("Redis", REDIS_HOST, REDIS_PORT)
    url = found.postgres_url
    require("PostgreSQL", url.host or "127.0.0.1", url.port or 5432)
    return found


async def test_worker_end_to_end_postgres_and_no_backend(servers: Servers, tmp_path: Path) -> None:
    settings = e2e.Settings(
        tasks=TASKS, warmup=16, kinds=["postgres"], brokers=["redis"], timeout=60, stall=15
    )
    report = await e2e.run(settings, servers)

    by_role = {case["role"]: case for case in report["cases"]}
    assert set(by_role) == {"none", "ours", "tracked-worker", "tracked", "chicory"}
    for case in report["cases"]:
        (run,) = case["runs"]
        assert run["error"] is None, f"{case['label']}: {run['error']} {run.get('worker_log_tail')}"
        assert run["executions"] == TASKS  # the completion signal: each task once
        assert run["worker_concurrency"] == 32  # Chicory's CLI default, nothing passed
        assert run["tasks_per_s"] > 0 and run["executed_per_s"] >= run["tasks_per_s"]
    assert by_role["none"]["checked"] == 0  # nothing stored, nothing to read
    for role in ("ours", "tracked-worker", "tracked", "chicory"):
        run = by_role[role]["runs"][0]
        assert run["checked"] == TASKS and run["wrong"] == []
        assert isinstance(run["sessions"]["server"], int) and run["sessions"]["server"] >= 0
        assert run["sessions"]["backend_connects"] is not None
        assert run["startup_sessions"]["server"] >= 1  # the pools were opened then

    (ratio,) = report["ratios"]
    assert ratio["ours_vs_ceiling"] is not None and ratio["ours_vs_chicory"] is not None
    assert ratio["tracked_vs_ours"] is not None and ratio["tracked_worker_vs_ours"] is not None
    # PostgreSQL's own count: the worker's path adds no statement when tracked.
    commits = {role: by_role[role]["runs"][0]["commits_per_task"] for role in by_role}
    assert commits["ours"] is not None and commits["tracked-worker"] is not None
    text = e2e.write(report, tmp_path)
    assert "| Redis | PostgreSQL |" in text and (tmp_path / "e2e.json").exists()

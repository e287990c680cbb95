"""The adoption benchmark's own code, run tiny, so that it cannot rot unnoticed.

``python -m bench adopt`` (``make bench-adopt``) runs on 1,000,000 rows now and then; here
the same code seeds 2,000 rows with Chicory 0.1.0's own backend, keeps Chicory's writer
and readers running, adopts the tables with the real ``chicory-backends migrate`` CLI and
checks what the report is made of: the seed read back through Chicory, every revision's
progress line, the load measured in each phase, the sample and every live write read back
through our backend, the database dropped afterwards. Figures are not asserted (tiny
tables and a shared machine); that no call of Chicory's backend failed, is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import adopt
from bench.env import Servers
from chicory_backends.sql.migrate import revision_steps
from tests.support.bench_servers import bench_servers
from tests.support.services import (
    require,
)

pytestmark = pytest.mark.slow

ROWS = 2000


async def _database_exists(servers: Servers, name: str) -> bool:
    engine = create_async_engine(servers.postgres_url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            return found.first() is not None
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_adoption_under_chicory_load(kind: str, tmp_path: Path) -> None:
    servers = bench_servers()
    if kind == "postgres":
        url = servers.postgres_url
        require("PostgreSQL", url.host or "127.0.0.1", url.port or 5432)
    database = f"chicory_bench_adopt_{os.getpid()}"
    settings = adopt.Settings(
        kinds=[kind], rows=ROWS, idle=1.0, after=0.5, warmup=0.3, sample=30, database=database
    )
    report = await adopt.run(settings, servers)

    (section,) = report["sections"]
    assert "error" not in section, section.get("error")
    assert section["rows"] == ROWS
    assert section["seed_sample"] == 30 and section["seed_sample_wrong"] == []
    assert section["check"]["exit_code"] == 1  # `migrate --check`: an upgrade is due
    assert section["check"]["estimated_s"] is not None
    cli = section["cli"]
    assert cli["exit_code"] == 0, cli["stderr"][-5:]
    every_revision = [revision for revision, _doc in revision_steps()]
    assert [step["revision"] for step in cli["steps"]] == every_revision
    assert section["adoption_wall_s"] > 0 and section["rows_per_s"] > 0
    for phase in ("idle", "during", "after"):
        assert section["writes"][phase]["count"] > 0, phase
        assert section["reads"][phase]["count"] > 0, phase
    assert section["write_stall"]["gap_ms"] is not None
    assert section["errors"] == []  # Chicory's own writer and readers never failed
    assert section["missing_reads"] == 0
    after = section["after"]
    assert after["sample_equal"] == after["sample"] == 30
    assert after["live_written"] > 0 and after["live_wrong"] == 0
    assert after["heartbeats_seen"] == adopt.HEARTBEATS
    assert after["chicory_sample_wrong"] == []
    assert set(section["targets"]) == {"stall_le_1s", "p99_le_3x_idle", "rows_per_s_ge_100k"}
    if kind == "postgres":
        assert section["server"]["delta"]["xact_commit"] > 0
        assert section["server"]["sessions"]["samples"] > 0
        assert not await _database_exists(servers, database)  # dropped after the run

    text_ = adopt.write(report, tmp_path)
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    assert f"| {label} | 2,000 |" in text_
    assert (tmp_path / "adopt.json").exists() and (tmp_path / "adopt.md").exists()

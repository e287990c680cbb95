"""The result-size benchmark's own code, run tiny, so that it cannot rot unnoticed.

``python -m bench sizes`` (``make bench-sizes``) runs 100 B to 10 MB now and then; here
the same code runs 100 B and 10 KB, one round, on SQLite (a temporary file) and on Redis
(a redis-server of the bench's own when the binary is there, else the test server), and
checks the report has every row: each implementation's write and read figures at each
size and concurrency, the Redis server times and memory, the targets, the markdown
tables. Figures are not asserted (a shared machine); that nothing failed, is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import sizes
from bench.env import Servers
from tests.support.bench_servers import bench_servers
from tests.support.services import (
    REDIS_HOST,
    REDIS_PORT,
    require,
)

SIZES = [100, 10_000]
CONCURRENCY = [1, 32]


def _servers() -> Servers:
    return bench_servers(sizes.REDIS_DB, sizes.REDIS_CHICORY_DB)


def _settings(kind: str, redis_server: str = "private") -> sizes.Settings:
    return sizes.Settings(
        kinds=[kind],
        sizes=SIZES,
        concurrency=CONCURRENCY,
        rounds=1,
        duration=0.02,
        index_tasks=64,
        redis_server=redis_server,
    )


def _check_report(report: dict[str, Any], kind: str, out: Path, mode: str = "") -> None:
    (section,) = report["sections"]
    assert section["kind"] == kind
    assert section["errors"] == {}
    cells = {(c["size"], c["concurrency"], c["role"]): c for c in section["cells"]}
    expected = {(s, c, r) for s in SIZES for c in CONCURRENCY for r in sizes.ROLES}
    assert set(cells) == expected
    for key, cell in cells.items():
        assert cell["error"] is None, (key, cell["error"])
        for op in sizes.OPS:
            (phase,) = cell[op]  # one round
            assert phase["ops"] >= key[1]
            median = cell[f"{op}_median"]
            assert median["ms_per_op"] > 0 and median["ops_per_s"] > 0
            assert median["cpu_us_per_op"] is not None
            if kind == "redis":
                assert median["main"] is not None, (key, op)
                assert median["server_us_per_op"] > 0
                if mode == "private":  # no other client on the bench's own server
                    assert median["foreign_calls"] == 0
        if kind == "redis" and key[1] == 1:
            assert cell["memory_bytes"] > key[0]  # the result is in it
    if kind == "redis":
        assert section["index"]["bytes_per_task"] > 0
        # ours: one store script per write, two per task
        ours = cells[(100, 1, "ours")]["write_median"]
        assert ours["main"] in sizes.SCRIPT_COMMANDS

    targets = {(t["target"], t["size"], t["concurrency"]) for t in report["targets"]}
    want = sizes.TARGETS[kind]
    for size in SIZES:
        for concurrency in CONCURRENCY:
            for op in sizes.OPS:
                assert (f"{op} >= {want:g}x Chicory", size, concurrency) in targets
    assert all(t["status"] in ("met", "not met", "n/a") for t in report["targets"])

    text = sizes.write(report, out)
    assert (out / "sizes.md").read_text() == text
    assert (out / "sizes.json").stat().st_size > 0
    label = sizes.LABELS[kind]
    for size in SIZES:
        for concurrency in CONCURRENCY:
            row = f"| {label} | {sizes.size_label(size)} | {concurrency} |"
            rows = [line for line in text.splitlines() if line.startswith(row)]
            assert len(rows) == 2, row  # the write table and the read table
    assert "| fails |" not in text and "Not measured" not in text
    if kind == "redis":
        assert "## Redis: server time and memory" in text
        for size in SIZES:
            assert f"| {sizes.size_label(size)} | 1 | write |" in text


def test_the_result_is_realistic_json_of_exactly_the_size() -> None:
    for size in (100, 10_000, 123_456):
        value = sizes.payload(size)
        assert len(sizes.encode(value)) == size
        assert value["items"] and all(isinstance(r["price"], float) for r in value["items"])
    assert sizes.parse_size("10k") == 10_000 and sizes.parse_size("1MB") == 1_000_000


@pytest.mark.slow
@pytest.mark.sqlite
async def test_sizes_on_sqlite(tmp_path: Path) -> None:
    servers = _servers()
    report = await sizes.run(_settings("sqlite"), servers)
    _check_report(report, "sqlite", tmp_path)
    assert servers._sqlite_dir is None  # the bench's files are gone


@pytest.mark.slow
@pytest.mark.redis
async def test_sizes_on_redis(tmp_path: Path) -> None:
    if shutil.which("redis-server") is not None:
        mode = "private"
    else:
        require("Redis", REDIS_HOST, REDIS_PORT)
        mode = "shared"
    settings = _settings("redis", mode)
    report = await sizes.run(settings, _servers())
    _check_report(report, "redis", tmp_path, mode)
    if mode == "shared":  # the bench's keys are gone (on its own server, the server is)
        from redis.asyncio import Redis

        patterns = {
            sizes.REDIS_DB: [f"o{settings.tag}:*", f"r{settings.tag}:*"],
            sizes.REDIS_CHICORY_DB: [f"chicory:*:{settings.tag}c*"],
        }
        for db, matches in patterns.items():
            client = Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
            try:
                for match in matches:
                    assert [k async for k in client.scan_iter(match=match)] == []
            finally:
                await client.aclose()

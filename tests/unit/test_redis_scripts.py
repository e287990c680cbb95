"""The Redis backend's Lua scripts (package data) and its topologies, without a server.

Each .lua file documents its KEYS and ARGV at the top; the Python side builds them in
that order (scripts.py), and the rules written into store.lua equal the ones Python and
the SQL backends use. Only topology.py and connection.py tell the topologies apart.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from chicory_backends.config import RedisBackendConfig
from chicory_backends.errors import ConfigurationError
from chicory_backends.redis import scripts
from chicory_backends.redis.topology import Cluster, Sentinel, SingleNode, topology_for
from chicory_backends.sql.dialects import FILL_COLUMNS, KEEP_COLUMNS
from chicory_backends.types import TERMINAL_STATES, TaskState, WriteKind

PACKAGE = Path(scripts.__file__).parent
LUA = ("store.lua", "index.lua")


def header(text: str) -> list[str]:
    """The comment block a script starts with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def documented(text: str, section: str) -> list[int]:
    """The positions listed under ``-- KEYS`` or ``-- ARGV`` in the header."""
    positions, inside = [], False
    for line in header(text):
        if re.fullmatch(r"--\s*(KEYS|ARGV)\s*", line):
            inside = line.split()[-1] == section
        elif inside and (found := re.match(r"--\s+\[(\d+)\]\s+\S", line)):
            positions.append(int(found.group(1)))
    return positions


def used(text: str, section: str) -> set[int]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return {int(n) for n in re.findall(rf"\b{section}\[(\d+)\]", body)}


def lua_table(text: str, name: str) -> list[str]:
    """The strings of ``local ... name ... = {...}`` in a script (one-line tables)."""
    for line in text.splitlines():
        if line.startswith("local ") and name in line.split("=")[0]:
            names = [part.strip() for part in line.split("=")[0][6:].split(",")]
            tables = re.findall(r"\{[^{}]*\}", line.split("=", 1)[1])
            return re.findall(r'"([^"]+)"', tables[names.index(name)])
    raise AssertionError(f"no table {name}")


@pytest.mark.parametrize("name", LUA)
def test_each_script_is_package_data_documenting_its_keys_and_argv(name: str) -> None:
    text = resources.files("chicory_backends.redis").joinpath(name).read_text("utf-8")
    assert text == (PACKAGE / name).read_text("utf-8")
    assert header(text)[0].startswith(f"-- {name}:")
    for section in ("KEYS", "ARGV"):
        listed = documented(text, section)
        assert listed == list(range(1, len(listed) + 1)), (section, listed)
        assert used(text, section) <= set(listed), (section, used(text, section), listed)


def test_the_loaded_scripts_are_the_files() -> None:
    assert (PACKAGE / "store.lua").read_text("utf-8") == scripts.STORE_LUA
    assert (PACKAGE / "index.lua").read_text("utf-8") == scripts.INDEX_LUA


def test_store_lua_keeps_the_rules_python_and_sql_keep() -> None:
    text = scripts.STORE_LUA
    terminal = re.search(r"local terminal = \{(.*)\}", text)
    assert terminal is not None
    assert set(re.findall(r'\["([A-Z_]+)"\] = true', terminal.group(1))) == {
        state.value for state in TERMINAL_STATES
    }
    assert set(lua_table(text, "fill")) == FILL_COLUMNS | {"created_at"}
    assert set(lua_table(text, "keep")) == KEEP_COLUMNS
    assert lua_table(text, "by_result") == ["result", "error", "traceback"]
    assert f"ARGV[6] == '{WriteKind.RESULT.value}'" in text
    assert f"ARGV[9] == '{scripts.CHICORY_SHAPED}'" in text


def test_store_write_builds_argv_in_the_documented_order() -> None:
    write = scripts.store_write(
        key="p:result:t",
        state=TaskState.SUCCESS,
        document=b"{}",
        ttl="60",
        channel="p:done",
        task_id="t",
        kind=WriteKind.RESULT,
        score=123,
        history_size=10,
        shape=scripts.CHICORY_SHAPED,
    )
    assert len(write.args) == len(documented(scripts.STORE_LUA, "ARGV"))
    assert write.args == ["SUCCESS", b"{}", "60", "p:done", "t", "r", 123, 10, "c"]
    assert write.args[5] is WriteKind.RESULT
    assert write.entry == ("t", 123) and write.terminal
    unlisted = scripts.store_write(
        key="k", state=TaskState.STARTED, document=b"{}", ttl="0", channel="c", task_id="u",
        kind=WriteKind.STATE, score=1, history_size=0, shape=scripts.OURS,
    )  # fmt: skip
    assert unlisted.entry is None and not unlisted.terminal
    assert scripts.index_args(5, [write, unlisted, write]) == [5, "t", 123, "t", 123]


@pytest.mark.parametrize(
    ("fields", "kind", "mode"),
    [
        ({}, SingleNode, "redis"),
        ({"url": "redis://127.0.0.1:6379/2"}, SingleNode, "redis"),
        ({"sentinels": ["127.0.0.1:26379"]}, Sentinel, "redis-sentinel"),
        ({"cluster": True}, Cluster, "redis-cluster"),
        ({"cluster": True, "db": 0}, Cluster, "redis-cluster"),
    ],
)
def test_the_topology_is_chosen_once_from_the_config(
    fields: dict[str, object], kind: type, mode: str
) -> None:
    topology = topology_for(RedisBackendConfig(**fields))  # type: ignore[arg-type]
    assert type(topology) is kind and topology.mode == mode


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cluster": True, "sentinels": ["h:1"]}, "either cluster=True or sentinels"),
        ({"sentinels": ["h:1"], "url": "redis://h"}, "url and sentinels are exclusive"),
        ({"cluster": True, "db": 3}, "only database 0"),
        ({"cluster": True, "wait_replicas": 1}, "not supported on Redis Cluster"),
    ],
)
def test_what_a_topology_cannot_do_is_refused_at_construction(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        topology_for(RedisBackendConfig(**fields))  # type: ignore[arg-type]


def test_only_the_topology_tells_the_topologies_apart() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in {"topology.py", "connection.py"}:
            continue
        text = path.read_text("utf-8")
        assert "RedisCluster" not in text, path.name
        assert not re.search(r"[\"']redis-(cluster|sentinel)[\"']", text), path.name

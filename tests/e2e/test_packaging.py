"""The package as a user gets it: an sdist and a wheel that `twine check` accepts, the
wheel installed (not editable) into a new virtual environment outside the source tree,
and a deploy directory migrated and used with nothing but the installed commands."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chicory_backends.alembic_ini import PACKAGED_LOCATION
from chicory_backends.sql.schema import SCHEMA_REVISION
from tests.support.services import missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO_DONE = "demo finished: stored, read, expired and cleaned results on SQLite"


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel (the wheel built from the sdist, as `build` does)."""
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            missing(f"the packaging test needs {module}: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel and the SQLite extra; its bin directory."""
    home = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(home)], cwd=home)
    (wheel,) = dist.glob("*.whl")
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, f"{wheel}[sqlite]"], cwd=home)
    return home / "bin"


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    checked = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)], ROOT
    )
    assert checked.stdout.count("PASSED") == 2, checked.stdout
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "chicory_backends/_migrations/env.py" in names
    assert f"chicory_backends/_migrations/versions/{SCHEMA_REVISION}" in " ".join(names)
    # The Redis backend's Lua scripts, read as package data (redis/scripts.py).
    assert {"chicory_backends/redis/store.lua", "chicory_backends/redis/index.lua"} <= set(names)


def test_a_deploy_directory_with_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHICORY_BACKEND_", "PYTHON", "VIRTUAL_ENV"))
    }

    def step(*command: str) -> subprocess.CompletedProcess[str]:
        return run([str(venv / command[0]), *command[1:]], deploy, env, timeout=60)

    imported = step("python", "-c", "import chicory_backends; print(chicory_backends.__file__)")
    assert Path(imported.stdout.strip()).is_relative_to(venv.parent), imported.stdout

    ini = step("chicory-backends", "alembic-ini").stdout
    assert f"script_location = {PACKAGED_LOCATION}\n" in ini
    (deploy / "alembic.ini").write_text(ini)

    upgraded = step("alembic", "upgrade", "head")
    assert f"-> {SCHEMA_REVISION}" in upgraded.stderr
    database = deploy / "chicory_results.db"  # the default, from no settings at all
    assert revision(database) == SCHEMA_REVISION
    assert "No new upgrade operations detected" in step("alembic", "check").stdout

    step("alembic", "downgrade", "base")
    assert revision(database) is None
    offline = step("alembic", "upgrade", "head", "--sql").stdout
    assert "CREATE TABLE chicory_task_results" in offline
    assert "INSERT INTO chicory_alembic_version (version_num) VALUES ('0001')" in offline
    assert revision(database) is None  # offline: the database was not touched

    migrated = step("chicory-backends", "migrate").stdout
    assert f"schema upgraded from empty to {SCHEMA_REVISION} (head)" in migrated
    assert revision(database) == SCHEMA_REVISION

    shutil.copy(ROOT / "examples" / "demo.py", deploy / "demo.py")
    assert DEMO_DONE in step("python", "demo.py").stdout


def revision(database: Path) -> str | None:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT version_num FROM chicory_alembic_version").fetchall()
    return rows[0][0] if rows else None

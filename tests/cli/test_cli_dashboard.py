"""``chicory-backends dashboard``: the console script serves the web app, and refuses a
host other machines can reach unless a token is given."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLI = [sys.executable, "-m", "chicory_backends"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(database: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CHICORY_")},
        "CHICORY_BACKEND_TYPE": "sqlite",
        "CHICORY_BACKEND_SQLITE_FILE_PATH": str(database),
    }


def test_dashboard_refuses_a_public_host_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "dashboard", "--host", "0.0.0.0"],  # noqa: S104 - refused, never bound
        env=environment(tmp_path / "d.db"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "without a token" in done.stderr and "Traceback" not in done.stderr


@contextmanager
def cli_dashboard(env: dict[str, str], cwd: Path) -> Iterator[str]:
    """``chicory-backends dashboard`` on a free port, until the block ends; its URL once
    it answers."""
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "dashboard", "--port", str(port)], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/tasks", timeout=5):  # noqa: S310
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not answer within 30 s"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_dashboard_serves_the_tasks_page(tmp_path: Path) -> None:
    env = environment(tmp_path / "d.db")
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    with (
        cli_dashboard(env, tmp_path) as base,
        urllib.request.urlopen(base + "/tasks", timeout=5) as page,  # noqa: S310
    ):
        assert page.status == 200
        assert b"Tasks" in page.read()

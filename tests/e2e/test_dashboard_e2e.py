"""The dashboard as a user meets it, in headless Chromium:

- ``make demo``'s path (examples/demo.py on a SQLite file), then the console script
  ``chicory-backends dashboard`` on that file: the demo's worker and tasks are on the pages;
- a real ``chicory worker`` process with ``track(app)`` (Redis broker, SQLite backend):
  the tasks it ran, with their worker and errors, and a task finishing while the page is
  open shows up without a reload.

Screenshots go to artifacts/ (see test_web_browser.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chicory_backends import TaskFailedError
from chicory_backends.chicory import ChicoryBackendAdapter, async_result
from chicory_backends.config import SQLiteBackendConfig
from chicory_backends.sql.backend import DatabaseBackend
from tests.cli.test_cli_dashboard import cli_dashboard
from tests.e2e.test_chicory_e2e import (  # noqa: F401 (fixtures, found by name)
    TASK_TIMEOUT,
    chicory_cli,
    chicory_worker,
    namespace,
    redis_broker,
    sqlite_backend,
)
from tests.e2e.test_history_e2e import tracked_worker  # noqa: F401 (a fixture)
from tests.support import e2e_app
from tests.web.test_web_browser import Served, chromium, shot, until

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "chicory_backends"]

pytestmark = pytest.mark.slow


def test_demo_file_in_the_dashboard(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CHICORY_")},
        "CHICORY_BACKEND_TYPE": "sqlite",
        "CHICORY_BACKEND_SQLITE_FILE_PATH": str(tmp_path / "demo.db"),
    }
    demo = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    with cli_dashboard(env, tmp_path) as base, chromium() as browser:
        browser.get(base + "/workers")
        assert browser.find_element(By.ID, "workers-up").text == "1"
        cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#workers td")]
        assert any(cell.endswith("-demo") for cell in cells), cells
        shot(browser, "demo-workers")

        browser.get(base + "/tasks")
        ids = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#task-rows td.id a")]
        assert ids[:2] == ["demo-task-23", "demo-task-22"] and len(ids) == 24
        shot(browser, "demo-tasks")

        browser.get(base + "/tasks?state=FAILURE")
        failed = {
            cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#task-rows td.id a")
        }
        assert failed == {"demo-task-05", "demo-task-13", "demo-task-21"}

        browser.get(base + "/task?id=demo-task-05")
        assert "the upstream service did not answer" in browser.page_source
        shot(browser, "demo-task-detail")


async def _finish(app: Any, task_id: str) -> None:
    with contextlib.suppress(TaskFailedError):  # a failure is an ending too
        await async_result(app, task_id).get(timeout=TASK_TIMEOUT)


async def test_a_real_workers_tasks_in_the_dashboard(
    redis_broker: None,  # noqa: F811
    sqlite_backend: None,  # noqa: F811
    tracked_worker: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    app = e2e_app.make_app(tracked=True)
    await app.connect()
    adapter = app.backend
    assert isinstance(adapter, ChicoryBackendAdapter)
    served = Served(DatabaseBackend(SQLiteBackendConfig()))  # the file the worker writes
    try:
        with chicory_worker(tmp_path / "worker.log") as worker:
            added = await app.get_task("e2e.add").delay(2, 3)
            failed = await app.get_task("e2e.fail").delay("the card was declined")
            await asyncio.gather(_finish(app, added.task_id), _finish(app, failed.task_id))
            workers = [w for w in await adapter.backend.get_active_workers() if w.pid == worker.pid]
            assert len(workers) == 1
            served.start()
            with chromium() as browser:
                await asyncio.to_thread(browser.get, served.url + "/workers")
                page = browser.page_source
                assert workers[0].worker_id in page

                await asyncio.to_thread(browser.get, served.url + "/tasks")
                rows = browser.find_elements(By.CSS_SELECTOR, "#task-rows tr")
                texts = [row.text for row in rows]
                assert any(added.task_id in t and "e2e.add" in t and "SUCCESS" in t for t in texts)
                assert any(failed.task_id in t and "FAILURE" in t for t in texts), texts
                until(
                    browser,
                    lambda d: (
                        d.execute_script("return document.body.getAttribute('data-live')") == "open"
                    ),
                    "the page's event stream did not open",
                )
                # A task run while the page is open appears without a reload.
                late = await app.get_task("e2e.add").delay(20, 22)
                await _finish(app, late.task_id)
                await asyncio.to_thread(
                    until,
                    browser,
                    lambda d: late.task_id in d.find_element(By.ID, "task-rows").text,
                    "the task finished after the page loaded did not show up",
                )
                shot(browser, "real-worker-tasks")

                await asyncio.to_thread(browser.get, served.url + f"/task?id={failed.task_id}")
                assert "the card was declined" in browser.page_source
                assert workers[0].worker_id in browser.page_source
    finally:
        if served.thread.is_alive():
            served.stop()
        await app.disconnect()

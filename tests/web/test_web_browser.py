"""The dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium): pages render with data, filters and pages work, tasks stored after
the page loaded show up live, and the hostile task id is text. Screenshots go to
``artifacts/`` (or CHICORY_TEST_ARTIFACTS).

Skipped with the reason when Chromium, its driver or selenium is missing, unless
CHICORY_TEST_REQUIRE_SERVICES=1, where that fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import uvicorn

from chicory_backends.sql.backend import DatabaseBackend
from chicory_backends.types import TaskState
from chicory_backends.web import create_app
from tests.support.services import free_port, missing
from tests.support.sql_databases import migrated_database, run_database_name
from tests.support.web_seed import XSS_ID, run_task, seed

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CHICORY_TEST_ARTIFACTS", ROOT / "artifacts"))
CHROMIUM = os.environ.get("CHICORY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHICORY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 15.0  # seconds any one condition may take

pytestmark = pytest.mark.slow


class Served:
    """The dashboard on uvicorn in a thread with its own event loop, where its backend
    lives; ``call`` runs a backend coroutine there (the tests' writes)."""

    def __init__(self, backend: DatabaseBackend) -> None:
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        app = create_app(backend, manage_backend=True, poll_interval=0.2)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> None:
        self.thread.start()
        ready = threading.Event()

        async def started() -> None:
            while not self.server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
                await asyncio.sleep(0.02)
            ready.set()

        asyncio.run_coroutine_threadsafe(started(), self.loop)
        if not ready.wait(WAIT):
            raise RuntimeError("the dashboard did not start")

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.loop.close()


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    if not Path(CHROMEDRIVER).exists():
        missing(f"no chromedriver at {CHROMEDRIVER}: apt-get install chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    _require_browser()
    with migrated_database("sqlite", run_database_name("web_browser")) as config:
        server = Served(DatabaseBackend(config))
        server.start()
        try:
            server.call(seed(server.backend))
            yield server
        finally:
            server.stop()


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium driven by selenium, with a fresh profile (removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _require_browser()
    profile = tempfile.mkdtemp(prefix="chicory-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def until(driver: Any, condition: Any, message: str) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The live script swaps rows in and out: an element read mid-swap is simply re-read.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.05, ignored_exceptions=ignored)
    return wait.until(condition, message)


def shot(driver: Any, name: str) -> None:
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def row_ids(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#task-rows td.id a")]


def live_open(driver: Any) -> None:
    until(
        driver,
        lambda d: d.execute_script("return document.body.getAttribute('data-live')") == "open",
        "the page's event stream did not open",
    )


def test_overview_and_workers_render_with_data(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/")
    assert browser.find_element(By.ID, "total-tasks").text == "34"
    assert browser.find_element(By.ID, "failed-tasks").text == "6"
    until(
        browser,
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "[data-chart-id=chart-states] rect.bar")) > 0
        ),
        "the state chart was not drawn",
    )
    bars = browser.find_elements(By.CSS_SELECTOR, "[data-chart-id=chart-runtime] rect.bar")
    assert len(bars) >= 2  # p50 and p95 of add and charge at least
    assert browser.find_elements(By.CSS_SELECTOR, "[data-chart-id=chart-throughput] polyline")
    shot(browser, "overview")

    browser.get(served.url + "/workers")
    assert browser.find_element(By.ID, "workers-up").text == "2"
    hosts = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#workers td")]
    assert "host-w1" in hosts and "host-w2" in hosts
    shot(browser, "workers")


def test_tasks_filter_and_pages(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(served.url + "/tasks")
    assert len(row_ids(browser)) >= 34
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("FAILURE")
    browser.find_element(By.ID, "filter-submit").click()
    until(browser, lambda d: "state=FAILURE" in d.current_url, "the filter was not applied")
    assert sorted(row_ids(browser)) == sorted([f"charge-{i}" for i in range(5)] + [XSS_ID])
    shot(browser, "tasks-filtered")

    browser.get(served.url + "/tasks?" + urlencode({"name": "add", "limit": 10}))
    first = row_ids(browser)
    assert len(first) == 10
    browser.find_element(By.ID, "next-page").click()
    until(browser, lambda d: "cursor=" in d.current_url, "the next page did not open")
    second = row_ids(browser)
    assert len(second) == 10 and not set(first) & set(second)
    assert all(task_id.startswith("add-") for task_id in first + second)


def test_tasks_show_up_and_finish_live(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/tasks")
    browser.execute_script("window.__sameDocument = true;")
    live_open(browser)
    served.call(run_task(served.backend, "live-browser-1", "report", "w1", TaskState.STARTED))
    until(browser, lambda d: row_ids(d)[:1] == ["live-browser-1"], "the new task did not appear")

    def state_of_newest(driver: Any) -> str:
        return str(driver.find_element(By.CSS_SELECTOR, "#task-rows tr .badge").text)

    assert state_of_newest(browser) == "STARTED"
    shot(browser, "tasks-live-started")
    finished = run_task(
        served.backend, "live-browser-1", "report", "w1", TaskState.SUCCESS, result={"ok": 1}
    )
    served.call(finished)
    until(browser, lambda d: state_of_newest(d) == "SUCCESS", "the finish did not show up")
    assert browser.execute_script("return window.__sameDocument === true;")  # no reload
    shot(browser, "tasks-live-finished")

    browser.get(served.url + "/")
    live_open(browser)
    before = int(browser.find_element(By.ID, "total-tasks").text)
    served.call(run_task(served.backend, "live-browser-2", "add", "w1", TaskState.SUCCESS))
    until(
        browser,
        lambda d: d.find_element(By.ID, "total-tasks").text == str(before + 1),
        "the overview did not count the new task",
    )


def test_script_tag_task_id_is_text(served: Served, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/tasks?" + urlencode({"name": "hostile"}))
    assert row_ids(browser) == [XSS_ID]
    browser.find_element(By.LINK_TEXT, XSS_ID).click()
    until(browser, lambda d: d.find_elements(By.ID, "task-id"), "the detail page did not open")
    assert browser.find_element(By.ID, "task-id").text == XSS_ID
    assert "onerror" in browser.find_element(By.ID, "task-error").text
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img")
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text
    shot(browser, "task-detail-script-id")

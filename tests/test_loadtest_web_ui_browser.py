"""The Steps tab in Locust's own web UI, rendered by a real headless browser.

A real ``locust -f loadtest/locustfile.py`` (web UI, ``--autostart``) loads a real 2-step
pipeline; Debian's chromium (through chromium-driver and Selenium) opens the UI, clicks the
"Steps" tab and reads each step's row from the table Locust's React UI draws. A screenshot goes
to out/loadtest/steps-tab.png.

Skips, saying why, only when no Chromium/chromedriver is installed (`make test` installs them
with tests/install-test-tools.sh).
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loadtest_fixtures import start_locust, stop_locust
from step_fixtures import ProcessPipeline, free_port

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "out" / "loadtest"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1000")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="no Chromium here: `apt-get install chromium chromium-driver` "
                              "(make test runs tests/install-test-tools.sh to do it)"),
]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # not up yet, or the element is being redrawn; look again
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[ProcessPipeline]:
    (tmp_path / "pipeline").mkdir()
    servers = ProcessPipeline(tmp_path / "pipeline", [
        {"id": 1, "type": "identity", "next_step": 2},
        {"id": 2, "type": "grayscale"},
    ])
    try:
        servers.wait_serving()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_steps_tab_shows_each_steps_times_in_locusts_web_ui(
        pipeline: ProcessPipeline, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    port = free_port()
    log = tmp_path / "locust.log"
    process = start_locust(["--host", pipeline.address(1), "--web-host", "127.0.0.1",
                            "--web-port", str(port), "--autostart", "--users", "2",
                            "--spawn-rate", "2"], cwd=tmp_path, log=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, "the web UI")
        browser.get(url)
        tab = wait_for(lambda: next(t for t in browser.find_elements(By.CSS_SELECTOR,
                                                                     "[role=tab]")
                                    if t.text.strip().lower() == "steps"), "the Steps tab")
        tab.click()

        def rows() -> list[list[str]]:
            found = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
                     for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
            return found if [r[0] for r in found] == ["step-1:identity",
                                                      "step-2:grayscale"] else []

        table = wait_for(rows, "a row per step in the Steps table")
        headers = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "thead th")]
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "steps-tab.png"))
    finally:
        stop_locust(process)
    assert headers[:3] == ["Step", "Requests", "Kernel mean (ms)"]
    for row in table:
        assert int(row[1]) > 0
        assert len(row[2].split(".")[1]) == 3  # milliseconds to the microsecond

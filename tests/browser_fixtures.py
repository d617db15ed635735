"""A real headless browser for tests: Debian's chromium driven through chromium-driver by
Selenium (`make test` installs both with tests/install-test-tools.sh).

Use ``@needs_chromium`` on a test and take the ``browser`` fixture (import
``browser_fixture`` into the test module); without Chromium the test skips and says how.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1700")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no Chromium here: `apt-get install chromium chromium-driver` "
           "(make test runs tests/install-test-tools.sh to do it)")


@pytest.fixture(name="browser")
def browser_fixture() -> Iterator[Any]:
    """A Selenium driver of headless Chromium, quit after the test."""
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

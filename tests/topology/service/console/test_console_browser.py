"""The web console in a real headless browser (Debian's chromium driven through chromium-driver
by Selenium) against a real `stepchain topology serve` and real step processes:

open the URL the service printed (?token=), create a pipeline by pasting JSON (an invalid one
first: the error shows beside its field), upload a photo, see the output image, the labels and
the waterfall, watch Live fill in, run a job over a folder and see it on the Jobs page,
delete the pipeline. Screenshots go to out/console/.

Skips, saying why, only when no Chromium/chromedriver is installed (`make test` installs them
with tests/install-test-tools.sh).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import browser_fixture, needs_chromium  # noqa: F401 (fixture)
from topology_fixtures import Service

from topology.service.auth import client_token

ROOT = Path(__file__).resolve().parents[4]
SHOTS = ROOT / "out" / "console"
PIPELINE = {
    "name": "browser",
    "steps": [
        {"step_id": 0, "type": "classify", "next_step": [1, 2], "preferred_next": 1,
         "route": {"blurry": 2}},
        {"step_id": 1, "type": "grayscale", "next_step": 3},
        {"step_id": 2, "type": "sharpen", "params": {"amount": 1.5, "sigma": 1.0},
         "next_step": 3},
        # next_step 9 names no step: accepted (the pipeline ends at 3) with a warning.
        {"step_id": 3, "type": "resize", "params": {"scale": 0.5}, "next_step": 9},
    ],
}

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    started = Service(tmp_path / "state")
    try:
        yield started
    finally:
        started.stop()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # the element is being replaced by a refresh; look again
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def shot(driver: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def paste(driver: Any, textarea: Any, text: str) -> None:
    # Typing a long document key by key is slow and auto-indents nothing here; set it as a
    # paste would, then tell the page it changed.
    driver.execute_script("arguments[0].value = arguments[1];"
                          "arguments[0].dispatchEvent(new Event('input'));", textarea, text)


def test_create_run_a_photo_watch_live_and_delete_in_a_real_browser(
        service: Service, browser: Any, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from skimage import data

    token = client_token(service.state_dir)
    assert token
    browser.get(f"{service.url}?token={token}")
    # The token moved to sessionStorage and left the address bar.
    wait_for(lambda: "token=" not in browser.current_url, "the token to leave the URL")
    assert browser.find_element(By.ID, "token-state").text == "token set"
    assert "No pipelines yet" in browser.page_source
    shot(browser, "1-empty")

    # An invalid pipeline: the error shows beside the field it names.
    editor = browser.find_element(By.CSS_SELECTOR, "form.editor[data-mode=create]")
    bad = json.loads(json.dumps(PIPELINE))
    bad["steps"][2]["type"] = "warp"
    paste(browser, editor.find_element(By.NAME, "spec"), json.dumps(bad, indent=2))
    editor.find_element(By.CSS_SELECTOR, "[data-action=create]").click()
    error_line = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "pre.json .line.error"),
                          "the validation error")
    assert '"warp"' in error_line.text
    assert "warp" in error_line.find_element(By.CLASS_NAME, "field-error").text
    shot(browser, "2-validation-error")

    # The real one.
    paste(browser, editor.find_element(By.NAME, "spec"), json.dumps(PIPELINE, indent=2))
    editor.find_element(By.CSS_SELECTOR, "[data-action=create]").click()
    wait_for(lambda: "created" in editor.find_element(By.CLASS_NAME, "result").text,
             "the pipeline to be created")
    warnings = editor.find_element(By.CSS_SELECTOR, ".result ul.warnings").text
    assert "not a step of this pipeline" in warnings and "ends the pipeline" in warnings
    card = wait_for(lambda: browser.find_element(By.CSS_SELECTOR,
                                                 "article[data-pipeline=browser]"),
                    "the pipeline card")
    graph = card.find_element(By.CSS_SELECTOR, "svg.graph")
    assert "preferred_next" in graph.text and "route: blurry" in graph.text
    assert "ENTRY" in graph.text
    shot(browser, "3-created")

    # Run an uploaded photograph at every thread count.
    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    browser.get(f"{service.url}console/pipelines/browser")
    form = browser.find_element(By.ID, "run-form")
    form.find_element(By.NAME, "image").send_keys(str(photo))
    runs = form.find_element(By.NAME, "runs")
    runs.clear()
    runs.send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    output = wait_for(lambda: browser.find_element(By.ID, "run-output-image"),
                      "the output image", timeout=180)
    width = data.chelsea().shape[1]  # 451; resize scale 0.5
    assert browser.execute_script("return arguments[0].naturalWidth", output) in (
        width // 2, (width + 1) // 2)
    assert browser.execute_script("return arguments[0].complete", output)
    waterfall = browser.find_element(By.CSS_SELECTOR, "#waterfall svg")
    assert len(waterfall.find_elements(By.CSS_SELECTOR, "rect.kernel")) == 3  # three steps ran
    labels = browser.find_element(By.CLASS_NAME, "labels").text
    assert "sharpness=" in labels and "exposure=" in labels
    if len(form.find_elements(By.NAME, "threads")) > 1:
        assert browser.find_elements(By.CSS_SELECTOR, "#speedup-chart svg")
        assert "Amdahl fit" in browser.page_source
    browser.execute_script("document.getElementById('run-result').scrollIntoView()")
    shot(browser, "4-run")

    # Live: the steps' own metrics, refreshed every 2 s, show the requests just made.
    live = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#live-body table.live"),
                    "the live table")
    assert "#0 classify" in live.text
    wait_for(lambda: "scale" in browser.find_element(By.ID, "live-body").text
             or "maintain" in browser.find_element(By.ID, "live-body").text, "advice")
    browser.execute_script("document.getElementById('live').scrollIntoView()")
    shot(browser, "5-live")

    # A job over a folder (three photographs and a text file): the Jobs page shows its
    # progress and the failed item with its code.
    job_in = tmp_path / "job-in"
    job_in.mkdir()
    for i in range(3):
        Image.fromarray(data.chelsea()[i * 40:i * 40 + 200]).save(job_in / f"cat{i}.png")
    (job_in / "notes.txt").write_text("no image")
    with service.api(token) as api:
        job = api.post("/v1/jobs", json={"pipeline": "browser", "input": f"file://{job_in}/",
                                         "output": f"file://{tmp_path}/job-out/"}).json()
    browser.get(f"{service.url}console/jobs")
    # (the table is replaced every 2 s: each look reads it afresh)
    row = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "tr.job.failed").text,
                   "the job to end", timeout=120)
    assert job["id"] in row and "3 / 4" in row
    failures = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "ul.failed-items").text,
                        "the failed items")
    assert f"{job_in}/notes.txt: INVALID_ARGUMENT not an image" in failures
    shot(browser, "6-jobs")
    browser.get(f"{service.url}console/pipelines/browser")

    # Replace it by uploading a changed JSON file into the page's editor.
    changed = json.loads(json.dumps(PIPELINE))
    changed["steps"][3]["params"]["scale"] = 0.25
    upload = tmp_path / "browser.json"
    upload.write_text(json.dumps(changed))
    replace = browser.find_element(By.CSS_SELECTOR, "form.editor[data-mode=replace]")
    replace.find_element(By.NAME, "file").send_keys(str(upload))
    wait_for(lambda: "0.25" in replace.find_element(By.NAME, "spec").get_attribute("value"),
             "the uploaded file in the editor")
    replace.find_element(By.CSS_SELECTOR, "[data-action=replace]").click()
    wait_for(lambda: "updated" in replace.find_element(By.CLASS_NAME, "result").text,
             "the pipeline to be replaced")
    with service.api(token) as api:
        graph = api.get("/pipeline/browser").json()["graph"]
    assert graph[3]["params"] == {"scale": 0.25}

    # Delete it.
    browser.find_element(By.CSS_SELECTOR, "button[data-delete=browser][data-after]").click()
    wait_for(lambda: browser.switch_to.alert, "the confirmation dialog").accept()
    wait_for(lambda: browser.current_url.rstrip("/") == service.url.rstrip("/"),
             "the return to the pipeline list")
    wait_for(lambda: "No pipelines yet" in browser.page_source, "the empty list")
    shot(browser, "7-deleted")
    with service.api(token) as api:
        assert api.get("/pipelines").json()["pipelines"] == []

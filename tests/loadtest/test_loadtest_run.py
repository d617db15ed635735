"""Real load tests, short and on loopback: Locust (as a child process) against step servers.

The Steps tab is also read from Locust's React web UI by Debian's chromium (through
chromium-driver and Selenium); that test skips, saying why, only when no Chromium/chromedriver is
installed (`make test` installs them with tests/install-test-tools.sh).

One 2-step pipeline (identity → grayscale) serves every curve's run; each run is a few seconds
with at most 5 users. A second, deliberately overloaded pipeline shows RESOURCE_EXHAUSTED
counted as failures — and the run still ending by itself.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import browser_fixture, needs_chromium  # noqa: F401 (fixture)
from loadtest_fixtures import run_locust, run_stepchain, start_locust, stop_locust
from PIL import Image
from step_fixtures import ProcessPipeline, free_port

from loadtest.curves import CURVES

USERS = 3
DURATION_S = 6
#: Locust start-up and shutdown around the curve, generously; a run past this is a hang.
RUN_BOUND_S = DURATION_S + 60
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "loadtest"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real photograph (scikit-image's astronaut, 96×96) as PNG."""
    from skimage import data

    path = tmp_path_factory.mktemp("image") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((96, 96)).save(path)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPipeline]:
    servers = ProcessPipeline(tmp_path_factory.mktemp("pipeline"), [
        {"id": 1, "type": "identity", "next_step": 2},
        {"id": 2, "type": "grayscale"},
    ])
    try:
        servers.wait_serving()
        yield servers
    finally:
        servers.stop()


@pytest.mark.slow
@pytest.mark.parametrize("curve", list(CURVES))
def test_stepchain_loadtest_runs_each_curve_and_writes_csv_html_and_plot(
        curve: str, pipeline: ProcessPipeline, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    knobs = {"spike": ["--spike-at", "2", "--spike-length", "2"], "sinus": ["--period", "4"]}
    result = run_stepchain(
        ["loadtest", "--curve", curve, "--users", str(USERS), "--duration", str(DURATION_S),
         "--image", str(photo), "--target", pipeline.address(1), "--out", str(out),
         *knobs.get(curve, [])], timeout=RUN_BOUND_S)
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert result.returncode == 0, result.stderr + log

    stats = {row["Name"]: row for row in read_csv(out / "loadtest_stats.csv")}
    # Locust's totals count pipeline requests only: Aggregated is the Process line.
    assert set(stats) == {"Process", "Aggregated"}
    requests = int(stats["Process"]["Request Count"])
    assert requests > 0
    assert int(stats["Aggregated"]["Request Count"]) == requests
    assert int(stats["Process"]["Failure Count"]) == 0
    assert stats["Process"]["Type"] == "grpc"
    assert "step-2:grayscale" not in (out / "report.html").read_text()

    # Every answered request's step times, per step and per second, to the microsecond.
    steps = read_csv(out / "loadtest_steps.csv")
    assert {row["Step"] for row in steps} == {"step-1:identity", "step-2:grayscale"}
    per_step = {name: sum(int(r["Count"]) for r in steps if r["Step"] == name)
                for name in ("step-1:identity", "step-2:grayscale")}
    # Each request Locust counted timed both steps, and only those: the step files agree with
    # Locust's CSV exactly, the run's last second included.
    assert per_step["step-1:identity"] == per_step["step-2:grayscale"] == requests
    kernels = [row["Kernel 50% (ms)"] for row in steps]
    assert all(len(value.split(".")[1]) == 3 for value in kernels)
    assert any(0 < float(value) < 1 for value in kernels)  # sub-ms, not rounded to 0
    totals = {row["Step"]: row for row in read_csv(out / "loadtest_steps_total.csv")}
    assert {name: int(row["Count"]) for name, row in totals.items()} == per_step

    seconds = read_csv(out / "loadtest_requests.csv")
    assert sum(int(row["Requests"]) for row in seconds) == per_step["step-1:identity"]
    assert max(int(row["Users"]) for row in seconds if row["Users"]) == USERS
    assert max(int(row["Target Users"]) for row in seconds if row["Target Users"]) == USERS
    history = read_csv(out / "loadtest_stats_history.csv")
    assert max(int(row["User Count"]) for row in history) == USERS  # the peak, never more
    with Image.open(out / "loadtest.png") as png:
        assert png.format == "PNG"
    assert f"requests {requests}, failures 0" in result.stderr
    assert "per-step times (ms)" in result.stderr
    assert "\nstep-2:grayscale " in result.stderr
    assert f"plot: {out / 'loadtest.png'}" in result.stderr
    assert "Traceback" not in result.stderr + log


@pytest.mark.slow
def test_locust_prints_no_traceback_when_it_stops_users_mid_request(
        pipeline: ProcessPipeline, photo: Path, tmp_path: Path) -> None:
    # A wave of 30 users that swings by about 25 every second: Locust stops users mid-request
    # (by default it kills them at once) well over a hundred times, as a ramp-down or the end
    # of any run does a few times. Not one of those stops may print a traceback.
    result = run_locust(
        ["--headless", "--curve", "sinus", "--users", "30", "--duration", "8", "--period",
         "2.5", "--image", str(photo), "--host", pipeline.address(1), "--only-summary"],
        cwd=tmp_path, timeout=RUN_BOUND_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "Invalid encoding" not in output


@pytest.mark.slow
def test_a_spike_without_spawn_rate_reaches_its_peak_within_about_a_second(
        pipeline: ProcessPipeline, photo: Path, tmp_path: Path) -> None:
    # 1 user, then 10 from the 2nd to the 6th second: at the replaced tool's 2 users/s the peak
    # would come 4.5 s after the jump; the curve's own rate (9/s) lands it within Locust's tick.
    out = tmp_path / "out"
    result = run_stepchain(
        ["loadtest", "--curve", "spike", "--users", "10", "--base-users", "1", "--duration",
         "8", "--spike-at", "2", "--spike-length", "4", "--image", str(photo),
         "--target", pipeline.address(1), "--out", str(out)], timeout=RUN_BOUND_S)
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert result.returncode == 0, result.stderr + log
    assert "at 9 users/s" in log
    seconds = [row for row in read_csv(out / "loadtest_requests.csv") if row["Users"]]
    jump = next(i for i, row in enumerate(seconds) if row["Target Users"] == "10")
    # the second the target jumps, or the next one (Locust ticks once a second)
    assert max(int(row["Users"]) for row in seconds[jump:jump + 2]) == 10, seconds


@pytest.mark.slow
def test_an_explicit_spawn_rate_still_paces_the_spike(
        pipeline: ProcessPipeline, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_stepchain(
        ["loadtest", "--curve", "spike", "--users", "10", "--base-users", "1", "--duration",
         "8", "--spike-at", "2", "--spike-length", "4", "--spawn-rate", "2", "--image",
         str(photo), "--target", pipeline.address(1), "--out", str(out)], timeout=RUN_BOUND_S)
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert result.returncode == 0, result.stderr + log
    assert "at 2 users/s" in log
    seconds = [row for row in read_csv(out / "loadtest_requests.csv") if row["Users"]]
    jump = next(i for i, row in enumerate(seconds) if row["Target Users"] == "10")
    assert max(int(row["Users"]) for row in seconds[jump:jump + 2]) < 10, seconds


@pytest.mark.slow
def test_several_targets_are_loaded_together_with_users_spread_across_them(
        pipeline: ProcessPipeline, photo: Path, tmp_path: Path) -> None:
    # Step 2 alone is a complete (one-step) pipeline: two entries, two pipelines.
    first, second = pipeline.address(1), pipeline.address(2)
    out = tmp_path / "out"
    result = run_stepchain(
        ["loadtest", "--curve", "flat", "--users", "2", "--duration", "4", "--image", str(photo),
         "--target", first, "--target", second, "--out", str(out)], timeout=RUN_BOUND_S)
    assert result.returncode == 0, result.stderr
    stats = {row["Name"]: row for row in read_csv(out / "loadtest_stats.csv")}
    assert int(stats[f"Process {first}"]["Request Count"]) > 0
    assert int(stats[f"Process {second}"]["Request Count"]) > 0
    steps = {row["Step"]: row for row in read_csv(out / "loadtest_steps_total.csv")}
    assert int(steps[f"{first}/step-1:identity"]["Count"]) > 0
    assert int(steps[f"{second}/step-2:grayscale"]["Count"]) > 0
    assert f"{second}/step-1:identity" not in steps  # that pipeline has no step 1


@pytest.mark.slow
def test_locust_runs_the_locustfile_from_outside_the_checkout_with_the_issue_command_line(
        pipeline: ProcessPipeline, tmp_path: Path) -> None:
    # The command line of the tool this replaces, verbatim, stopped early by --run-time.
    result = run_locust(
        ["--curve", "ramp", "--users", "50", "--duration", "120", "--spawn-rate", "5",
         "--headless", "--host", pipeline.address(1), "--run-time", "3s",
         "--csv", str(tmp_path / "x")], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "curve ramp" in result.stderr
    assert "peak 50 users over 120s at 5 users/s" in result.stderr
    stats = {row["Name"]: row for row in read_csv(tmp_path / "x_stats.csv")}
    requests = int(stats["Process"]["Request Count"])
    assert requests > 0 and int(stats["Aggregated"]["Request Count"]) == requests
    assert int(stats["Process"]["Failure Count"]) == 0
    # The ramp is N·t/D over the whole run: ⌈50 · 3 / 120⌉ = 2 users by the third second.
    assert max(int(r["User Count"]) for r in read_csv(tmp_path / "x_stats_history.csv")) <= 2
    # Locust's headless summary is followed by the per-step table.
    summary = result.stderr[result.stderr.index("Response time percentiles"):]
    assert "per-step times (ms)" in summary and "step-2:grayscale" in summary
    assert (tmp_path / "x_steps.csv").exists() and (tmp_path / "x_requests.csv").exists()


def get(url: str) -> tuple[int, str, str]:
    """``(status, Content-Type, body)`` of a GET on loopback."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


def poll(what: str, check: Any, log: Path, timeout: float = 40.0) -> Any:
    """``check()`` until it returns something truthy; fails with Locust's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s; Locust said:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_web_ui_has_a_steps_tab_with_each_steps_times_and_defaults_of_the_replaced_tool(
        pipeline: ProcessPipeline, tmp_path: Path) -> None:
    # No curve knobs at all: the defaults of the Flask tool's pipeline_test.py.
    port = free_port()
    log = tmp_path / "locust.log"
    process = start_locust(
        ["--host", pipeline.address(1), "--web-host", "127.0.0.1", "--web-port", str(port),
         "--autostart", "--csv", str(tmp_path / "ui")], cwd=tmp_path,
        log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        page = poll("the web UI", lambda: get(base + "/")[2], log)
        assert '"extended_tabs": [{"key": "steps", "title": "Steps"}]' in page
        assert '"href": "./steps/csv"' in page

        def step_rows() -> list[dict[str, Any]]:
            status, _, body = get(base + "/stats/requests")
            extended = json.loads(body).get("extended_stats") if status == 200 else None
            rows = extended[0]["data"] if extended else []
            return rows if {r["name"] for r in rows} >= {"step-2:grayscale"} else []

        rows = poll("step rows in /stats/requests", step_rows, log)
        assert [row["name"] for row in rows] == ["step-1:identity", "step-2:grayscale"]
        assert all(row["count"] > 0 for row in rows)
        assert all(len(row["kernel_p95"].split(".")[1]) == 3 for row in rows)
        stats = json.loads(get(base + "/stats/requests")[2])["stats"]
        assert [entry["name"] for entry in stats] == ["Process", "Aggregated"]

        status, kind, body = get(base + "/steps")
        assert status == 200 and kind.startswith("application/json")
        assert [row["name"] for row in json.loads(body)["steps"]] == ["step-1:identity",
                                                                      "step-2:grayscale"]
        status, kind, body = get(base + "/steps/csv")
        assert status == 200 and kind.startswith("text/csv")
        table = list(csv.DictReader(body.splitlines()))
        assert [row["Step"] for row in table] == ["step-1:identity", "step-2:grayscale"]
        assert float(table[1]["Kernel Mean (ms)"]) > 0
    finally:
        stop_locust(process)
    said = log.read_text()
    assert "curve ramp" in said and "peak 20 users over 60s at 2 users/s" in said
    assert read_csv(tmp_path / "ui_steps.csv"), said[-2000:]


@pytest.mark.slow
@needs_chromium
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
        poll("the web UI", lambda: urllib.request.urlopen(url, timeout=2).status == 200, log)
        browser.get(url)
        tab = poll("the Steps tab", lambda: next(
            (t for t in browser.find_elements(By.CSS_SELECTOR, "[role=tab]")
             if t.text.strip().lower() == "steps"), None), log)
        tab.click()

        def rows() -> list[list[str]]:
            found = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
                     for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
            return found if [r[0] for r in found] == ["step-1:identity",
                                                      "step-2:grayscale"] else []

        table = poll("a row per step in the Steps table", rows, log)
        headers = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "thead th")]
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "steps-tab.png"))
    finally:
        stop_locust(process)
    assert headers[:3] == ["Step", "Requests", "Kernel mean (ms)"]
    for row in table:
        assert int(row[1]) > 0
        assert len(row[2].split(".")[1]) == 3  # milliseconds to the microsecond


@pytest.mark.slow
def test_a_master_writes_the_step_times_its_worker_measured(pipeline: ProcessPipeline,
                                                            tmp_path: Path) -> None:
    # Distributed Locust: the worker sends its step times with its stats reports.
    port = free_port()
    worker = start_locust(["--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                           "--host", pipeline.address(1)], cwd=tmp_path,
                          log=tmp_path / "worker.log")
    try:
        master = run_locust(
            ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
             "--headless", "--expect-workers", "1", "--host", pipeline.address(1),
             "--curve", "flat", "--users", "2", "--spawn-rate", "2", "--duration", "4",
             "--csv", str(tmp_path / "d")], cwd=tmp_path, timeout=90)
    finally:
        stop_locust(worker)
    assert master.returncode == 0, master.stderr[-3000:]
    stats = {row["Name"]: row for row in read_csv(tmp_path / "d_stats.csv")}
    requests = int(stats["Process"]["Request Count"])
    assert requests > 0 and int(stats["Aggregated"]["Request Count"]) == requests
    totals = {row["Step"]: int(row["Count"])
              for row in read_csv(tmp_path / "d_steps_total.csv")}
    assert totals["step-1:identity"] == totals["step-2:grayscale"] >= requests
    per_second = read_csv(tmp_path / "d_steps.csv")
    # Seconds are written 5 s after they end; a report later than that counts in the totals only.
    assert 0 < sum(int(r["Count"]) for r in per_second if r["Step"] == "step-2:grayscale") \
        <= totals["step-2:grayscale"]
    assert "per-step times (ms)" in master.stderr


@pytest.mark.slow
def test_locust_refuses_bad_curve_parameters_with_the_option_named(tmp_path: Path) -> None:
    result = run_locust(["--curve", "spike", "--duration", "10", "--spike-at", "20",
                         "--headless", "--host", "127.0.0.1:1"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "stepchain loadtest: spike curve: --spike-at must be in [0, 10)" in result.stderr


@pytest.mark.slow
def test_locust_without_host_or_kubernetes_says_to_pass_a_host(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = run_locust(["--curve", "flat", "--duration", "5", "--headless"], cwd=tmp_path,
                        timeout=60)
    assert result.returncode == 2
    assert "no --host given and no Kubernetes configuration found" in result.stderr
    assert "pass --host HOST:PORT" in result.stderr


def test_stepchain_loadtest_rejects_bad_parameters_before_starting_locust(tmp_path: Path
                                                                         ) -> None:
    out = tmp_path / "never"
    result = run_stepchain(["loadtest", "--curve", "step", "--duration", "4", "--step-count",
                            "5", "--target", "127.0.0.1:1", "--out", str(out)], timeout=60)
    assert result.returncode == 2
    assert "stepchain loadtest: step curve: --step-count must be a whole number between 1 and " \
           "4 so each plateau lasts at least a second" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_overloaded_step_answers_resource_exhausted_counted_as_failures_not_hangs(
        photo: Path, tmp_path: Path) -> None:
    # One slot, no queue, a kernel made heavy with passes (the --passes request override):
    # concurrent users must be turned away at once.
    servers = ProcessPipeline(tmp_path, [
        {"id": 1, "type": "gaussian_blur", "params": {"sigma": 2.0}},
    ], extra_args={1: ["--max-inflight", "1", "--max-queue", "0"]})
    try:
        servers.wait_serving()
        out = tmp_path / "out"
        result = run_stepchain(
            ["loadtest", "--curve", "flat", "--users", "5", "--duration", "5", "--image",
             str(photo), "--passes", "20", "--target", servers.address(1), "--out", str(out)],
            timeout=RUN_BOUND_S)
    finally:
        servers.stop()
    assert result.returncode == 1, result.stderr  # Locust's exit code when requests failed
    stats = {row["Name"]: row for row in read_csv(out / "loadtest_stats.csv")}
    failures = int(stats["Process"]["Failure Count"])
    assert failures > 0
    assert int(stats["Process"]["Request Count"]) > failures  # the admitted ones still succeed
    failed = read_csv(out / "loadtest_failures.csv")
    exhausted = [row for row in failed if "RESOURCE_EXHAUSTED" in row["Error"]]
    assert exhausted and all(row["Name"] == "Process" for row in exhausted)
    assert sum(int(row["Occurrences"]) for row in exhausted) == failures
    assert "RESOURCE_EXHAUSTED" in result.stderr  # the summary names the reason too
    assert (out / "loadtest.png").exists() and (out / "report.html").exists()

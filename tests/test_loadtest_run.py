"""Real load tests, short and on loopback: Locust (as a child process) against step servers.

One 2-step pipeline (identity → grayscale) serves every curve's run; each run is a few seconds
with at most 5 users. A second, deliberately overloaded pipeline shows RESOURCE_EXHAUSTED
counted as failures — and the run still ending by itself.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from loadtest_fixtures import run_locust, run_stepchain
from PIL import Image
from step_fixtures import ProcessPipeline

from loadtest.curves import CURVES

USERS = 3
DURATION_S = 6
#: Locust start-up and shutdown around the curve, generously; a run past this is a hang.
RUN_BOUND_S = DURATION_S + 60


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
    requests = int(stats["Process"]["Request Count"])
    assert requests > 0
    assert int(stats["Process"]["Failure Count"]) == 0
    assert stats["Process"]["Type"] == "grpc"
    # Every answered request reports both steps' kernel and queue time as custom entries.
    for entry in ("step-1:identity kernel", "step-1:identity queue",
                  "step-2:grayscale kernel", "step-2:grayscale queue"):
        assert stats[entry]["Type"] == "step"
        assert int(stats[entry]["Request Count"]) == requests, entry

    history = read_csv(out / "loadtest_stats_history.csv")
    assert {row["Name"] for row in history} >= {"Process", "step-2:grayscale kernel"}
    users = [int(row["User Count"]) for row in history]
    assert max(users) == USERS  # the curve's peak, never more
    assert "step-2:grayscale kernel" in (out / "report.html").read_text()
    with Image.open(out / "loadtest.png") as png:
        assert png.format == "PNG"
    assert f"requests {requests}, failures 0" in result.stderr
    assert f"plot: {out / 'loadtest.png'}" in result.stderr


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
    assert int(stats[f"{first}/step-1:identity kernel"]["Request Count"]) > 0
    assert int(stats[f"{second}/step-2:grayscale kernel"]["Request Count"]) > 0
    assert f"{second}/step-1:identity kernel" not in stats  # that pipeline has no step 1


@pytest.mark.slow
def test_locust_runs_the_locustfile_from_outside_the_checkout_with_the_issue_command_line(
        pipeline: ProcessPipeline, tmp_path: Path) -> None:
    # The README's command line verbatim, stopped early by Locust's own --run-time.
    result = run_locust(
        ["--curve", "spike", "--users", "100", "--duration", "180", "--headless",
         "--host", pipeline.address(1), "--run-time", "3s", "--csv", str(tmp_path / "x")],
        cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "curve spike" in result.stderr and "peak 100 users over 180s" in result.stderr
    stats = {row["Name"]: row for row in read_csv(tmp_path / "x_stats.csv")}
    assert int(stats["Process"]["Request Count"]) > 0
    assert int(stats["Process"]["Failure Count"]) == 0
    # The spike's base: ceil(100 / 10) users during the first 60 s.
    assert max(int(r["User Count"]) for r in read_csv(tmp_path / "x_stats_history.csv")) == 10


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
    result = run_stepchain(["loadtest", "--curve", "step", "--users", "2", "--step-count", "5",
                            "--target", "127.0.0.1:1", "--out", str(out)], timeout=60)
    assert result.returncode == 2
    assert "stepchain loadtest: step curve: --step-count must be a whole number between 1 and " \
           "--users (2)" in result.stderr
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

"""``stepchain jobs`` against a real topology service process: submit --wait draws progress
and exits 0 only when every input has an output; status, list, cancel; --json."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_fixtures import photo_bytes

from bench._jobs_harness import ServiceProcess
from topology.local.launch import installed_stepchain

pytestmark = pytest.mark.slow  # a service, its steps and workers as processes

PIPELINE = {"name": "jobscli", "steps": [{"type": "grayscale"},
                                         {"type": "gaussian_blur", "params": {"sigma": 1.0}}]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("jobs-cli")
    process = ServiceProcess(state, {**os.environ, "STEPCHAIN_STATE_DIR": str(state)})
    process.start()
    process.create_pipeline(PIPELINE)
    try:
        yield process
    finally:
        process.stop()


def jobs(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*installed_stepchain(), "jobs", *args, "--topology", service.url],
                          capture_output=True, text=True, timeout=180)


def test_submit_wait_exits_0_when_every_input_has_an_output(service: ServiceProcess,
                                                            tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"p{i}.png").write_bytes(photo_bytes(i))
    done = jobs(service, "submit", "--pipeline", "jobscli", "--input", str(src), "--output",
                str(tmp_path / "out"), "--concurrency", "2", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "total 4, done 4, failed 0" in done.stdout
    assert "4/4" in done.stderr  # the progress bar
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_stepchain", "p0.png", "p1.png", "p2.png", "p3.png"]
    job_id = done.stdout.split(":", 1)[0].split()[-1]
    status = jobs(service, "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    listed = jobs(service, "list")
    assert job_id in listed.stdout and "4/4 done" in listed.stdout


def test_a_failed_item_makes_wait_exit_1_and_names_it(service: ServiceProcess,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(photo_bytes(1))
    (src / "b.png").write_bytes(b"not a png at all")
    done = jobs(service, "submit", "--pipeline", "jobscli", "--input", f"file://{src}/",
                "--output", f"file://{tmp_path}/out/", "--wait", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "failed" and job["counts"]["done"] == 1
    assert job["failed_items"][0]["input"].endswith("b.png")
    assert job["failed_items"][0]["code"] == "INVALID_ARGUMENT"


def test_refusals_exit_2_naming_the_field(service: ServiceProcess, tmp_path: Path) -> None:
    refused = jobs(service, "submit", "--pipeline", "nope", "--input", str(tmp_path),
                   "--output", str(tmp_path / "o"))
    assert refused.returncode == 2
    assert "HTTP 422: pipeline: no pipeline 'nope'" in refused.stderr
    missing = jobs(service, "status", "j000000000000")
    assert missing.returncode == 2 and "no job" in missing.stderr

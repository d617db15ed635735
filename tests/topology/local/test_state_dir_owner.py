"""One live topology service per state dir (real `stepchain topology serve` processes).

A second service on a live service's state dir, on the same port or another, refuses to start,
names the owner's pid and address and the way to run a second service (--state-dir), and
changes nothing in the dir; the first keeps serving. A dir whose owner crashed is adopted by
the next service, which brings its pipelines back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from step_fixtures import noisy_image, raw_request
from stepchain.v1 import step_pb2_grpc
from topology_fixtures import ROOT, Service

from topology.service.auth import client_token

pytestmark = pytest.mark.slow

PIPELINE = {"name": "owned", "steps": [{"type": "identity", "next_step": 1},
                                       {"type": "grayscale"}]}


def snapshot(state_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under the state dir: its modification time and content."""
    return {str(path.relative_to(state_dir)): (path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(state_dir.rglob("*")) if path.is_file()}


def serve_again(state_dir: Path, port: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepsvc.cli", "topology", "serve", "--port", port,
         "--state-dir", str(state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def process_through(entrypoint: str) -> list[int]:
    with grpc.insecure_channel(entrypoint) as channel:
        response = step_pb2_grpc.StepServiceStub(channel).Process(
            raw_request(noisy_image()), timeout=30)
    return [timing.step_id for timing in response.timings]


def test_a_second_service_on_a_live_services_state_dir_refuses_and_changes_nothing(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Service(state)
    try:
        with first.api(client_token(state)) as api:
            created = api.post("/pipeline", json=PIPELINE)
            assert created.status_code == 201, created.text
            entrypoint = created.json()["entrypoint"]
            pids = api.get("/pipeline/owned").json()["details"]["pids"]
        before = snapshot(state)
        port = str(urlparse(first.url).port)
        for second_port in (port, "0"):  # the owner's port (taken) or any other
            refused = serve_again(state, second_port)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            said = refused.stderr
            assert f"belongs to the topology service pid {first.proc.pid} at {first.url}" in said
            assert "--state-dir DIR" in said
            assert "Traceback" not in said
            assert snapshot(state) == before  # no step started, no file rewritten
        with first.api(None) as api:
            status = api.get("/pipeline/owned").json()
        assert status["ready"] and status["details"]["pids"] == pids
        assert process_through(entrypoint) == [0, 1]  # the first service's steps still serve
    finally:
        assert first.stop() == 0
    assert not (state / "owner.json").exists()  # a clean stop leaves the dir to the next


def test_a_crashed_services_state_dir_is_adopted_by_the_next_service(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crashed = Service(state)
    with crashed.api(client_token(state)) as api:
        assert api.post("/pipeline", json=PIPELINE).status_code == 201
    crashed.stop(signal.SIGKILL)  # no cleanup at all: the lock goes with the process
    assert json.loads((state / "owner.json").read_text())["pid"] == crashed.proc.pid
    # It brings the pipeline back (and reaps what the crash left) before it serves: on a busy
    # machine that takes longer than an empty service's start.
    successor = Service(state, start_timeout=180)
    try:
        assert json.loads((state / "owner.json").read_text())["pid"] == successor.proc.pid
        with successor.api(None) as api:
            status = api.get("/pipeline/owned").json()
        assert status["ready"], status
        assert process_through(status["entrypoint"]) == [0, 1]
    finally:
        assert successor.stop() == 0

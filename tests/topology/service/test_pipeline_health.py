"""Health that tells the truth (real `topology serve` and step processes): a hop a request
cannot take shows in GET /pipeline/{id} (degraded, not ready when a step is cut off, the reason
per next step), in the console (the edge red with the reason) and in `stepchain top`.

The hop is broken as the issue saw it: the step's discovery file names a port nothing listens
on (a duplicate service rewrote it), while every process is up and "ready".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from step_fixtures import free_port
from topology_fixtures import ROOT, Service

from topology.service.auth import client_token

pytestmark = pytest.mark.slow

PIPELINE = {"name": "hops", "steps": [
    {"step_id": 0, "type": "identity", "next_step": [1, 2], "preferred_next": 1},
    {"step_id": 1, "type": "grayscale", "next_step": 3},
    {"step_id": 2, "type": "edges", "next_step": 3},
    {"step_id": 3, "type": "identity"},
]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("health") / "state")
    try:
        with running.api(client_token(running.state_dir)) as api:
            assert api.post("/pipeline", json=PIPELINE).status_code == 201
        yield running
    finally:
        running.stop()


def point_at_nothing(service: Service, step_id: int) -> dict[str, Any]:
    """Rewrites discovery so `step_id`'s address is a port nothing listens on; returns the
    file's previous content."""
    path = service.state_dir / "hops" / "discovery.json"
    before = json.loads(path.read_text())
    path.write_text(json.dumps({**before, str(step_id): f"127.0.0.1:{free_port()}"}))
    return before


def status_until(service: Service, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with service.api(None) as api:
        while True:
            body = api.get("/pipeline/hops").json()
            if check(body) or time.monotonic() > deadline:
                return body
            time.sleep(0.5)


def test_a_hop_to_nowhere_makes_the_pipeline_degraded_then_not_ready_and_back(
        service: Service) -> None:
    healthy = status_until(service, lambda b: b["ready"] and all(
        hop["reachable"] for s in b["steps"] for hop in s["next_steps"]))
    assert healthy["ready"] and not healthy["degraded"] and healthy["problems"] == []
    assert [h["step_id"] for h in healthy["steps"][0]["next_steps"]] == [1, 2]

    saved = point_at_nothing(service, 2)  # step 0 keeps step 1: it fails over
    try:
        degraded = status_until(service, lambda b: b["degraded"])
        assert degraded["ready"] and degraded["degraded"]
        [problem] = degraded["problems"]
        assert problem.startswith("step 0 cannot reach step 2: ")
        assert "its requests fail over to its other next steps" in problem
        hop = degraded["steps"][0]["next_steps"][1]
        assert hop["step_id"] == 2 and not hop["reachable"] and hop["reason"]
        assert all(s["ready"] for s in degraded["steps"])  # every process serves

        point_at_nothing(service, 3)  # steps 1 and 2 lose their only next step
        cut = status_until(service, lambda b: not b["ready"])
        assert not cut["ready"]
        assert cut["problems"][0].startswith("step 1 can reach none of its next steps")

        with service.api(None) as api:
            page = api.get("/console/pipelines/hops").text
        assert "not ready" in page and "can reach none of its next steps" in page
        assert page.count("class='edge broken'") == 3  # 0->2, 1->3, 2->3 drawn red
        assert "<title>unreachable: " in page

        frame = subprocess.run(
            [sys.executable, "-m", "stepsvc.cli", "top", "--topology", service.url, "--once",
             "--pipeline", "hops"], capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"}).stdout
        assert "NOT READY" in frame
        assert "! step 1 can reach none of its next steps" in " ".join(frame.split())
        assert any(line.startswith("1 grayscale!") for line in frame.splitlines()), frame
    finally:
        (service.state_dir / "hops" / "discovery.json").write_text(json.dumps(saved))
    back = status_until(service, lambda b: b["ready"] and not b["degraded"])
    assert back["ready"] and not back["degraded"], back["problems"]


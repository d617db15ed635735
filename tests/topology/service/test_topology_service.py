"""`stepchain topology serve` as a real process: the token it prints and keeps, its exit code.

Everything on loopback, every process started here is stopped here by pid.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from topology_fixtures import Service

from topology.service.auth import client_token

#: Slow (over ~5 s each): each test starts a real `stepchain topology serve` and its steps.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test started; whatever is still running at the end is killed."""
    started: list[Service] = []
    yield started
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()


PIPELINE: dict[str, Any] = json.loads((ROOT / "examples" / "sequential.json").read_text())


def test_serve_prints_its_url_with_the_token_it_generated_and_writes_need_it(
        tmp_path: Path, services: list[Service]) -> None:
    service = Service(tmp_path / "state")
    services.append(service)
    token = (tmp_path / "state" / "token").read_text().strip()
    assert (tmp_path / "state" / "token").stat().st_mode & 0o777 == 0o600
    assert f"{service.url}?token={token}" in service.output()
    with service.api(None) as anonymous:
        refused = anonymous.post("/pipeline", params={"dry_run": "true"}, json=PIPELINE)
        assert refused.status_code == 401
        assert anonymous.get("/pipelines").status_code == 200  # reads stay open
    with service.api(client_token(tmp_path / "state")) as api:
        assert api.post("/pipeline", params={"dry_run": "true"},
                        json=PIPELINE).status_code == 200


def test_no_auth_logs_a_warning_and_accepts_writes(tmp_path: Path,
                                                   services: list[Service]) -> None:
    service = Service(tmp_path / "state", "--no-auth")
    services.append(service)
    with service.api(None) as api:
        assert api.post("/pipeline", params={"dry_run": "true"},
                        json=PIPELINE).status_code == 200
    assert "auth is OFF" in service.output()
    assert not (tmp_path / "state" / "token").exists()


def test_sigterm_exits_zero(tmp_path: Path, services: list[Service]) -> None:
    service = Service(tmp_path / "state")
    services.append(service)
    assert service.stop(signal.SIGTERM) == 0


def create(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    with service.api(client_token(service.state_dir)) as api:
        reply = api.post("/pipeline", json=body)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def step_pids(created: dict[str, Any]) -> list[int]:
    return [int(r["pid"]) for r in created["resources"] if r["kind"] == "Process"]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if running(p)]


def test_sigkill_of_the_service_takes_its_steps_down_within_2_s_and_a_restart_brings_them_back(
        tmp_path: Path, services: list[Service]) -> None:
    state = tmp_path / "state"
    first = Service(state)
    services.append(first)
    created = create(first, PIPELINE)
    pids = step_pids(created)
    assert len(pids) == 3 and all(running(p) for p in pids)

    first.proc.kill()  # SIGKILL: no shutdown code runs in the service
    first.proc.wait(10)
    left = wait_gone(pids, 2.0)
    assert not left, f"step processes {left} outlived the service by 2 s"

    second = Service(state)
    services.append(second)
    with second.api(None) as api:
        listed = api.get("/pipelines").json()["pipelines"]
        assert [p["pipeline_id"] for p in listed] == ["sequential"]
        status = api.get("/pipeline/sequential").json()
    assert status["ready"] is True
    assert status["entrypoint"] == created["entrypoint"]  # its port was free again
    new_pids = [int(p) for p in status["details"]["pids"].values()]
    assert not set(new_pids) & set(pids) and all(running(p) for p in new_pids)

    # SIGTERM: the steps are stopped first, then the service exits 0 ...
    assert second.stop(signal.SIGTERM) == 0
    assert not wait_gone(new_pids, 0.5)
    # ... and the pipeline is still there for the next start.
    third = Service(state)
    services.append(third)
    with third.api(None) as api:
        assert [p["pipeline_id"] for p in api.get("/pipelines").json()["pipelines"]] == [
            "sequential"]
    with third.api(client_token(state)) as api:
        assert api.delete("/pipeline/sequential").status_code == 200
    assert third.stop() == 0
    fourth = Service(state)  # DELETE forgets
    services.append(fourth)
    with fourth.api(None) as api:
        assert api.get("/pipelines").json()["pipelines"] == []


def test_replicas_zero_starts_no_process_and_get_says_so(tmp_path: Path,
                                                          services: list[Service]) -> None:
    service = Service(tmp_path / "state")
    services.append(service)
    created = create(service, {"name": "scaled", "steps": [
        {"type": "identity", "next_step": 1}, {"type": "identity", "replicas": 0}]})
    assert len(step_pids(created)) == 1
    with service.api(None) as api:
        status = api.get("/pipeline/scaled").json()
    idle = status["steps"][1]
    assert (idle["replicas"], idle["ready_replicas"], idle["ready"], idle["address"]) == (
        0, 0, False, None)

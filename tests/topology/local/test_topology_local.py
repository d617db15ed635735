"""The local backend end to end: real step processes on loopback, a real photograph through
the entrypoint, then nothing left running."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from skimage import data
from topology_fixtures import api_client

from stepsvc.client import call as step_client
from stepsvc.frames import codec
from topology.local.backend import LocalBackend
from topology.pipeline.graph import parse_pipeline
from topology.service.app import create_app
from topology.service.settings import Settings, settings_from

ROOT = Path(__file__).resolve().parents[3]
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def submit_photo(entrypoint: str) -> step_client.SubmitResult:
    photo = data.astronaut()  # a real 512x512 RGB photograph
    request = step_client.build_request(codec.raw_image(photo))
    with step_client.connect(entrypoint) as channel:
        return step_client.submit(channel, request, timeout=60)


@pytest.mark.slow
def test_post_submit_delete_runs_the_pipeline_and_leaves_no_process(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    with api_client(app) as api:
        created = api.post("/pipeline", json=DEMO)
        assert created.status_code == 201, created.text
        body = created.json()
        pids = [r["pid"] for r in body["resources"] if r["kind"] == "Process"]
        assert len(pids) == 4 and all(running(pid) for pid in pids)
        assert body["entrypoint"].startswith("127.0.0.1:")

        status = api.get("/pipeline/demo").json()
        assert status["ready"] is True
        assert [s["type"] for s in status["steps"]] == ["classify", "grayscale", "deblur",
                                                        "resize"]

        result = submit_photo(body["entrypoint"])
        timings = result.response.timings
        # A sharp colour photo takes the preferred successor (grayscale), then resize.
        assert [(t.step_id, t.step_type) for t in timings] == [
            (0, "classify"), (1, "grayscale"), (3, "resize")]
        assert all(t.pipeline_id == "demo" and t.total_ms > 0 for t in timings)
        assert {t.host for t in timings} == {"demo-step-0", "demo-step-1", "demo-step-3"}
        image = result.image_array()
        assert image.shape == (256, 256, 1)
        assert image.dtype == np.uint8 and image.std() > 10

        deleted = api.delete("/pipeline/demo")
        assert deleted.status_code == 200
        assert not any(running(pid) for pid in pids)
        assert not (tmp_path / "demo").exists()
        assert api.get("/pipeline/demo").status_code == 404


@pytest.mark.slow
def test_a_relative_state_dir_works_resolved_once_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_from({"state_dir": "state", "no_auth": True}, {})
    assert settings.state_dir == (tmp_path / "state").resolve()
    one_step = {"name": "rel", "steps": [{"type": "grayscale"}]}
    # Steps run in their pipeline's folder: a relative config path would name another place.
    with api_client(create_app(settings, LocalBackend(Path("state")))) as api:
        created = api.post("/pipeline", json=one_step)
        assert created.status_code == 201, created.text
        result = submit_photo(created.json()["entrypoint"])
        assert [t.step_type for t in result.response.timings] == ["grayscale"]
        assert api.delete("/pipeline/rel").status_code == 200


@pytest.mark.slow
def test_service_shutdown_stops_every_step_process(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))
    with api_client(app) as api:
        created = api.post("/pipeline", json={"name": "one", "steps": [{"type": "identity"}]})
        assert created.status_code == 201, created.text
        pids = [r["pid"] for r in created.json()["resources"] if r["kind"] == "Process"]
        assert pids and all(running(pid) for pid in pids)
    # Leaving the context runs the app's shutdown (lifespan), as SIGTERM to uvicorn does.
    assert not any(running(pid) for pid in pids)


@pytest.mark.slow
def test_update_restarts_only_changed_steps_and_stops_removed_ones(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    try:
        first = backend.apply(parse_pipeline(
            {"name": "upd", "steps": [{"type": "identity"}, {"type": "edges"}]}))
        pids = {r["name"]: r["pid"] for r in first.resources if r["kind"] == "Process"}
        second = backend.apply(parse_pipeline(
            {"name": "upd", "steps": [{"type": "identity", "next_step": []}]}))
        after = {r["name"]: r["pid"] for r in second.resources if r["kind"] == "Process"}
        assert set(after) == {"upd-step-0"}
        assert not running(pids["upd-step-1"])
        # Step 0's config changed (it no longer forwards): it was restarted.
        assert after["upd-step-0"] != pids["upd-step-0"]
        assert json.loads((tmp_path / "upd" / "discovery.json").read_text()) == {
            "0": second.entrypoint}
    finally:
        backend.close()


@pytest.mark.slow
def test_restarted_service_stops_what_its_predecessor_left_and_brings_the_pipeline_back(
        tmp_path: Path) -> None:
    crashed = LocalBackend(tmp_path)
    submitted = {"name": "orphan", "steps": [{"type": "identity"}]}
    result = crashed.apply(replace(parse_pipeline(submitted), source=submitted))
    pids = [r["pid"] for r in result.resources if r["kind"] == "Process"]
    successor = None
    try:
        # A new service on the same state dir (the old one "crashed" without cleanup).
        successor = LocalBackend(tmp_path)
        assert not any(running(pid) for pid in pids)
        assert successor.restored == ["orphan"]
        status = successor.status("orphan")
        assert status is not None and status.ready
        assert status.entrypoint == result.entrypoint  # its port was free again
        assert status.http_entrypoint == result.http_entrypoint
        assert status.spec == submitted  # GET still answers the definition as submitted
        assert status.details["pids"]["0"] not in pids
    finally:
        if successor is not None:
            successor.close()
        crashed.close()


@pytest.mark.slow
def test_step_with_zero_replicas_runs_no_process_and_status_says_so(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    try:
        result = backend.apply(parse_pipeline({"name": "idle", "steps": [
            {"type": "identity", "next_step": 1}, {"type": "identity", "replicas": 0}]}))
        processes = [r for r in result.resources if r["kind"] == "Process"]
        assert [r["name"] for r in processes] == ["idle-step-0"]
        status = backend.status("idle")
        assert status is not None
        scaled = status.steps[1]
        assert (scaled.replicas, scaled.ready_replicas, scaled.ready, scaled.address) == (
            0, 0, False, None)
        discovery = json.loads((tmp_path / "idle" / "discovery.json").read_text())
        assert "1" not in discovery
    finally:
        backend.close()


def test_step_that_cannot_start_is_reported_with_its_log(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A step process that exits at once, as a broken installation would.
    monkeypatch.setattr("topology.local.launch.STEP_LAUNCHER",
                        (sys.executable, "-c", "import sys; print('cannot start'); sys.exit(3)"))
    backend = LocalBackend(tmp_path / "state")
    try:
        from topology.backend import BackendError

        with pytest.raises(BackendError, match=r"(?s)exited with code 3.*cannot start"):
            backend.apply(parse_pipeline({"name": "broken", "steps": [{"type": "identity"}]}))
        assert backend.list_pipelines() == []
    finally:
        backend.close()


@pytest.mark.slow
def test_step_whose_port_was_taken_is_started_again_on_another_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import topology.local.backend as local

    # Someone else listens on the first "free" port before the step binds it.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_ports = local.free_ports
    offered: list[list[int]] = []

    def free_ports(count: int) -> list[int]:
        ports = [taken] * count if not offered else real_free_ports(count)
        offered.append(ports)
        return ports

    monkeypatch.setattr(local, "free_ports", free_ports)
    backend = LocalBackend(tmp_path)
    try:
        result = backend.apply(parse_pipeline({"name": "port", "steps": [{"type": "identity"}]}))
        assert len(offered) == 2
        assert result.entrypoint != f"127.0.0.1:{taken}"
        status = backend.status("port")
        assert status is not None and status.ready
    finally:
        backend.close()
        squatter.close()


def test_restart_policy_allows_five_restarts_a_minute_with_doubling_backoff() -> None:
    from topology.local.supervisor import RestartPolicy

    policy = RestartPolicy()
    delays = []
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        at = policy.next_restart(now)
        assert at is not None
        delays.append(at - now)
        policy.restarted(at)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert policy.next_restart(30.0) is None  # five within the last minute: give up
    assert policy.next_restart(70.0) is not None  # the oldest ones left the window


def wait_for_status(api: TestClient, pipeline_id: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = api.get(f"/pipeline/{pipeline_id}").json()
        if check(status):
            return status
        assert time.monotonic() < deadline, f"status never matched: {status}"
        time.sleep(0.2)


HEAL = {"name": "heal", "steps": [{"type": "grayscale"}, {"type": "identity"}]}


@pytest.mark.slow
def test_step_process_that_died_is_restarted_on_its_port_and_the_pipeline_serves_again(
        tmp_path: Path) -> None:
    from topology.local.supervisor import RestartPolicy

    backend = LocalBackend(tmp_path, restart_policy=lambda: RestartPolicy(backoff_s=0.1),
                           supervise_interval_s=0.1)
    with api_client(create_app(Settings(state_dir=tmp_path), backend)) as api:
        created = api.post("/pipeline", json=HEAL)
        assert created.status_code == 201, created.text
        before = api.get("/pipeline/heal").json()
        victim = before["details"]["pids"]["1"]
        os.kill(victim, signal.SIGKILL)

        healed = wait_for_status(api, "heal", lambda s: s["ready"]
                                 and s["details"]["pids"]["1"] != victim)
        assert not running(victim)
        assert [(s["restarts"], s["error"]) for s in healed["steps"]] == [(0, None), (1, None)]
        assert healed["steps"][1]["address"] == before["steps"][1]["address"]
        timings = submit_photo(created.json()["entrypoint"]).response.timings
        assert [(t.step_id, t.step_type) for t in timings] == [(0, "grayscale"), (1, "identity")]
        restarted = healed["details"]["pids"]["1"]
    assert not running(restarted)  # the service's shutdown stops restarted steps too


@pytest.mark.slow
def test_step_that_keeps_exiting_is_given_up_and_reported_with_its_log(tmp_path: Path) -> None:
    from topology.local.supervisor import RestartPolicy

    backend = LocalBackend(tmp_path, supervise_interval_s=0.1,
                           restart_policy=lambda: RestartPolicy(max_restarts=2, backoff_s=0.05))
    with api_client(create_app(Settings(state_dir=tmp_path), backend)) as api:
        assert api.post("/pipeline", json=HEAL).status_code == 201
        # From now on the step cannot start: its config is broken.
        (tmp_path / "heal" / "step-1.yaml").write_text("steps: [", encoding="utf-8")
        os.kill(api.get("/pipeline/heal").json()["details"]["pids"]["1"], signal.SIGKILL)

        failed = wait_for_status(api, "heal", lambda s: s["steps"][1]["error"] is not None)
        step = failed["steps"][1]
        assert failed["ready"] is False and step["ready"] is False
        assert step["restarts"] == 2
        assert "restarted 2 times within 60 s" in step["error"]
        assert "not valid YAML or JSON" in step["error"]  # the log tail says what is wrong
        time.sleep(0.5)
        assert api.get("/pipeline/heal").json()["steps"][1]["restarts"] == 2  # no more tries

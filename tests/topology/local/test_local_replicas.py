"""Replicas in the local backend: `replicas` processes per step, all in discovery, all busy,
each restarted on its own port."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stepsvc.client import call as step_client
from stepsvc.frames import codec
from topology.local.backend import LocalBackend
from topology.pipeline.graph import parse_pipeline

PIPELINE = {"name": "rep", "steps": [
    {"type": "identity"},
    {"type": "gaussian_blur", "params": {"sigma": 1.0}, "replicas": 3},
]}


@pytest.fixture()
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    local = LocalBackend(tmp_path)
    try:
        yield local
    finally:
        local.close()


def hosts_of_step(entrypoint: str, step_id: int, requests: int) -> Counter[str]:
    """Sends `requests` small images; counts which replica (timing host) ran `step_id`."""
    image = codec.raw_image(np.zeros((16, 16, 3), dtype=np.uint8))
    seen: Counter[str] = Counter()
    with step_client.connect(entrypoint) as channel:
        for i in range(requests):
            request = step_client.build_request(image, request_id=f"r{i}")
            timings = step_client.submit(channel, request, timeout=30).response.timings
            seen.update(t.host for t in timings if t.step_id == step_id)
    return seen


@pytest.mark.slow
def test_every_replica_of_a_step_gets_its_share_of_the_requests(
        backend: LocalBackend, tmp_path: Path) -> None:
    result = backend.apply(parse_pipeline(PIPELINE))
    discovery = json.loads((tmp_path / "rep" / "discovery.json").read_text())
    assert len(discovery["1"]) == 3 and len(set(discovery["1"])) == 3
    status = backend.status("rep")
    assert status is not None
    step1 = status.steps[1]
    assert (step1.replicas, step1.ready_replicas, len(step1.metrics)) == (3, 3, 3)

    # round_robin's steady state: every replica connected (each has answered once)
    deadline = time.monotonic() + 30
    while len(hosts_of_step(result.entrypoint, 1, 6)) < 3:
        assert time.monotonic() < deadline, "a replica never got a request"
    spread = hosts_of_step(result.entrypoint, 1, 60)
    assert set(spread) == {"rep-step-1-0", "rep-step-1-1", "rep-step-1-2"}
    mean = sum(spread.values()) / 3
    assert all(abs(n - mean) <= 0.2 * mean for n in spread.values()), spread


@pytest.mark.slow
def test_a_killed_replica_is_restarted_on_its_own_port_and_requests_keep_flowing(
        backend: LocalBackend, tmp_path: Path) -> None:
    result = backend.apply(parse_pipeline(PIPELINE))
    before = json.loads((tmp_path / "rep" / "discovery.json").read_text())
    pids = [r["pid"] for r in result.resources if r["name"] == "rep-step-1-1"]
    os.kill(pids[0], signal.SIGKILL)
    # the other replicas take the requests while it is down
    assert sum(hosts_of_step(result.entrypoint, 1, 6).values()) == 6
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = backend.status("rep")
        assert status is not None
        if status.steps[1].restarts == 1 and status.steps[1].ready_replicas == 3:
            break
        time.sleep(0.2)
    assert status.steps[1].restarts == 1 and status.steps[1].ready_replicas == 3
    assert json.loads((tmp_path / "rep" / "discovery.json").read_text()) == before
    # upstream's channel reconnects to it within its reconnect backoff (at most 2 s)
    deadline = time.monotonic() + 20
    while "rep-step-1-1" not in hosts_of_step(result.entrypoint, 1, 6):
        assert time.monotonic() < deadline, "the restarted replica never got a request again"


@pytest.mark.slow
def test_a_replicated_entry_step_answers_one_host_port_entrypoint_and_a_round_robin_target(
        backend: LocalBackend) -> None:
    # grpcurl and curl take host:port only: an ipv4: list as `entrypoint` broke them
    pipeline = {"name": "ent", "steps": [{"type": "identity", "replicas": 2, "next_step": 1},
                                        {"type": "identity"}]}
    result = backend.apply(parse_pipeline(pipeline))
    assert result.entrypoint is not None and result.entrypoint.startswith("127.0.0.1:")
    assert "," not in result.entrypoint
    target = result.details["entry_target"]
    assert target.startswith("ipv4:") and result.entrypoint in target and target.count(",") == 1
    status = backend.status("ent")
    assert status is not None
    assert (status.entrypoint, status.details["entry_target"]) == (result.entrypoint, target)
    assert sum(hosts_of_step(target, 0, 4).values()) == 4
    assert sum(hosts_of_step(result.entrypoint, 0, 2).values()) == 2

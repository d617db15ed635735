"""`stepchain top` and `GET /pipeline/{id}/advice` against real step processes under load:
quiet, every step is "maintain"; saturated, the busy step is the bottleneck, sized by the CPU a
request costs against the cores a replica has ("host is the limit" when its host is saturated,
as a 2-core machine running every step is). And `top` on a real terminal: tmux, read back with
capture-pane, at 180 columns and at a terminal's default 80 x 24.

Loopback only; the load is a bounded number of requests from a few threads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from topology_fixtures import Service

from stepsvc.client import call as step_client
from stepsvc.frames import codec
from topology.service.auth import client_token

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = {"name": "load", "steps": [
    {"step_id": 0, "type": "identity", "next_step": 1},
    {"step_id": 1, "type": "gaussian_blur", "params": {"sigma": 3.0}, "threads": 1},
]}
#: More closed-loop clients than the step's 16 in-flight slots, each request HEAVY_PASSES blur
#: passes: the blur step, not the client or step 0, takes the host's CPU, so it ends over its
#: target ("scale up") or on a saturated host ("host is the limit"). With 6 clients and 6
#: passes a quiet host sat at 89 % busy with the blur step at 58 % of its slots, and the advice
#: rightly said "maintain".
SATURATING_CLIENTS = 20
LOAD_SECONDS = 6.0
HEAVY_PASSES = 24

pytestmark = pytest.mark.slow


#: Seconds a service gets to come up again with its pipeline's steps (on 2 shared cores at
#: load 20, restoring them took over the default 30 s).
RESTART_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[tuple[Service, dict[str, Any]]]:
    """One service and pipeline for the module's tests (each starts in 7+ s), on a port of
    its own so the last test can restart it there."""
    from stepsvc.ports import free_port

    service = Service(tmp_path_factory.mktemp("top") / "state", "--port", str(free_port()))
    try:
        with service.api(client_token(service.state_dir)) as api:
            reply = api.post("/pipeline", json=PIPELINE)
            assert reply.status_code == 201, reply.text
            yield service, reply.json()
    finally:
        for running in (service, *RESTARTED):
            running.stop()


#: Services a test started again in place of the fixture's (the fixture stops them too).
RESTARTED: list[Service] = []


def photo_request(passes: int = 0) -> Any:
    import numpy as np
    from skimage import data

    image = np.ascontiguousarray(data.astronaut())
    return step_client.build_request(codec.raw_image(image), passes=passes)


def send(entrypoint: str, count: int, pause: float = 0.0) -> None:
    request = photo_request()
    with step_client.connect(entrypoint) as channel:
        for _ in range(count):
            step_client.submit(channel, request, timeout=60)
            time.sleep(pause)


def saturate(entrypoint: str, seconds: float, clients: int) -> int:
    """`clients` closed-loop senders of heavy requests (every kernel run HEAVY_PASSES times)
    for `seconds`; returns the requests answered."""
    request = photo_request(HEAVY_PASSES)
    stop = time.monotonic() + seconds
    done = [0] * clients

    def loop(i: int) -> None:
        with step_client.connect(entrypoint) as channel:
            while time.monotonic() < stop:
                try:
                    step_client.submit(channel, request, timeout=60)
                except grpc.RpcError as exc:  # a full step refuses: the advice counts that
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    continue
                done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return sum(done)


def top_once(service: Service) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stepsvc.cli", "top", "--topology", service.url, "--once"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_advice_moves_from_maintain_to_scale_up_when_a_step_saturates(
        pipeline: tuple[Service, dict[str, Any]]) -> None:
    service, created = pipeline
    entry = created["entrypoint"]
    with service.api(None) as api:
        api.get("/pipeline/load/advice")  # the service starts watching: rates from here on
        send(entry, 4, pause=0.4)
        quiet = api.get("/pipeline/load/advice").json()
        assert [s["step_id"] for s in quiet["steps"]] == [0, 1]  # flow order
        assert {s["advice"]["action"] for s in quiet["steps"]} == {"maintain"}
        assert all(s["requests"] > 0 for s in quiet["steps"])
        frame = top_once(service)
        assert "pipeline load" in frame and "keep 1->1" in frame and "UP" not in frame

        # Saturate the blur step while polling the advice every 2 s, as the console does.
        answered: list[int] = []
        load = threading.Thread(target=lambda: answered.append(
            saturate(entry, LOAD_SECONDS, SATURATING_CLIENTS)))
        load.start()
        readings = []
        while load.is_alive():
            time.sleep(2.0)
            readings.append(api.get("/pipeline/load/advice").json())
        load.join()
        assert answered and answered[0] > SATURATING_CLIENTS
        busy = readings[-2] if len(readings) > 1 else readings[-1]  # the last under load
    blur = busy["steps"][1]
    advice = blur["advice"]
    target = busy["target_utilisation"]
    assert busy["bottleneck_step"] == 1
    # Sized by what a replica consumes: CPU per request x requests/s against the cores a
    # replica has (here the host's), or in-flight slots, whichever is tighter.
    admitted = blur["requests_per_s"] - blur["refusals_per_s"]
    by_cpu = admitted * blur["cpu_s_per_request"] / (blur["cpu_cores"] * target)
    assert blur["cpu_source"] == "host" and blur["cpu_cores"] >= 1
    assert advice["needed"] >= by_cpu * (1 - 1e-3)
    if blur["host_busy_pct"] >= 90:
        # The saturated step shares its host with everything else: one host, no CPU to add.
        assert advice["action"] == "host is the limit", blur
        assert advice["advised_replicas"] == 1 and advice["kubectl"] == ""
        assert "More replicas on this host add no CPU" in advice["reason"]
    else:
        assert advice["action"] == "scale up", blur
        assert advice["advised_replicas"] > 1
        assert blur["utilisation"] > target
        assert advice["kubectl"] == (
            f"kubectl scale deployment/load-step-1 --replicas={advice['advised_replicas']}"
            " -n default")
    assert "CPU per request" in advice["reason"] or "in-flight slots" in advice["reason"]


def test_top_targets_step_metrics_directly(pipeline: tuple[Service, dict[str, Any]]) -> None:
    service, created = pipeline
    send(created["entrypoint"], 2)
    with service.api(None) as api:
        steps = api.get("/pipeline/load").json()["steps"]
    targets = [arg for s in steps for m in s["metrics"] for arg in ("--target", m)]
    result = subprocess.run(
        [sys.executable, "-m", "stepsvc.cli", "top", *targets, "--once"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("0 identity", "1 gaussian_blur"))]
    assert len(rows) == 2, result.stdout
    assert "/16" in rows[0]  # busy/in-flight/limit


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="no tmux: `apt-get install tmux` (make test runs "
                           "tests/install-test-tools.sh to do it)")
def test_top_refreshes_on_a_real_terminal_in_tmux(
        pipeline: tuple[Service, dict[str, Any]]) -> None:
    service, created = pipeline
    socket = f"stepchain-top-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    command = (f"{sys.executable} -m stepsvc.cli top --topology {service.url} --interval 1")
    # The terminal's own size, not a COLUMNS/LINES inherited from whoever runs the tests.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    subprocess.run([*tmux, "new-session", "-d", "-x", "180", "-y", "40", "-s", "top",
                    command], check=True, cwd=ROOT, env=env)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"],
                                  capture_output=True, text=True, check=True).stdout

        deadline = time.monotonic() + 30
        while "pipeline load" not in screen() and time.monotonic() < deadline:
            time.sleep(0.3)
        first = screen()
        assert "stepchain top" in first and "pipeline load" in first
        assert "0 identity" in first and "1 gaussian_blur" in first
        send(created["entrypoint"], 3)
        # The screen refreshes by itself: the requests just sent show up as a rate.
        deadline = time.monotonic() + 30
        rate = 0.0
        while rate <= 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            row = next(line for line in screen().splitlines() if "1 gaussian_blur" in line)
            cells = row.split()  # step, type, [*], rep, busy/infl/lim, util%, queue, req/s
            rate = float(cells[next(i for i, c in enumerate(cells) if c.endswith("%")) + 2])
        assert rate > 0, screen()
        subprocess.run([*tmux, "send-keys", "-t", "top", "C-c"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run([*tmux, "has-session", "-t", "top"], capture_output=True)
            if alive.returncode != 0:
                break  # top exited on Ctrl-C and its window closed
            time.sleep(0.2)
        else:
            raise AssertionError("top did not exit on Ctrl-C:\n" + screen())
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="no tmux: `apt-get install tmux` (make test runs "
                           "tests/install-test-tools.sh to do it)")
def test_top_fits_an_80_column_terminal_keeps_the_bottleneck_and_waits_for_a_restart(
        pipeline: tuple[Service, dict[str, Any]]) -> None:
    service, created = pipeline  # the module's last test: it restarts the service
    port = service.url.rstrip("/").rsplit(":", 1)[1]
    socket = f"stepchain-top-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"],
                              capture_output=True, text=True, check=True).stdout

    def wait_screen(what: str, check: Any, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = screen()
            if check(text):
                return text
            time.sleep(0.3)
        raise AssertionError(f"no {what} on the screen:\n{screen()}")

    try:
        # A terminal's default size: 80 x 24.
        subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", "top",
                        f"{sys.executable} -m stepsvc.cli top --topology {service.url} "
                        "--interval 1"], check=True, cwd=ROOT, env=env)
        wait_screen("step table", lambda t: "1 gaussian_blur" in t)
        send(created["entrypoint"], 4)
        rows = wait_screen("a bottleneck mark", lambda t: any(
            line.startswith(("0 identity*", "1 gaussian_blur*")) for line in t.splitlines()))
        assert "…" not in rows, rows  # no column cut to an ellipsis
        assert re.search(r"^pipeline load +window [\d.]+ s  target 70%$", rows, re.M), rows
        assert "advice" in rows and ("keep 1->1" in rows or "UP 1->" in rows)

        service.stop()  # the service restarts: top says so and keeps trying
        waiting = wait_screen("reconnecting", lambda t: "reconnecting to" in t)
        assert "pipeline load" in waiting  # the last numbers stay on screen
        alive = subprocess.run([*tmux, "has-session", "-t", "top"], capture_output=True)
        assert alive.returncode == 0, "top exited when its service went away"
        RESTARTED.append(Service(service.state_dir, "--port", port,
                                 start_timeout=RESTART_TIMEOUT_S))
        wait_screen("the service back", lambda t: "reconnecting" not in t
                    and "pipeline load" in t, timeout=RESTART_TIMEOUT_S)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)

"""The Flask-era pipeline tool's own documented examples, verbatim, against stepchain.

Its users bring pipeline JSON, PIPELINE_CONFIG YAML/JSON, curl calls and Locust command lines
of their own; each example here is copied from that tool's documentation so compatibility
cannot regress silently (docs/migrating.md walks through the same examples).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from step_fixtures import ROOT, StepProcess, free_port, step_env, wait_serving
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.frames import codec
from stepsvc.routing.discovery import write_static_discovery

#: The topology POST body of that tool's README (step 1's next_step names no step).
FLASK_PIPELINE_JSON = """{"steps": [{"step_id": 0, "type": "upscaling", "params": {"scale": 2}, "next_step": 1}, {"step_id": 1, "type": "classifier", "params": {}, "next_step": 2}]}"""
#: Its PIPELINE_CONFIG YAML example (the ConfigMap of step 0).
FLASK_PIPELINE_CONFIG_YAML = """pipeline_id: my-pipeline
step_id: 0
steps:
  - id: 0
    type: upscaling
    params: {scale: 2}
    next_step: 1
    preferred_next: 1
  - id: 1
    type: classifier
    params: {}
    next_step: 2
"""
#: Its one-step PIPELINE_CONFIG JSON example (`export PIPELINE_CONFIG='...'`).
FLASK_PIPELINE_CONFIG_JSON = '{"pipeline_id":"my-pipeline","step_id":0,"steps":[{"id":0,"type":"upscaling","params":{"scale":2},"next_step":1}]}'


def jpeg_bytes(h: int = 40, w: int = 56) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def serve_step(tmp: Path, name: str, env_config: str, port: int, *extra: str) -> StepProcess:
    """`stepchain step serve --config-env PIPELINE_CONFIG` as that tool's Deployment ran it."""
    log = tmp / f"{name}.log"
    env = {**step_env(), "PIPELINE_CONFIG": env_config}
    cmd = [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config-env",
           "PIPELINE_CONFIG", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
           *extra]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return StepProcess(0, port, proc, log)


def process(address: str, data: bytes) -> step_pb2.ProcessResponse:
    request = step_pb2.ProcessRequest(output_encoding=codec.PNG)
    request.image.data = data
    request.image.encoding = codec.JPEG
    with grpc.insecure_channel(address) as channel:
        return step_pb2_grpc.StepServiceStub(channel).Process(request, timeout=30)


@pytest.mark.slow
def test_one_step_pipeline_config_json_example_starts_serves_and_logs_the_warning(
        tmp_path: Path) -> None:
    step = serve_step(tmp_path, "one-step", FLASK_PIPELINE_CONFIG_JSON, free_port())
    try:
        wait_serving(step)
        response = process(step.address, jpeg_bytes())
        assert [t.step_id for t in response.timings] == [0]
        assert (response.image.width, response.image.height) == (112, 80)  # scale 2
        log = step.log_text()
        assert "PIPELINE_CONFIG: steps[0].next_step: step id 1 is not a step of this " \
               "pipeline" in log
        assert "step 0 ends the pipeline there" in log
    finally:
        step.stop()


@pytest.mark.slow
def test_pipeline_config_yaml_example_runs_both_steps_and_step_1_ends_the_pipeline(
        tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    discovery = tmp_path / "discovery.json"
    write_static_discovery(discovery, {0: f"127.0.0.1:{ports[0]}", 1: f"127.0.0.1:{ports[1]}"})
    # Step 1's ConfigMap is the same document with its own step_id.
    step1_yaml = FLASK_PIPELINE_CONFIG_YAML.replace("step_id: 0", "step_id: 1")
    steps = [serve_step(tmp_path, f"step-{i}", text, ports[i], "--discovery",
                        f"static:{discovery}")
             for i, text in enumerate((FLASK_PIPELINE_CONFIG_YAML, step1_yaml))]
    try:
        for step in steps:
            wait_serving(step)
        response = process(steps[0].address, jpeg_bytes())
        assert [(t.step_id, t.step_type) for t in response.timings] == [
            (0, "resize"), (1, "classify")]
        assert set(response.labels) >= {"sharpness", "exposure"}
        assert "steps[1].next_step" in steps[1].log_text()
    finally:
        for step in steps:
            step.stop()


def test_flask_pipeline_json_is_accepted_with_a_warning_naming_next_step() -> None:
    from topology.pipeline.graph import parse_pipeline

    pipeline = parse_pipeline(json.loads(FLASK_PIPELINE_JSON))
    assert [(s.id, s.type, s.next_step) for s in pipeline.steps] == [
        (0, "resize", (1,)), (1, "classify", ())]
    assert [str(w).split(":")[0] for w in pipeline.warnings] == ["steps[1].next_step"]


#: That tool's load-test command lines (`locust -f pipeline_test.py ...`), verbatim.
FLASK_LOCUST_LINES = [
    "--curve ramp --users 50 --duration 120 --spawn-rate 5",
    "--curve step --users 50 --duration 120 --spawn-rate 5",
    "--curve spike --users 100 --duration 180",
    "--curve sinus --users 30 --duration 60 --spawn-rate 3",
    "--curve flat --users 20 --duration 60 --spawn-rate 2",
]
CURL = shutil.which("curl")


def curl(*args: str) -> str:
    """Real curl (Debian's), output as text; tests that need it fall back to httpx without."""
    assert CURL is not None
    done = subprocess.run([CURL, "-sS", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse_head(text: str) -> tuple[int, dict[str, str]]:
    """Status and headers from `curl -D -` output (the last response's)."""
    block = text.replace("\r\n", "\n").strip().split("\n\n")[-1]
    lines = block.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


class TopologyService:
    """`stepchain topology serve` on a loopback port, as the Flask tool's users run it."""

    def __init__(self, tmp: Path) -> None:
        from topology.service.auth import token_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "topology.log"
        state = tmp / "state"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stepsvc.cli", "topology", "serve", "--port",
                 str(self.port), "--state-dir", str(state)], cwd=ROOT, env=step_env(),
                stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)
        self.token = token_path(state).read_text().strip()
        self.auth = f"Authorization: Bearer {self.token}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def post_pipeline(service: TopologyService, path: Path) -> tuple[int, dict[str, Any]]:
    """`curl -X POST http://<node-ip>:30080/pipeline -H 'Content-Type: application/json'
    -d @pipeline.json`, with the bearer header our API needs."""
    if CURL is None:
        reply = httpx.post(f"{service.url}/pipeline", content=path.read_bytes(), timeout=120,
                           headers={"Content-Type": "application/json",
                                    "Authorization": f"Bearer {service.token}"})
        return reply.status_code, reply.json()
    out = curl("-X", "POST", f"{service.url}/pipeline", "-H", "Content-Type: application/json",
               "-H", service.auth, "-d", f"@{path}", "-w", "\n%{http_code}")
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def post_photo(entry: str, photo: Path, out: Path) -> tuple[int, dict[str, str]]:
    """`curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://ENTRY/process
    -o out.png -D -`."""
    if CURL is None:
        reply = httpx.post(f"http://{entry}/process", content=photo.read_bytes(), timeout=120,
                           headers={"Content-Type": "image/jpeg"})
        out.write_bytes(reply.content)
        return reply.status_code, {k.lower(): v for k, v in reply.headers.items()}
    return parse_head(curl("--data-binary", f"@{photo}", "-H", "Content-Type: image/jpeg",
                           f"http://{entry}/process", "-o", str(out), "-D", "-"))


def delete_pipeline(service: TopologyService, pipeline_id: str) -> int:
    """`curl -X DELETE http://<node-ip>:30080/pipeline/<pipeline_id>` (+ bearer header)."""
    if CURL is None:
        return httpx.delete(f"{service.url}/pipeline/{pipeline_id}", timeout=120,
                            headers={"Authorization": f"Bearer {service.token}"}).status_code
    return int(curl("-X", "DELETE", f"{service.url}/pipeline/{pipeline_id}", "-H", service.auth,
                    "-o", "/dev/null", "-w", "%{http_code}"))


@pytest.mark.slow
def test_flask_users_curl_calls_and_load_tests_work_unchanged(tmp_path: Path) -> None:
    from loadtest_fixtures import run_locust
    from skimage import data

    service = TopologyService(tmp_path)
    try:
        pipeline_json = tmp_path / "pipeline.json"
        pipeline_json.write_text(FLASK_PIPELINE_JSON)
        code, created = post_pipeline(service, pipeline_json)
        assert code == 201, created
        assert created["warnings"] == [
            "steps[1].next_step: step id 2 is not a step of this pipeline (steps are [0, 1]); "
            "step 1 ends the pipeline there"]
        pipeline_id = created["pipeline_id"]
        entry = created["http_entrypoint"].removeprefix("http://")

        photo = tmp_path / "photo.jpg"
        Image.fromarray(data.astronaut()).save(photo, format="JPEG")
        status, headers = post_photo(entry, photo, tmp_path / "out.png")
        assert status == 200, (tmp_path / "out.png").read_text(errors="replace")
        assert headers["content-type"] == "image/jpeg"  # JPEG in, JPEG out, as that tool did
        assert float(headers["x-step-0-time"]) > 0 and float(headers["x-step-1-time"]) >= 0
        assert headers["x-request-id"] and "x-trace-id" in headers
        with Image.open(tmp_path / "out.png") as out:
            assert (out.format, out.size) == ("JPEG", (1024, 1024))  # upscaled x2

        got = httpx.get(f"{service.url}/pipeline/{pipeline_id}", timeout=30).json()
        assert got["spec"] == json.loads(FLASK_PIPELINE_JSON)
        assert got["http_entrypoint"] == created["http_entrypoint"]

        # A change that restarts every step keeps the addresses clients were given.
        changed = json.loads(FLASK_PIPELINE_JSON)
        changed["steps"][0]["params"] = {"scale": 1.5}
        put = httpx.put(f"{service.url}/pipeline/{pipeline_id}", json=changed, timeout=120,
                        headers={"Authorization": f"Bearer {service.token}"})
        assert put.status_code == 200, put.text
        assert (put.json()["entrypoint"], put.json()["http_entrypoint"]) == (
            created["entrypoint"], created["http_entrypoint"])
        assert httpx.get(f"{service.url}/pipeline/{pipeline_id}").json()["spec"] == changed

        for line in FLASK_LOCUST_LINES:
            result = run_locust([*line.split(), "--headless", "--host", created["entrypoint"],
                                 "--run-time", "2s", "--csv", str(tmp_path / "lt")],
                                cwd=tmp_path, timeout=90)
            assert result.returncode == 0, (line, result.stderr[-2000:])
            assert f"curve {line.split()[1]}" in result.stderr, line

        assert delete_pipeline(service, pipeline_id) == 200
        assert httpx.get(f"{service.url}/pipeline/{pipeline_id}").status_code == 404
    finally:
        service.stop()


def test_every_stepchain_and_locust_command_in_the_migration_notes_is_accepted() -> None:
    import re
    import shlex

    from stepsvc.cli import build_parser

    docs = (ROOT / "docs" / "migrating.md").read_text()
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```[a-z]*\n(.*?)```", docs,
                                                                    re.S)
             for line in block.splitlines()]
    commands = [line.rstrip("&").strip() for line in lines if line.startswith("stepchain ")]
    assert len(commands) >= 2
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # SystemExit on a bad flag
        assert callable(args.func), command
    locust = [line.removeprefix("locust -f loadtest/locustfile.py ") for line in lines
              if line.startswith("locust ")]
    assert locust == FLASK_LOCUST_LINES  # the Flask tool's lines, our locustfile

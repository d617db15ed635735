"""The Flask-era pipeline tool's own documented examples, verbatim, against stepchain.

Its users bring pipeline JSON, PIPELINE_CONFIG YAML/JSON, curl calls and Locust command lines
of their own; each example here is copied from that tool's documentation so compatibility
cannot regress silently (docs/migrating.md walks through the same examples).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from step_fixtures import ROOT, StepProcess, free_port, step_env, wait_serving
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc import codec
from stepsvc.discovery import write_static_discovery

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
    from topology.pipeline import parse_pipeline

    pipeline = parse_pipeline(json.loads(FLASK_PIPELINE_JSON))
    assert [(s.id, s.type, s.next_step) for s in pipeline.steps] == [
        (0, "resize", (1,)), (1, "classify", ())]
    assert [str(w).split(":")[0] for w in pipeline.warnings] == ["steps[1].next_step"]

"""A step server running plugin kernels: a plugin that raises, refuses, returns the wrong
dtype or shape, or more than its declared bound answers INTERNAL or INVALID_ARGUMENT naming the
step and the plugin, and the server keeps serving; a declared output shape is budgeted before
the image is decoded and sizes the frame for the next step; spans carry the plugin's package."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from plugin_fixtures import broken_plugins, env_with_path, use_plugins_from
from step_fixtures import (
    InProcessPipeline,
    StepProcess,
    in_process,
    noisy_image,
    raw_request,
    step_env,
    wait_serving,
)
from stepchain.v1 import step_pb2_grpc

import native
from stepsvc.ports import free_port

MODES = {1: "raise", 2: "refuse", 3: "float", 4: "shape", 5: "ok"}
STEPS = [{"id": i, "type": "test.invert", "params": {"mode": mode}} for i, mode in MODES.items()]


@pytest.fixture
def pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessPipeline]:
    use_plugins_from(broken_plugins(tmp_path / "site"), monkeypatch)
    with in_process() as p:
        yield p


def error_of(pipe: InProcessPipeline, step_id: int, img: np.ndarray) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        pipe.stub(step_id).Process(raw_request(img), timeout=20)
    return caught.value


@pytest.mark.parametrize(("step_id", "code", "text"), [
    (1, grpc.StatusCode.INTERNAL,
     "step 1 (test.invert): plugin test.invert (test-good 0.1.0) raised RuntimeError: boom"),
    (2, grpc.StatusCode.INVALID_ARGUMENT,
     "step 2 (test.invert): plugin test.invert (test-good 0.1.0) refused the input: this image "
     "is too dull"),
    (3, grpc.StatusCode.INTERNAL,
     "step 3 (test.invert): plugin test.invert (test-good 0.1.0) returned dtype float64; "
     "kernels return uint8"),
    (4, grpc.StatusCode.INTERNAL,
     "step 4 (test.invert): plugin test.invert (test-good 0.1.0) returned shape (1, 1, 3) but "
     "declares (12, 10, 3) for this input"),
])
def test_a_misbehaving_plugin_answers_a_status_naming_the_step_and_plugin_and_serving_goes_on(
        pipe: InProcessPipeline, step_id: int, code: grpc.StatusCode, text: str) -> None:
    pipe.add(step_id, STEPS)
    pipe.add(5, STEPS)
    img = noisy_image(12, 10)
    for _ in range(2):  # the same step answers the same way again: it is still serving
        err = error_of(pipe, step_id, img)
        assert err.code() == code and err.details() == text
    ok = pipe.stub(5).Process(raw_request(img), timeout=20)
    np.testing.assert_array_equal(np.frombuffer(ok.image.data, np.uint8).reshape(img.shape),
                                  255 - img)


def test_a_plugin_returning_more_than_its_bound_is_internal(pipe: InProcessPipeline) -> None:
    steps = [{"id": 1, "type": "test.half", "params": {"grow": 1}}]
    pipe.add(1, steps)
    err = error_of(pipe, 1, noisy_image(9, 7))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == ("step 1 (test.half): plugin test.half (test-good 0.1.0) returned "
                             "shape (10, 7, 3), which exceeds its declared output bound "
                             "(4, 3, 3)")


@pytest.mark.parametrize("shm", [True, False], ids=["shared-memory", "tcp"])
def test_outputs_of_declared_and_bounded_shapes_travel_to_the_next_step(
        pipe: InProcessPipeline, shm: bool, tmp_path: Path) -> None:
    steps = [{"id": 1, "type": "test.grow", "next_step": 2},
             {"id": 2, "type": "test.half", "next_step": 3},
             {"id": 3, "type": "test.invert"}]
    settings = {} if shm else {"shm_dir": ""}
    for step in steps:
        pipe.add(int(step["id"]), steps, **settings)  # type: ignore[arg-type]
    img = noisy_image(9, 7)
    resp = pipe.stub(1).Process(raw_request(img), timeout=20)
    grown = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    expected = 255 - grown[:9, :7]
    assert (resp.image.height, resp.image.width, resp.image.channels) == expected.shape
    np.testing.assert_array_equal(
        np.frombuffer(resp.image.data, np.uint8).reshape(expected.shape), expected)


def test_a_declared_output_over_the_pixel_limit_is_refused_before_decoding(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "test.grow"}], max_pixels=1000)
    err = error_of(pipe, 1, noisy_image(20, 20))  # 400 pixels in, 1600 out
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "step 1 (test.grow)" in err.details() and "40x40" in err.details()


def test_the_step_loads_the_plugin_once_and_names_its_package() -> None:
    e = native.registry.entry("gaussian_blur")
    assert e.builtin and e.source == "built-in"


@pytest.mark.slow
def test_a_step_server_with_broken_plugins_installed_logs_each_once_and_serves_a_good_one(
        tmp_path: Path) -> None:
    site = broken_plugins(tmp_path / "site")
    cfg = tmp_path / "step.json"
    cfg.write_text(json.dumps({"pipeline_id": "p", "step_id": 1,
                               "steps": [{"id": 1, "type": "test.invert"}]}))
    port = free_port()
    log = tmp_path / "step.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config", str(cfg),
             "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"],
            env=env_with_path(site, step_env()), stdout=fh, stderr=subprocess.STDOUT)
    step = StepProcess(1, port, proc, log)
    try:
        wait_serving(step)
        img = noisy_image(8, 8)
        with grpc.insecure_channel(step.address) as channel:
            resp = step_pb2_grpc.StepServiceStub(channel).Process(raw_request(img), timeout=20)
        np.testing.assert_array_equal(
            np.frombuffer(resp.image.data, np.uint8).reshape(img.shape), 255 - img)
        text = step.log_text()
        failures = [line for line in text.splitlines() if "not loaded:" in line]
        assert len(failures) == 3, text
        assert any("plugin package test-clash 0.1.0" in line for line in failures)
        assert "kernel: test.invert (test-good 0.1.0)" in text
    finally:
        step.stop()

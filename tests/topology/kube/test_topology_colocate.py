"""`colocate: true`: one Deployment whose pod runs every step, frames through an in-memory
emptyDir; the default stays one Deployment per step."""

from __future__ import annotations

import json
import uuid
from typing import Any

import kubernetes_validate
import pytest
from topology_fixtures import RunningKmock, kmock_server  # noqa: F401  (fixture)

from stepsvc.step.config import parse_config
from topology.kube.backend import KubernetesBackend
from topology.kube.colocated import FRAMES_DIR
from topology.kube.manifests import render_manifests
from topology.kube.names import COLOCATED_LABEL, GRPC_PORT, HTTP_PORT
from topology.kube.objects import RenderOptions
from topology.pipeline.graph import parse_pipeline

KUBERNETES_VERSION = "1.30"
CHAIN: dict[str, Any] = {
    "name": "coloc",
    "colocate": True,
    "steps": [
        {"type": "classify", "next_step": [1, 2], "preferred_next": 1, "route": {"blurry": 2},
         "replicas": 3},
        {"type": "sharpen", "next_step": 3,
         "volumes": [{"name": "models", "mountPath": "/models", "readOnly": True,
                      "configMap": "extra"}]},
        {"type": "deblur", "next_step": 3, "resources": {"limits": {"memory": "2Gi"}}},
        {"type": "edges", "volumes": [{"name": "models", "mountPath": "/m", "emptyDir": {}}]},
    ],
}


def render(data: dict[str, Any]) -> list[dict[str, Any]]:
    return render_manifests(parse_pipeline(data), RenderOptions(namespace="ns1"))


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


@pytest.fixture
def manifests() -> list[dict[str, Any]]:
    return render(CHAIN)


def test_colocated_pipeline_renders_objects_valid_against_the_kubernetes_schemas(
        manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_one_deployment_runs_a_container_per_step_sharing_an_in_memory_frame_directory(
        manifests: list[dict[str, Any]]) -> None:
    (deployment,) = of_kind(manifests, "Deployment")
    assert deployment["metadata"]["name"] == "coloc-chain"
    assert deployment["spec"]["replicas"] == 3  # replicas scale the whole chain
    pod = deployment["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    containers = pod["containers"]
    assert [c["name"] for c in containers] == ["step-0", "step-1", "step-2", "step-3"]
    frames = next(v for v in pod["volumes"] if v["name"] == "frames")
    assert frames["emptyDir"]["medium"] == "Memory" and frames["emptyDir"]["sizeLimit"]
    ports = set()
    for c in containers:
        args = c["args"]
        assert args[args.index("--shm-dir") + 1] == FRAMES_DIR
        assert {"name": "frames", "mountPath": FRAMES_DIR} in c["volumeMounts"]
        port = int(args[args.index("--port") + 1])
        assert c["readinessProbe"]["grpc"]["port"] == port
        assert c["ports"][0]["containerPort"] == port
        ports.add(port)
    assert len(ports) == 4
    # two steps' volumes of the same name do not collide in the one pod
    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names)) and {"s1-models", "s3-models"} <= set(names)


def test_steps_find_each_other_on_loopback_inside_the_pod(
        manifests: list[dict[str, Any]]) -> None:
    discovery = next(m for m in of_kind(manifests, "ConfigMap")
                     if m["metadata"]["name"] == "coloc-chain-discovery")
    mapping = json.loads(discovery["data"]["discovery.json"])
    (deployment,) = of_kind(manifests, "Deployment")
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        step_id = c["name"].removeprefix("step-")
        args = c["args"]
        assert mapping[step_id] == f"127.0.0.1:{args[args.index('--port') + 1]}"
        assert args[args.index("--discovery") + 1].startswith("static:/")
        config_map = next(e for e in c["env"] if e["name"] == "PIPELINE_CONFIG")
        ref = config_map["valueFrom"]["configMapKeyRef"]["name"]
        cm = next(m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == ref)
        assert parse_config(cm["data"]["PIPELINE_CONFIG"]).step_id == int(step_id)


def test_every_step_keeps_its_service_name_pointing_at_its_port_in_the_pod(
        manifests: list[dict[str, Any]]) -> None:
    services = {m["metadata"]["name"]: m for m in of_kind(manifests, "Service")}
    assert set(services) == {f"coloc-step-{i}" for i in range(4)}
    assert services["coloc-step-0"]["spec"]["type"] == "NodePort"
    for i in range(4):
        spec = services[f"coloc-step-{i}"]["spec"]
        assert spec["selector"][COLOCATED_LABEL] == "true"
        assert spec["ports"][0]["port"] == GRPC_PORT
        assert spec["ports"][0]["targetPort"] == GRPC_PORT + i


def test_each_step_in_the_pod_serves_its_http_face_on_a_port_of_its_own(
        manifests: list[dict[str, Any]]) -> None:
    (deployment,) = of_kind(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    ports = [int(c["args"][c["args"].index("--http-port") + 1]) for c in containers]
    assert ports == [HTTP_PORT + i for i in range(4)]
    services = {m["metadata"]["name"]: m for m in of_kind(manifests, "Service")}
    for i in range(4):
        http = services[f"coloc-step-{i}"]["spec"]["ports"][1]
        assert (http["name"], http["port"], http["targetPort"]) == ("http", HTTP_PORT,
                                                                    HTTP_PORT + i)


def test_only_the_entry_port_and_metrics_are_reachable_from_outside_the_pod(
        manifests: list[dict[str, Any]]) -> None:
    (policy,) = of_kind(manifests, "NetworkPolicy")
    ingress = policy["spec"]["ingress"]
    assert ingress[0]["ports"] == [{"port": GRPC_PORT, "protocol": "TCP"},
                                   {"port": HTTP_PORT, "protocol": "TCP"}]
    assert all("from" not in rule for rule in ingress)


def test_without_colocate_every_step_is_its_own_deployment_and_fingerprint_is_unchanged() -> None:
    plain = {k: v for k, v in CHAIN.items() if k != "colocate"}
    manifests = render(plain)
    deployments = of_kind(manifests, "Deployment")
    assert len(deployments) == 4
    for d in deployments:
        assert COLOCATED_LABEL not in d["spec"]["template"]["metadata"]["labels"]
        assert "--shm-dir" not in d["spec"]["template"]["spec"]["containers"][0]["args"]
    explicit_false = parse_pipeline({**plain, "colocate": False})
    assert explicit_false.fingerprint == parse_pipeline(plain).fingerprint
    assert parse_pipeline(CHAIN).fingerprint != explicit_false.fingerprint


def test_colocate_must_be_a_boolean() -> None:
    from topology.pipeline.model import PipelineInvalid

    with pytest.raises(PipelineInvalid) as info:
        parse_pipeline({**CHAIN, "colocate": "sometimes"})
    assert "colocate" in str(info.value.errors)


def test_kubernetes_backend_applies_a_colocated_pipeline_and_reports_every_step_from_its_pod(
        kmock_server: RunningKmock) -> None:  # noqa: F811
    namespace = f"coloc-{uuid.uuid4().hex[:8]}"
    backend = KubernetesBackend(kmock_server.api_client(), RenderOptions(namespace=namespace))
    result = backend.apply(parse_pipeline(CHAIN))
    assert result.entrypoint == f"coloc-step-0.{namespace}.svc:{GRPC_PORT}"
    assert kmock_server.names("deployments", namespace) == {"coloc-chain"}
    status = backend.status("coloc")
    assert status is not None and [s.step_id for s in status.steps] == [0, 1, 2, 3]
    assert not status.ready
    kmock_server.emulator.objects["apps/v1/deployments", namespace, "coloc-chain"].patch(
        {"status": {"readyReplicas": 3}})
    status = backend.status("coloc")
    assert status is not None and status.ready
    assert all(s.ready_replicas == 3 for s in status.steps)
    assert backend.delete("coloc") is True
    assert kmock_server.names("deployments", namespace) == set()

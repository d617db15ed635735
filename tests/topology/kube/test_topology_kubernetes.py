"""The Kubernetes backend against kmock's emulator over real HTTP (one namespace per test)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from topology_fixtures import RunningKmock, api_client, kmock_server  # noqa: F401  (fixture)

from topology.backend import BackendError
from topology.jobs.kube_job import JobPodOptions, KubeJobPool
from topology.jobs.manifest import JobManifest, JobOptions
from topology.kube.backend import REQUIRED_PERMISSIONS, KubernetesBackend
from topology.kube.objects import RenderOptions
from topology.pipeline.graph import parse_pipeline
from topology.service.app import create_app
from topology.service.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())
KINDS = ("configmaps", "deployments", "services", "horizontalpodautoscalers", "networkpolicies")


@pytest.fixture()
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def backend(kmock_server: RunningKmock, namespace: str) -> KubernetesBackend:  # noqa: F811
    return KubernetesBackend(kmock_server.api_client(), RenderOptions(namespace=namespace))


def objects(kmock: RunningKmock, namespace: str) -> dict[str, set[str]]:
    return {plural: kmock.names(plural, namespace) for plural in KINDS}


def demo_names(*step_ids: int) -> dict[str, set[str]]:
    return {"configmaps": {f"demo-step-{n}-config" for n in step_ids},
            "deployments": {f"demo-step-{n}" for n in step_ids},
            "services": {f"demo-step-{n}" for n in step_ids},
            "horizontalpodautoscalers": set(),
            "networkpolicies": {"demo-steps"} if len(step_ids) > 1 else set()}


def test_apply_creates_exactly_a_configmap_deployment_and_service_per_step(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    result = backend.apply(parse_pipeline(DEMO))
    assert objects(kmock_server, namespace) == demo_names(0, 1, 2, 3)
    assert result.entrypoint == f"demo-step-0.{namespace}.svc:50051"
    assert len(result.resources) == 13  # 4 x (ConfigMap, Deployment, Service), NetworkPolicy
    stored = kmock_server.object("configmaps", namespace, "demo-step-2-config")
    assert stored["metadata"]["labels"]["pipeline_id"] == "demo"
    assert "step_id: 2" in stored["data"]["PIPELINE_CONFIG"]


def test_reapplying_the_same_pipeline_converges_without_duplicates(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    backend.apply(parse_pipeline(DEMO))
    backend.apply(parse_pipeline(DEMO))
    assert objects(kmock_server, namespace) == demo_names(0, 1, 2, 3)
    assert [s.pipeline_id for s in backend.list_pipelines()] == ["demo"]


@pytest.mark.slow
def test_changed_pipeline_updates_objects_and_removes_stale_steps(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    backend.apply(parse_pipeline(DEMO))
    changed = copy.deepcopy(DEMO)
    changed["steps"] = [
        {"step_id": 0, "type": "classify", "next_step": [1]},
        {"step_id": 1, "type": "grayscale", "threads": 4, "replicas": 3,
         "autoscale": {"maxReplicas": 5}},
    ]
    backend.apply(parse_pipeline(changed))
    expected = demo_names(0, 1)
    expected["horizontalpodautoscalers"] = {"demo-step-1"}
    assert objects(kmock_server, namespace) == expected
    deployment = kmock_server.object("deployments", namespace, "demo-step-1")
    env = {e["name"]: e.get("value") for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == "4"
    # Back again: the HPA goes away with the autoscale field.
    backend.apply(parse_pipeline(DEMO))
    assert objects(kmock_server, namespace) == demo_names(0, 1, 2, 3)


@pytest.mark.slow
def test_delete_removes_every_object_of_the_pipeline_and_nothing_else(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    backend.apply(parse_pipeline(DEMO))
    other = {"name": "other", "steps": [{"type": "edges"}]}
    backend.apply(parse_pipeline(other))
    assert backend.delete("demo") is True
    left = objects(kmock_server, namespace)
    assert left["configmaps"] == {"other-step-0-config"}
    assert left["deployments"] == {"other-step-0"}
    assert left["services"] == {"other-step-0"}
    assert left["networkpolicies"] == set()
    assert backend.status("demo") is None
    assert backend.delete("demo") is False


@pytest.mark.slow
def test_status_reports_ready_replicas_of_each_deployment(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    backend.apply(parse_pipeline(DEMO))
    status = backend.status("demo")
    assert status is not None
    assert [s.step_id for s in status.steps] == [0, 1, 2, 3]
    assert not status.ready
    # What the Deployment controller would report once pods pass their gRPC probes.
    for n in range(4):
        kmock_server.emulator.objects["apps/v1/deployments", namespace, f"demo-step-{n}"].patch(
            {"status": {"readyReplicas": 1}})
    status = backend.status("demo")
    assert status is not None and status.ready
    assert [s.type for s in status.steps] == ["classify", "grayscale", "deblur", "resize"]


@pytest.mark.slow
def test_backend_uses_only_the_api_calls_in_required_permissions(
        kmock_server: RunningKmock) -> None:  # noqa: F811
    namespace = f"rbac-{uuid.uuid4().hex[:8]}"
    backend = KubernetesBackend(kmock_server.api_client(), RenderOptions(namespace=namespace))
    before = len(kmock_server.calls())
    with_hpa = copy.deepcopy(DEMO)
    with_hpa["steps"][1]["autoscale"] = {"maxReplicas": 2}
    backend.apply(parse_pipeline(with_hpa))  # creates
    backend.apply(parse_pipeline(with_hpa))  # patches everything
    backend.apply(parse_pipeline(DEMO))  # deletes the stale HPA
    status = backend.status("demo")
    backend.list_pipelines()
    # A batch job's Indexed Job, made on the backend's client as the service does
    # (topology.jobs.wiring): created, read for its state, deleted when the job ends.
    assert status is not None
    jobs = KubeJobPool(backend.api_client, JobPodOptions(namespace=namespace))
    job = JobManifest(id="j0123456789ab", pipeline="demo", input="s3://photos/in/",
                      output="s3://photos/out/", options=JobOptions(workers=2), total=4)
    jobs.start(job, status)
    assert jobs.running(job.id) and jobs.failure(job.id) is None
    jobs.stop(job.id)
    backend.delete("demo")
    used = set(kmock_server.calls()[before:])
    granted = {(group, resource, verb) for group, resource, verbs in REQUIRED_PERMISSIONS
               for verb in verbs}
    assert used <= granted, f"calls outside REQUIRED_PERMISSIONS: {sorted(used - granted)}"
    # ... and every permission is needed by at least one of those calls.
    assert used == granted, f"permissions never used: {sorted(granted - used)}"
    for _, _, verbs in REQUIRED_PERMISSIONS:
        assert list(verbs) == sorted(verbs)


@pytest.mark.slow
def test_api_on_kubernetes_answers_201_then_200_then_409(
        backend: KubernetesBackend, namespace: str) -> None:
    app = create_app(Settings(namespace=namespace), backend)
    with api_client(app) as client:
        created = client.post("/pipeline", json=DEMO)
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        assert body["created"] is True
        assert body["entrypoint"] == f"demo-step-0.{namespace}.svc:50051"
        assert {r["kind"] for r in body["resources"]} == {"ConfigMap", "Deployment", "Service",
                                                          "NetworkPolicy"}
        again = client.post("/pipeline", json=DEMO)
        assert again.status_code == 200
        assert again.json()["created"] is False
        different = copy.deepcopy(DEMO)
        different["steps"][3]["params"] = {"scale": 0.25}
        conflict = client.post("/pipeline", json=different)
        assert conflict.status_code == 409
        assert "PUT /pipeline/demo" in conflict.json()["detail"]
        updated = client.put("/pipeline/demo", json=different)
        assert updated.status_code == 200
        assert client.post("/pipeline", json=different).status_code == 200
        listed = client.get("/pipelines").json()["pipelines"]
        assert [p["pipeline_id"] for p in listed] == ["demo"]
        assert client.delete("/pipeline/demo").status_code == 200
        assert client.get("/pipeline/demo").status_code == 404


def test_pipeline_for_another_namespace_is_refused(backend: KubernetesBackend,
                                                   namespace: str) -> None:
    app = create_app(Settings(backend="kubernetes", namespace=namespace), backend)
    with api_client(app) as client:
        refused = client.post("/pipeline", json=DEMO | {"namespace": "kube-system"})
        assert refused.status_code == 422
        assert ["body", "namespace"] in [d["loc"] for d in refused.json()["detail"]]
        same = client.post("/pipeline", params={"dry_run": "true"},
                           json=DEMO | {"namespace": namespace})
        assert same.status_code == 200


def test_unreachable_api_server_is_a_502_naming_the_problem(namespace: str) -> None:
    from kubernetes import client as k8s

    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    backend = KubernetesBackend(k8s.ApiClient(configuration), RenderOptions(namespace=namespace))
    with pytest.raises(BackendError, match="cannot reach the Kubernetes API"):
        backend.apply(parse_pipeline(DEMO))
    with api_client(create_app(Settings(namespace=namespace), backend)) as api:
        response = api.post("/pipeline", json=DEMO)
        assert response.status_code == 502
        assert "Kubernetes" in response.json()["detail"]


@pytest.mark.slow
def test_a_step_service_made_before_replicas_were_balanced_is_replaced_by_a_headless_one(
        backend: KubernetesBackend, kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    from topology.kube.manifests import render_manifests

    pipeline = parse_pipeline(DEMO)
    old = next(m for m in render_manifests(pipeline, backend.options)
               if m["kind"] == "Service" and m["metadata"]["name"] == "demo-step-1")
    old["spec"].pop("clusterIP")  # what earlier versions rendered: a ClusterIP with a VIP
    backend._call("Service", "create", body=old)
    before = len(kmock_server.calls())
    backend.apply(pipeline)
    # clusterIP cannot be patched on a real API server: the Service is deleted and created.
    assert ("", "services", "delete") in kmock_server.calls()[before:]
    stored = kmock_server.object("services", namespace, "demo-step-1")
    assert stored["spec"]["clusterIP"] == "None"
    assert objects(kmock_server, namespace) == demo_names(0, 1, 2, 3)


def test_get_returns_the_submitted_spec_and_the_http_entrypoint(
        backend: KubernetesBackend, namespace: str) -> None:
    app = create_app(Settings(namespace=namespace), backend)
    with api_client(app) as client:
        created = client.post("/pipeline", json=DEMO)
        assert created.status_code == 201, created.text
        assert created.json()["http_entrypoint"] == f"http://demo-step-0.{namespace}.svc:8080"
        got = client.get("/pipeline/demo").json()
        assert got["spec"] == DEMO  # as submitted: step_id, aliases and all
        assert got["http_entrypoint"] == f"http://demo-step-0.{namespace}.svc:8080"
        assert got["entrypoint"] == f"demo-step-0.{namespace}.svc:50051"

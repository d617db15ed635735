"""The chart in a real API server (the session's control plane, tests/control_plane.py): `helm
install` creates what the chart renders and the topology pod turns Ready (KWOK); the topology
service, acting as the chart's ServiceAccount (a TokenRequest token, as its pod would get),
does everything its Kubernetes backend does and nothing more; `helm upgrade` changes values;
keeping the generated API token; `helm uninstall` leaves nothing of the release. Pods run no containers: API state only.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import api_client_for, eventually, service_account_kubeconfig
from control_plane import ControlPlane, tool
from helm_fixtures import CHART, ROOT, helm

from topology.jobs.kube_job import JobPodOptions, KubeJobPool
from topology.jobs.manifest import JobManifest, JobOptions
from topology.kube.backend import KubernetesBackend
from topology.kube.manifests import RenderOptions
from topology.pipeline.graph import parse_pipeline

pytestmark = pytest.mark.slow

RELEASE = "demo"
TOPOLOGY_SA = f"{RELEASE}-stepchain"
STEP_SA = f"{RELEASE}-stepchain-step"
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())
DOCS = ROOT / "docs" / "kubernetes.md"


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("kubectl")), "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def release_helm(plane: ControlPlane, namespace: str, *args: str) -> None:
    result = helm(*args, "--kubeconfig", str(plane.kubeconfig), "--namespace", namespace)
    assert result.returncode == 0, f"helm {args[0]} failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Iterator[str]:
    """The chart installed (default values) into a namespace of its own; its namespace."""
    from kubernetes import client

    namespace = "helm-release"
    core = client.CoreV1Api(kube_cluster.api())
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        release_helm(kube_cluster, namespace, "install", RELEASE, str(CHART))
        yield namespace
    finally:
        helm("uninstall", RELEASE, "--kubeconfig", str(kube_cluster.kubeconfig),
             "--namespace", namespace)
        core.delete_namespace(namespace)


def names(plane: ControlPlane, namespace: str) -> dict[str, set[str]]:
    from kubernetes import client

    api = plane.api()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    sel = f"app.kubernetes.io/instance={RELEASE}"
    return {
        "deployments": {o.metadata.name for o in
                        apps.list_namespaced_deployment(namespace, label_selector=sel).items},
        "services": {o.metadata.name for o in
                     core.list_namespaced_service(namespace, label_selector=sel).items},
        "serviceaccounts": {o.metadata.name for o in core.list_namespaced_service_account(
            namespace, label_selector=sel).items},
        "roles": {o.metadata.name for o in
                  rbac.list_namespaced_role(namespace, label_selector=sel).items},
        "rolebindings": {o.metadata.name for o in
                         rbac.list_namespaced_role_binding(namespace, label_selector=sel).items},
        "secrets": {o.metadata.name for o in
                    core.list_namespaced_secret(namespace, label_selector=sel).items},
    }


def test_helm_install_creates_the_chart_and_the_topology_pod_turns_ready(
        kube_cluster: ControlPlane, release: str) -> None:
    from kubernetes import client

    assert names(kube_cluster, release) == {
        "deployments": {TOPOLOGY_SA}, "services": {TOPOLOGY_SA},
        "serviceaccounts": {TOPOLOGY_SA, STEP_SA}, "roles": {TOPOLOGY_SA, STEP_SA},
        "rolebindings": {TOPOLOGY_SA, STEP_SA}, "secrets": {f"{RELEASE}-stepchain-token"}}
    apps = client.AppsV1Api(kube_cluster.api())
    eventually(lambda: (apps.read_namespaced_deployment(TOPOLOGY_SA, release).status
                        .ready_replicas or 0) >= 1, timeout=120, what="the topology pod Ready")


def can_i_list(kubeconfig: Path) -> list[tuple[str, ...]]:
    """`kubectl auth can-i --list` rows (resources, non-resource URLs, resource names, verbs)."""
    result = kubectl(kubeconfig, "auth", "can-i", "--list")
    assert result.returncode == 0, result.stderr
    rows = [tuple(re.split(r"\s{2,}", line.strip())) for line in result.stdout.splitlines()[1:]]
    return sorted(row for row in rows if row)


def documented_can_i_list() -> list[tuple[str, ...]]:
    """The `kubectl auth can-i --list` answer docs/kubernetes.md shows."""
    text = DOCS.read_text()
    block = re.search(r"auth can-i --list`.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/kubernetes.md shows no `kubectl auth can-i --list` output"
    lines = [line for line in block.group(1).splitlines()[1:] if line.strip()]
    return sorted(tuple(re.split(r"\s{2,}", line.strip())) for line in lines)


def test_the_topology_service_as_the_charts_service_account_can_do_its_work_and_no_more(
        kube_cluster: ControlPlane, release: str, tmp_path: Path) -> None:
    kubeconfig = service_account_kubeconfig(kube_cluster, release, TOPOLOGY_SA,
                                            tmp_path / "topology.kubeconfig")
    api = api_client_for(kubeconfig)
    backend = KubernetesBackend(api, RenderOptions(namespace=release,
                                                   service_account=STEP_SA))
    with_hpa = json.loads(json.dumps(DEMO))
    with_hpa["steps"][1]["autoscale"] = {"maxReplicas": 2}
    backend.apply(parse_pipeline(with_hpa))
    backend.apply(parse_pipeline(DEMO))  # patches, deletes the HPA
    status = eventually(lambda: (lambda s: s if s and s.ready else None)(backend.status("demo")),
                        timeout=120, what="the pipeline's pods Ready (step ServiceAccount)")
    assert [p.pipeline_id for p in backend.list_pipelines()] == ["demo"]
    jobs = KubeJobPool(api, JobPodOptions(namespace=release))
    job = JobManifest(id="j0123456789ab", pipeline="demo", input="s3://photos/in/",
                      output="s3://photos/out/", options=JobOptions(workers=2), total=4)
    jobs.start(job, status)
    assert jobs.running(job.id)
    jobs.stop(job.id)
    assert backend.delete("demo") is True
    backend.close()
    refused = [e for e in kube_cluster.audit_events(
        f"system:serviceaccount:{release}:{TOPOLOGY_SA}") if e["responseStatus"]["code"] >= 400]
    assert refused == []
    for question in (["create", "pods"], ["get", "secrets"], ["list", "configmaps", "-n",
                     "default"], ["list", "nodes"], ["create", "rolebindings"]):
        assert kubectl(kubeconfig, "auth", "can-i", *question).stdout.strip() == "no", question
    assert can_i_list(kubeconfig) == documented_can_i_list()


def test_helm_upgrade_changes_values_and_uninstall_leaves_nothing(
        kube_cluster: ControlPlane, release: str) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(kube_cluster.api())
    core = client.CoreV1Api(kube_cluster.api())
    token = core.read_namespaced_secret(f"{RELEASE}-stepchain-token", release).data
    release_helm(kube_cluster, release, "upgrade", RELEASE, str(CHART),
                 "--set", "jaeger.enabled=true", "--set", "otel.sampler=always_on")
    found = names(kube_cluster, release)
    assert f"{RELEASE}-stepchain-jaeger" in found["deployments"], found
    topology = apps.read_namespaced_deployment(TOPOLOGY_SA, release)
    env: dict[str, Any] = {e.name: e.value
                           for e in topology.spec.template.spec.containers[0].env or []}
    assert "jaeger" in str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")), env
    assert topology.metadata.generation == 2
    # The API token the chart generated survives the upgrade (its template looks it up).
    assert core.read_namespaced_secret(f"{RELEASE}-stepchain-token", release).data == token
    release_helm(kube_cluster, release, "uninstall", RELEASE)
    assert names(kube_cluster, release) == {k: set() for k in found}

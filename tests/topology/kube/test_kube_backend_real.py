"""The Kubernetes backend against a real kube-apiserver (tests/control_plane.py): objects read
back by label selector, Deployments rolled by the real controllers, pods made Ready by KWOK,
the garbage collector, a second service on the same namespace, a hand edit (one namespace per
test). Pods run no containers and their IPs are fake: only API state is asserted.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import api_client_for, eventually, service_account_kubeconfig
from control_plane import ControlPlane, tool
from topology_fixtures import api_client

from topology.backend import BackendError
from topology.jobs.kube_job import JobPodOptions, KubeJobPool, render_job
from topology.jobs.manifest import JobManifest, JobOptions
from topology.kube.backend import REQUIRED_PERMISSIONS, KubernetesBackend
from topology.kube.manifests import RenderOptions, render_manifests
from topology.kube.objects import DEFAULT_STEP_SERVICE_ACCOUNT
from topology.pipeline.graph import parse_pipeline
from topology.service.app import create_app
from topology.service.settings import Settings

#: The session's control plane takes a while to start; every test here uses it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())
SELECTOR = "pipeline_id=demo"


@pytest.fixture()
def backend(kube_cluster: ControlPlane, kube_namespace: str) -> Iterator[KubernetesBackend]:
    # The steps' pods run as the ServiceAccount the chart creates; without it the ReplicaSet
    # controller is refused every pod ("serviceaccount \"stepchain-step\" not found").
    from kubernetes import client

    client.CoreV1Api(kube_cluster.api()).create_namespaced_service_account(
        kube_namespace, {"metadata": {"name": DEFAULT_STEP_SERVICE_ACCOUNT}})
    backend = KubernetesBackend(kube_cluster.api(), RenderOptions(namespace=kube_namespace))
    yield backend
    backend.close()


class Cluster:
    """Reads of the real API server for assertions, by label selector as a user's kubectl -l."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        from kubernetes import client

        api = plane.api()
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)

    def names(self, selector: str = SELECTOR) -> dict[str, set[str]]:
        """Names of every kind the backend creates, and what controllers make from them."""
        ns, sel = self.namespace, selector
        return {
            "configmaps": {o.metadata.name for o in
                           self.core.list_namespaced_config_map(ns, label_selector=sel).items},
            "deployments": {o.metadata.name for o in
                            self.apps.list_namespaced_deployment(ns, label_selector=sel).items},
            "services": {o.metadata.name for o in
                         self.core.list_namespaced_service(ns, label_selector=sel).items},
            "horizontalpodautoscalers": {
                o.metadata.name for o in self.autoscaling
                .list_namespaced_horizontal_pod_autoscaler(ns, label_selector=sel).items},
            "networkpolicies": {o.metadata.name for o in self.networking
                                .list_namespaced_network_policy(ns, label_selector=sel).items},
        }

    def everything_left(self) -> dict[str, list[str]]:
        """Every object of the kinds a pipeline leads to in the namespace, labelled or not
        (the namespace's own default ServiceAccount and root CA ConfigMap aside)."""
        ns = self.namespace
        found = {
            "configmaps": [o.metadata.name for o in self.core.list_namespaced_config_map(ns).items
                           if o.metadata.name != "kube-root-ca.crt"],
            "deployments": [o.metadata.name for o in
                            self.apps.list_namespaced_deployment(ns).items],
            "replicasets": [o.metadata.name for o in
                            self.apps.list_namespaced_replica_set(ns).items],
            "pods": [o.metadata.name for o in self.core.list_namespaced_pod(ns).items],
            "services": [o.metadata.name for o in self.core.list_namespaced_service(ns).items],
            "endpointslices": [o.metadata.name for o in
                               self.discovery.list_namespaced_endpoint_slice(ns).items],
            "horizontalpodautoscalers": [
                o.metadata.name for o in
                self.autoscaling.list_namespaced_horizontal_pod_autoscaler(ns).items],
            "networkpolicies": [o.metadata.name for o in
                                self.networking.list_namespaced_network_policy(ns).items],
        }
        return {kind: names for kind, names in found.items() if names}

    def replica_sets(self, step: int) -> list[Any]:
        return self.apps.list_namespaced_replica_set(
            self.namespace, label_selector=f"{SELECTOR},step_id={step}").items


@pytest.fixture()
def cluster(kube_cluster: ControlPlane, kube_namespace: str) -> Cluster:
    return Cluster(kube_cluster, kube_namespace)


def demo_names(*step_ids: int) -> dict[str, set[str]]:
    return {"configmaps": {f"demo-step-{n}-config" for n in step_ids},
            "deployments": {f"demo-step-{n}" for n in step_ids},
            "services": {f"demo-step-{n}" for n in step_ids},
            "horizontalpodautoscalers": set(),
            "networkpolicies": {"demo-steps"} if len(step_ids) > 1 else set()}


def with_autoscale(data: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    changed["steps"][1]["autoscale"] = {"maxReplicas": 3}
    return changed


def test_post_creates_configmaps_deployments_services_policy_and_hpa_found_by_label(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
    app = create_app(Settings(namespace=kube_namespace), backend)
    with api_client(app) as client:
        created = client.post("/pipeline", json=with_autoscale(DEMO))
        assert created.status_code == 201, created.text
    expected = demo_names(0, 1, 2, 3)
    expected["horizontalpodautoscalers"] = {"demo-step-1"}
    assert cluster.names() == expected
    # Each step's objects are found by its own label too, as discovery and kubectl -l do.
    assert cluster.names(f"{SELECTOR},step_id=2")["deployments"] == {"demo-step-2"}
    config = cluster.core.read_namespaced_config_map("demo-step-2-config", kube_namespace)
    assert "step_id: 2" in config.data["PIPELINE_CONFIG"]
    entry = cluster.core.read_namespaced_service("demo-step-0", kube_namespace)
    assert entry.spec.type == "NodePort"
    assert {p.name for p in entry.spec.ports if p.node_port} == {"grpc", "http"}
    inner = cluster.core.read_namespaced_service("demo-step-1", kube_namespace)
    assert inner.spec.cluster_ip == "None"  # headless: DNS names every pod


def test_pods_turn_ready_and_get_pipeline_reports_it_from_their_status(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
    app = create_app(Settings(namespace=kube_namespace), backend)
    with api_client(app) as client:
        assert client.post("/pipeline", json=DEMO).status_code == 201
        ready = eventually(lambda: (lambda body: body if body["ready"] else None)(
            client.get("/pipeline/demo").json()), timeout=120, what="GET /pipeline/demo ready")
    assert [(s["step_id"], s["ready"], s["ready_replicas"]) for s in ready["steps"]] == \
        [(0, True, 1), (1, True, 1), (2, True, 1), (3, True, 1)]
    for step in range(4):
        pods = cluster.core.list_namespaced_pod(
            kube_namespace, label_selector=f"{SELECTOR},step_id={step}").items
        assert [p.status.phase for p in pods] == ["Running"]


def test_put_changing_one_steps_params_rolls_only_that_steps_deployment(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
    app = create_app(Settings(namespace=kube_namespace), backend)
    with api_client(app) as client:
        assert client.post("/pipeline", json=DEMO).status_code == 201
        eventually(lambda: all(len(cluster.replica_sets(n)) == 1 for n in range(4)),
                   what="one ReplicaSet per step")
        before = {n: {rs.metadata.name for rs in cluster.replica_sets(n)} for n in range(4)}
        changed = copy.deepcopy(DEMO)
        changed["steps"][3]["params"] = {"scale": 0.25}
        assert client.put("/pipeline/demo", json=changed).status_code == 200
    eventually(lambda: len(cluster.replica_sets(3)) == 2, what="a new ReplicaSet for step 3")
    for step in (0, 1, 2):
        assert {rs.metadata.name for rs in cluster.replica_sets(step)} == before[step]
        deployment = cluster.apps.read_namespaced_deployment(f"demo-step-{step}",
                                                             kube_namespace)
        # Not rolled: still the first revision. (Its generation does move: the pipeline's
        # fingerprint annotation changed, and a Deployment counts annotation changes too.)
        assert deployment.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    # The controller creates the new ReplicaSet, then marks the Deployment's revision in a later
    # sync: wait for that too.
    eventually(lambda: cluster.apps.read_namespaced_deployment(
        "demo-step-3", kube_namespace).metadata.annotations.get(
        "deployment.kubernetes.io/revision") == "2", what="step 3's Deployment at revision 2")
    # The other steps' ConfigMaps carry the new graph without rolling their pods.
    config = cluster.core.read_namespaced_config_map("demo-step-0-config", kube_namespace)
    assert "scale: 0.25" in config.data["PIPELINE_CONFIG"]


def test_delete_leaves_nothing_behind(backend: KubernetesBackend, cluster: Cluster,
                                      kube_namespace: str) -> None:
    app = create_app(Settings(namespace=kube_namespace), backend)
    with api_client(app) as client:
        assert client.post("/pipeline", json=with_autoscale(DEMO)).status_code == 201
        eventually(lambda: len(cluster.everything_left().get("pods", [])) == 4, timeout=120,
                   what="4 pods")
        assert client.delete("/pipeline/demo").status_code == 200
        assert client.get("/pipeline/demo").status_code == 404
    # ReplicaSets, pods and EndpointSlices go with their owners (garbage collector).
    eventually(lambda: not cluster.everything_left(), timeout=120,
               what="an empty namespace")


def test_delete_removes_one_pipeline_and_keeps_the_others(
        backend: KubernetesBackend, cluster: Cluster) -> None:
    backend.apply(parse_pipeline(DEMO))
    backend.apply(parse_pipeline({"name": "other", "steps": [{"type": "edges"}]}))
    assert backend.delete("demo") is True
    assert cluster.names() == demo_names()
    other = cluster.names("pipeline_id=other")
    assert other["deployments"] == {"other-step-0"}
    assert backend.status("demo") is None
    assert backend.delete("demo") is False


def test_reapplying_the_same_pipeline_converges_without_duplicates(
        backend: KubernetesBackend, cluster: Cluster) -> None:
    backend.apply(parse_pipeline(DEMO))
    backend.apply(parse_pipeline(DEMO))
    assert cluster.names() == demo_names(0, 1, 2, 3)
    assert [s.pipeline_id for s in backend.list_pipelines()] == ["demo"]


def test_a_changed_pipeline_removes_stale_steps_and_the_hpa_follows_autoscale(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
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
    assert cluster.names() == expected
    deployment = cluster.apps.read_namespaced_deployment("demo-step-1", kube_namespace)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["OMP_NUM_THREADS"] == "4"
    backend.apply(parse_pipeline(DEMO))
    assert cluster.names() == demo_names(0, 1, 2, 3)


def test_a_second_topology_service_on_the_namespace_sees_the_first_ones_pipelines(
        kube_cluster: ControlPlane, kube_namespace: str) -> None:
    first = KubernetesBackend(kube_cluster.api(), RenderOptions(namespace=kube_namespace))
    second = KubernetesBackend(kube_cluster.api(), RenderOptions(namespace=kube_namespace))
    with api_client(create_app(Settings(namespace=kube_namespace), first)) as one, \
            api_client(create_app(Settings(namespace=kube_namespace), second)) as two:
        assert one.post("/pipeline", json=DEMO).status_code == 201
        assert [p["pipeline_id"] for p in two.get("/pipelines").json()["pipelines"]] == ["demo"]
        got = two.get("/pipeline/demo").json()
        assert got["spec"] == DEMO
        # Same body through the second service: the same pipeline, not a conflict.
        assert two.post("/pipeline", json=DEMO).status_code == 200
        assert two.delete("/pipeline/demo").status_code == 200
        assert one.get("/pipeline/demo").status_code == 404


def test_a_hand_edit_of_a_rendered_field_is_overwritten_and_other_fields_are_kept(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
    backend.apply(parse_pipeline(DEMO))
    # Someone scales a step and adds an annotation by hand (kubectl scale/annotate: a patch by
    # another field manager).
    cluster.apps.patch_namespaced_deployment(
        "demo-step-2", kube_namespace,
        {"spec": {"replicas": 5}, "metadata": {"annotations": {"team.example/owner": "someone"}}},
        field_manager="kubectl-edit")
    assert cluster.apps.read_namespaced_deployment("demo-step-2",
                                                   kube_namespace).spec.replicas == 5
    backend.apply(parse_pipeline(DEMO))  # the next POST/PUT of the pipeline
    after = cluster.apps.read_namespaced_deployment("demo-step-2", kube_namespace)
    assert after.spec.replicas == 1  # what the pipeline says wins
    assert after.metadata.annotations["team.example/owner"] == "someone"  # not ours: kept


def test_status_and_list_survive_objects_the_service_did_not_make(
        backend: KubernetesBackend, cluster: Cluster, kube_namespace: str) -> None:
    # A ConfigMap labelled with the pipeline id by someone else is not the service's.
    cluster.core.create_namespaced_config_map(kube_namespace, {
        "metadata": {"name": "lookalike", "labels": {"pipeline_id": "demo"}}, "data": {}})
    assert backend.status("demo") is None
    assert backend.list_pipelines() == []


def test_api_answers_201_then_200_then_409_then_put_and_delete(
        backend: KubernetesBackend, kube_namespace: str) -> None:
    app = create_app(Settings(namespace=kube_namespace), backend)
    with api_client(app) as client:
        created = client.post("/pipeline", json=DEMO)
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        assert body["entrypoint"] == f"demo-step-0.{kube_namespace}.svc:50051"
        assert body["http_entrypoint"] == f"http://demo-step-0.{kube_namespace}.svc:8080"
        assert client.post("/pipeline", json=DEMO).json()["created"] is False
        different = copy.deepcopy(DEMO)
        different["steps"][3]["params"] = {"scale": 0.25}
        conflict = client.post("/pipeline", json=different)
        assert conflict.status_code == 409
        assert "PUT /pipeline/demo" in conflict.json()["detail"]
        assert client.put("/pipeline/demo", json=different).status_code == 200
        got = client.get("/pipeline/demo").json()
        assert got["spec"] == different
        assert client.delete("/pipeline/demo").status_code == 200
        assert client.get("/pipeline/demo").status_code == 404


def test_a_pipeline_for_another_namespace_is_refused(backend: KubernetesBackend,
                                                     kube_namespace: str) -> None:
    app = create_app(Settings(backend="kubernetes", namespace=kube_namespace), backend)
    with api_client(app) as client:
        refused = client.post("/pipeline", json=DEMO | {"namespace": "kube-system"})
        assert refused.status_code == 422
        assert ["body", "namespace"] in [d["loc"] for d in refused.json()["detail"]]


def test_every_manifest_the_renderer_makes_passes_the_servers_dry_run(
        kube_cluster: ControlPlane, kube_namespace: str) -> None:
    """Server-side dry run (admission and validation of the real server, nothing stored) of
    the examples, a pipeline with every step option, and colocated pipelines."""
    from kubernetes import client, utils

    api = kube_cluster.api()
    pipelines = [json.loads(p.read_text()) for p in sorted((ROOT / "examples").glob("*.json"))]
    pipelines.append(with_autoscale(DEMO))
    pipelines.append(DEMO | {"colocate": True})
    pipelines.append(with_autoscale(DEMO) | {"colocate": True, "name": "chain"})
    checked = 0
    for data in pipelines:
        for manifest in render_manifests(parse_pipeline(data),
                                         RenderOptions(namespace=kube_namespace)):
            utils.create_from_dict(api, manifest, namespace=kube_namespace, dry_run="All")
            checked += 1
    # A batch job's Indexed Job (topology.jobs.kube_job), with and without a store Secret.
    job = JobManifest(id="j0123456789ab", pipeline="demo", input="s3://photos/in/",
                      output="s3://photos/out/", options=JobOptions(workers=3), total=9)
    for options in (JobPodOptions(namespace=kube_namespace),
                    JobPodOptions(namespace=kube_namespace, store_secret="stepchain-store",
                                  store_env={"AWS_ENDPOINT_URL": "http://store:9000"})):
        utils.create_from_dict(api, render_job(job, "demo-step-0:50051", options),
                               namespace=kube_namespace, dry_run="All")
        checked += 1
    assert checked > 20
    assert client.CoreV1Api(api).list_namespaced_config_map(
        kube_namespace, label_selector="app.kubernetes.io/part-of=stepchain").items == []


def test_the_backend_calls_exactly_what_required_permissions_lists(
        kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path) -> None:
    """Against a Role made of REQUIRED_PERMISSIONS: nothing the backend does is refused, and
    the API server's audit log shows every granted verb in use."""
    kubeconfig = service_account_kubeconfig(kube_cluster, kube_namespace, "stepchain-topology",
                                            tmp_path / "kubeconfig", rules=REQUIRED_PERMISSIONS)
    api = api_client_for(kubeconfig)
    backend = KubernetesBackend(api, RenderOptions(namespace=kube_namespace))
    backend.apply(parse_pipeline(with_autoscale(DEMO)))
    backend.apply(parse_pipeline(with_autoscale(DEMO)))
    backend.apply(parse_pipeline(DEMO))  # deletes the stale HPA
    status = backend.status("demo")
    backend.list_pipelines()
    # A batch job's Indexed Job, on the backend's client as the service makes it
    # (topology.jobs.wiring): created, read for its state, deleted when the job ends.
    assert status is not None
    jobs = KubeJobPool(api, JobPodOptions(namespace=kube_namespace))
    job = JobManifest(id="j0123456789ab", pipeline="demo", input="s3://photos/in/",
                      output="s3://photos/out/", options=JobOptions(workers=2), total=4)
    jobs.start(job, status)
    assert jobs.running(job.id) and jobs.failure(job.id) is None
    jobs.stop(job.id)
    backend.delete("demo")
    user = f"system:serviceaccount:{kube_namespace}:stepchain-topology"
    used = {(e["objectRef"].get("apiGroup", ""), e["objectRef"]["resource"], e["verb"])
            for e in kube_cluster.audit_events(user) if "objectRef" in e}
    assert all(e["responseStatus"]["code"] < 400 for e in kube_cluster.audit_events(user))
    granted = {(group, resource, verb) for group, resource, verbs in REQUIRED_PERMISSIONS
               for verb in verbs}
    assert used == granted
    # ... and nothing beyond it: pods directly, Secrets, another namespace, cluster scope.
    kubectl = [str(tool("kubectl")), "--kubeconfig", str(kubeconfig), "auth", "can-i"]
    for question in (["create", "pods"], ["get", "secrets"], ["list", "configmaps", "-n",
                     "default"], ["list", "nodes"], ["create", "roles"],
                     ["update", "deployments"], ["watch", "deployments"]):
        answer = subprocess.run([*kubectl, *question], capture_output=True, text=True,
                                timeout=60, check=False)
        assert answer.stdout.strip() == "no", (question, answer.stdout, answer.stderr)
    assert subprocess.run([*kubectl, "patch", "deployments"], capture_output=True, text=True,
                          timeout=60, check=False).stdout.strip() == "yes"


def test_an_unreachable_api_server_is_a_502_naming_the_problem(kube_namespace: str) -> None:
    from kubernetes import client as k8s

    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    backend = KubernetesBackend(k8s.ApiClient(configuration),
                                RenderOptions(namespace=kube_namespace))
    with pytest.raises(BackendError, match="cannot reach the Kubernetes API"):
        backend.apply(parse_pipeline(DEMO))

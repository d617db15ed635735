"""The real control plane the Kubernetes tests run against (tests/control_plane.py): a real
kube-apiserver answers with its version, enforces RBAC, and its controllers plus KWOK turn a
Deployment into Running, Ready (fake) pods; `make cluster-up`/`cluster-down` start and stop
exactly their own processes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import eventually, service_account_kubeconfig
from control_plane import POD_CIDR, ROOT, ControlPlane, process_alive, tool

#: Every test here talks to real processes; the session's control plane takes a while to start.
pytestmark = pytest.mark.slow

KUBERNETES_VERSION = "v1.37.2"


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The kubectl built from the same k8s.io/kubernetes module (not whatever is on PATH)."""
    return subprocess.run([str(tool("kubectl")), "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "main",
                                                       "image": "example.invalid/none:1"}]}}},
    }


def test_kubectl_version_shows_the_real_server_version(kube_cluster: ControlPlane) -> None:
    result = kubectl(kube_cluster.kubeconfig, "version", "--output=json")
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_a_deployment_gets_running_ready_pods_on_fake_nodes(kube_cluster: ControlPlane,
                                                           kube_namespace: str) -> None:
    from kubernetes import client

    api = kube_cluster.api()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(kube_namespace, deployment("web", 2))
    ready = eventually(lambda: (apps.read_namespaced_deployment("web", kube_namespace)
                                .status.ready_replicas or 0) >= 2,
                       what="2 ready replicas")
    assert ready
    pods = core.list_namespaced_pod(kube_namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
        assert pod.spec.node_name.startswith("kwok-node-")  # the scheduler placed it
        # KWOK's fake address: asserted, never connected to.
        assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(POD_CIDR)
        owner = pod.metadata.owner_references[0]
        assert owner.kind == "ReplicaSet" and owner.name.startswith("web-")


def test_the_garbage_collector_removes_what_a_deleted_deployment_owned(
        kube_cluster: ControlPlane, kube_namespace: str) -> None:
    from kubernetes import client

    api = kube_cluster.api()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(kube_namespace, deployment("gone", 1))
    eventually(lambda: core.list_namespaced_pod(kube_namespace, label_selector="app=gone").items,
               what="a pod")
    apps.delete_namespaced_deployment("gone", kube_namespace)  # default: background cascade
    eventually(lambda: not apps.list_namespaced_replica_set(kube_namespace).items
               and not core.list_namespaced_pod(kube_namespace).items,
               what="no ReplicaSet and no Pod left")


def test_rbac_denies_a_service_account_what_no_role_grants(kube_cluster: ControlPlane,
                                                          kube_namespace: str,
                                                          tmp_path: Path) -> None:
    kubeconfig = service_account_kubeconfig(kube_cluster, kube_namespace, "nobody",
                                            tmp_path / "nobody.kubeconfig")
    denied = kubectl(kubeconfig, "get", "configmaps")
    assert denied.returncode == 1
    assert (f'User "system:serviceaccount:{kube_namespace}:nobody" cannot list resource '
            f'"configmaps"') in denied.stderr
    can_i = kubectl(kubeconfig, "auth", "can-i", "list", "configmaps")
    assert can_i.stdout.strip() == "no"
    # A Role granting it makes the same call pass (RBAC, not something else, said no).
    allowed = service_account_kubeconfig(kube_cluster, kube_namespace, "reader",
                                         tmp_path / "reader.kubeconfig",
                                         rules=[("", "configmaps", ("list",))])
    assert kubectl(allowed, "get", "configmaps").returncode == 0


def test_cluster_up_and_down_start_and_stop_exactly_their_processes(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    plane: ControlPlane | None = None
    script = [sys.executable, str(ROOT / "tests" / "control_plane.py"), "--dir", str(workdir)]
    up = subprocess.run([*script, "up"], capture_output=True, text=True, timeout=300,
                        check=False)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export KUBECONFIG={workdir / 'kubeconfig'}"
        plane = ControlPlane.load(workdir)
        assert set(plane.pids) == {"etcd", "kube-apiserver", "kube-controller-manager",
                                   "kube-scheduler", "kwok"}
        assert all(plane.running().values())
        # The processes outlive the command that started them (their own session).
        assert all(os.getsid(pid) == pid for pid in plane.pids.values())
        version = kubectl(workdir / "kubeconfig", "version", "--output=json")
        assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    finally:
        down = subprocess.run([*script, "down"], capture_output=True, text=True, timeout=120,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert not workdir.exists()
    assert plane is not None
    assert not any(process_alive(pid, plane.started[name]) for name, pid in plane.pids.items())

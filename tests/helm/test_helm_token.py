"""The API token the chart generates survives upgrades.

The chart's Secret template `lookup`s the Secret a previous install created and reuses its token,
so clients keep working after `helm upgrade`. `helm template --dry-run=server` runs exactly that
lookup against a cluster; the cluster here is kmock's KubernetesEmulator over real HTTP.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from helm_fixtures import CHART, NAMESPACE, RELEASE, helm, render
from kube_fixtures import KubeEmulator

#: Kinds the chart renders; Helm maps each manifest through API discovery before rendering.
CHART_RESOURCES = {
    "v1/secrets": "Secret",
    "v1/serviceaccounts": "ServiceAccount",
    "v1/services": "Service",
    "apps/v1/deployments": "Deployment",
    "rbac.authorization.k8s.io/v1/roles": "Role",
    "rbac.authorization.k8s.io/v1/rolebindings": "RoleBinding",
    "networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
}


class EmulatedCluster(KubeEmulator):
    """kmock's emulator knowing the chart's kinds, patched to look like an API server to Helm."""

    def __init__(self) -> None:
        super().__init__({resource: kmock.ResourceInfo(kind=kind, namespaced=True)
                          for resource, kind in CHART_RESOURCES.items()})
        # Two gaps between kmock 0.8 and what Helm's client-go expects of an API server:
        # /version says 1.26 (below the chart's kubeVersion), and the core group's discovery
        # document says groupVersion "/v1" instead of "v1" (Helm then maps no core kind).
        self.emulator["get /version"] << {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                          "platform": "linux/amd64"}
        with urllib.request.urlopen(f"{self.url}/api/v1", timeout=10) as response:
            core = json.loads(response.read())
        core["groupVersion"] = "v1"
        self.emulator["get /api/v1"] << core

    def create(self, path: str, body: dict[str, Any]) -> None:
        """POSTs `body` to `path` as a client would (JSON over HTTP)."""
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201), response.status


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    emulated = EmulatedCluster()
    try:
        yield emulated
    finally:
        emulated.close()


def _token_secret(name: str, token: str) -> dict[str, Any]:
    """The token Secret as an earlier `helm install` of RELEASE left it (with Helm's ownership
    metadata, without which Helm refuses to adopt the object)."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "Helm"},
                     "annotations": {"meta.helm.sh/release-name": RELEASE,
                                     "meta.helm.sh/release-namespace": NAMESPACE}},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def _rendered_token(cluster: EmulatedCluster, tmp_path: Path) -> str:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                  "--dry-run=server", "--disable-openapi-validation",
                  "--kubeconfig", str(kubeconfig))
    assert result.returncode == 0, result.stderr
    (secret,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Secret"]
    return base64.b64decode(secret["data"]["token"]).decode()


def test_upgrade_keeps_the_token_of_the_installed_release(cluster: EmulatedCluster,
                                                          tmp_path: Path) -> None:
    name = render("defaults").one("Secret", "topology")["metadata"]["name"]
    installed = "k3rQ9vX2mT7pL4wZ8nB5cY1hJ6dF0sGa3eUiOoPq"
    cluster.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", _token_secret(name, installed))
    assert _rendered_token(cluster, tmp_path) == installed


def test_first_install_generates_a_fresh_random_token(cluster: EmulatedCluster,
                                                      tmp_path: Path) -> None:
    first = _rendered_token(cluster, tmp_path)
    second = _rendered_token(cluster, tmp_path)
    assert len(first) == 40 and first.isalnum()
    assert first != second  # nothing installed yet: each render draws a new one

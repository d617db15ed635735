"""The real Kubernetes control plane for tests (tests/control_plane.py), one per test session.

``kube_cluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK
(two fake nodes) the first time a test asks for it, on free loopback ports in a temporary
folder, and stops them when the session ends. ``kube_namespace`` gives each test a namespace of
its own (deleted afterwards), so tests never see each other's objects.

A missing binary fails the test with the command that builds it (`make tools`), never a skip:
CI must not go green without the real server. To iterate quickly, start one cluster with
``make cluster-up`` and point the tests at it with ``STEPCHAIN_TEST_CLUSTER=out/cluster``: the
session then reuses it and leaves it running.

Pods run no containers and their IPs are fake: assert API state, never connect to them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from control_plane import ControlPlane, kubeconfig_document

T = TypeVar("T")
REUSE_ENV = "STEPCHAIN_TEST_CLUSTER"
#: Fake nodes: two, so a test can see pods spread and a node's pods listed by field selector.
NODES = 2
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane; its admin kubeconfig is ``kube_cluster.kubeconfig``."""
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        plane = ControlPlane.load(Path(reuse))
        stopped = [n for n, alive in plane.running().items() if not alive]
        if stopped:
            pytest.fail(f"{REUSE_ENV}={reuse}: {', '.join(stopped)} not running "
                        "(`make cluster-down cluster-up`)")
        yield plane
        return
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("kube-cluster"), nodes=NODES)
    try:
        plane.start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube_namespace(kube_cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (with everything in it) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube_cluster.api())
    name = f"t{os.getpid()}-{next(_namespaces)}-{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:63]
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def eventually(check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25,
               what: str = "condition") -> T:
    """Calls `check` until it returns something truthy and returns that; fails after `timeout`
    naming `what` and the last value (controllers act asynchronously)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s (last: {last!r})")


def service_account_kubeconfig(plane: ControlPlane, namespace: str, name: str, path: Path, *,
                               rules: Sequence[tuple[str, str, Sequence[str]]] | None = None,
                               ) -> Path:
    """A kubeconfig at `path` acting as ServiceAccount `namespace`/`name` with a token from the
    TokenRequest API (as a pod's projected token). With `rules` ((apiGroup, resource, verbs)),
    the account first gets a Role of exactly those and a RoleBinding to it."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = plane.api()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    if rules is not None:
        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": name},
            "rules": [{"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
                      for group, resource, verbs in rules]})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    path.write_text(json.dumps(kubeconfig_document(
        plane.server, (plane.pki / "ca.crt").read_bytes(), user=name, token=token,
        namespace=namespace)))
    return path


def api_client_for(kubeconfig: Path) -> Any:
    """An official-client ApiClient from a kubeconfig file."""
    from kubernetes import config

    return config.new_client_from_config(str(kubeconfig))

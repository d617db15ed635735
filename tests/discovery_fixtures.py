"""Kubernetes discovery test helpers: a module-wide kmock emulator that knows ConfigMaps
(:class:`kube_fixtures.KubeEmulator`), step ConfigMaps as the topology service writes them, and
polling for what a discovery watch thread eventually sees.

Usage::

    def test_x(kube: KubeEmulator) -> None:
        ns = kube.new_namespace()
        kube.core.create_namespaced_config_map(ns, step_configmap("p", 1, ns))
        ConfigMapDiscovery("p", namespace=ns, api_client=kube.api_client())

Known emulator limits (why discovery re-checks labels itself): ``labelSelector``,
``resourceVersion`` and ``timeoutSeconds`` are ignored; every watch first replays the existing
objects as ADDED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import kmock
import pytest
from kube_fixtures import KubeEmulator
from kubernetes import client


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Polls `predicate` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.02)
    return True


def step_configmap(pipeline_id: str, step_id: int, namespace: str, *,
                   labels: dict[str, str] | None = None,
                   config: str | None = None) -> client.V1ConfigMap:
    """A step ConfigMap as the topology service writes it (labels overridable)."""
    meta_labels = {"app.kubernetes.io/part-of": "stepchain", "pipeline_id": pipeline_id,
                   "step_id": str(step_id)} if labels is None else labels
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{pipeline_id}-step-{step_id}-config",
                                     namespace=namespace, labels=meta_labels),
        data={"PIPELINE_CONFIG": config} if config is not None else {})


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeEmulator]:
    """One emulator per test module; tests keep apart by namespace."""
    emulator = KubeEmulator({"v1/configmaps": kmock.ResourceInfo(kind="ConfigMap",
                                                                 namespaced=True)})
    yield emulator
    emulator.close()

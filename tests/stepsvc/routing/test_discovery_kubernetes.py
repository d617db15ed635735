"""ConfigMap discovery against kmock's KubernetesEmulator, over real HTTP, official client."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from discovery_fixtures import kube, step_configmap, wait_for
from kube_fixtures import KubeEmulator
from kubernetes import client
from step_fixtures import free_port

from stepsvc.routing import kubernetes as kube_discovery
from stepsvc.routing.discovery import Discovery, make_discovery
from stepsvc.routing.kubernetes import (
    API_KEEPALIVE,
    ConfigMapDiscovery,
    load_api_client,
    step_service_address,
)
from stepsvc.step.config import dump_config, parse_config

__all__ = ["kube"]  # the fixture, imported so pytest finds it


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    return free_port()


@pytest.fixture
def ns(kube: KubeEmulator) -> str:
    return kube.new_namespace()


@pytest.fixture
def start_discovery(kube: KubeEmulator, ns: str) -> Iterator[Callable[..., ConfigMapDiscovery]]:
    started: list[ConfigMapDiscovery] = []

    def start(pipeline_id: str = "demo", port: int = 50051) -> ConfigMapDiscovery:
        d = ConfigMapDiscovery(pipeline_id, namespace=ns, port=port,
                               api_client=kube.api_client())
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def addr(step_id: int, ns: str, pipeline_id: str = "demo", port: int = 50051) -> str:
    return f"dns:///{pipeline_id}-step-{step_id}.{ns}.svc.cluster.local:{port}"


def test_a_step_address_is_a_dns_target_naming_every_pod_of_its_headless_service() -> None:
    assert step_service_address("demo", 3, "prod", 50051) == \
        "dns:///demo-step-3.prod.svc.cluster.local:50051"


def test_the_cluster_domain_can_be_set_for_clusters_not_using_cluster_local(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPCHAIN_CLUSTER_DOMAIN", "corp.example.")
    assert step_service_address("demo", 3, "prod", 50051) == \
        "dns:///demo-step-3.prod.svc.corp.example:50051"


def test_existing_configmaps_are_active_after_start(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 0, ns))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 2, ns))
    d = start_discovery(port=6000)
    assert isinstance(d, Discovery)
    assert wait_for(lambda: d.active() == {0: addr(0, ns, port=6000), 2: addr(2, ns, port=6000)})


def test_configmap_created_after_start_becomes_active_via_watch(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    d = start_discovery()
    assert wait_for(lambda: d.list_count == 1)
    assert d.active() == {}
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    assert wait_for(lambda: d.active() == {1: addr(1, ns)})
    # Seen through the watch: nothing listed again.
    assert d.list_count == 1


def test_deleted_configmap_disappears(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 2, ns))
    d = start_discovery()
    assert wait_for(lambda: set(d.active()) == {1, 2})
    kube.core.delete_namespaced_config_map("demo-step-1-config", ns)
    assert wait_for(lambda: set(d.active()) == {2})


def test_configmap_of_another_pipeline_is_ignored(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    d = start_discovery()
    kube.core.create_namespaced_config_map(ns, step_configmap("other", 5, ns))
    kube.core.create_namespaced_config_map(
        ns, step_configmap("demo", 6, ns, labels={"app.kubernetes.io/part-of": "stepchain"}))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    # demo's own step arriving after the others proves those were seen and skipped.
    assert wait_for(lambda: 1 in d.active())
    assert d.active() == {1: addr(1, ns)}


def test_configmap_in_another_namespace_is_ignored(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    other = kube.new_namespace()
    d = start_discovery()
    kube.core.create_namespaced_config_map(other, step_configmap("demo", 4, other))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    assert wait_for(lambda: 1 in d.active())
    assert d.active() == {1: addr(1, ns)}


def test_relabelled_configmap_leaves_the_pipeline(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    d = start_discovery()
    assert wait_for(lambda: 1 in d.active())
    kube.core.patch_namespaced_config_map("demo-step-1-config", ns,
                                          {"metadata": {"labels": {"pipeline_id": "other"}}})
    assert wait_for(lambda: d.active() == {})


def test_step_id_falls_back_to_pipeline_config(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    config = dump_config(parse_config(
        "pipeline_id: demo\nstep_id: 3\nsteps: [{id: 3, type: identity}]\n"))
    kube.core.create_namespaced_config_map(
        ns, step_configmap("demo", 3, ns, labels={"pipeline_id": "demo"}, config=config))
    # A ConfigMap with neither a step_id label nor a valid config cannot name its step.
    broken = step_configmap("demo", 4, ns, labels={"pipeline_id": "demo"}, config="steps: [")
    kube.core.create_namespaced_config_map(ns, broken)
    d = start_discovery()
    assert wait_for(lambda: d.active() == {3: addr(3, ns)})


def test_relists_after_the_watch_connection_breaks(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 2, ns))
    d = start_discovery()
    assert wait_for(lambda: set(d.active()) == {1, 2})
    # Gone without a DELETED event: only a fresh list can tell.
    kube.delete_silently(ns, "demo-step-1-config")
    time.sleep(0.3)
    assert set(d.active()) == {1, 2}  # the cache answers while the watch is quiet
    assert kube.drop_connections() >= 1
    assert wait_for(lambda: set(d.active()) == {2})
    assert d.list_count >= 2
    # And it watches again afterwards.
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 7, ns))
    assert wait_for(lambda: set(d.active()) == {2, 7})


def test_relists_when_the_watch_expires_with_410(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stepsvc.routing.kubernetes")
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    expired = kube.expire_next_watch(ns)
    d = start_discovery()
    assert wait_for(lambda: expired() and d.list_count == 2)
    assert any("watch expired; listing again" in r.getMessage() for r in caplog.records)
    assert d.active() == {1: addr(1, ns)}
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 2, ns))
    assert wait_for(lambda: set(d.active()) == {1, 2})


def test_backs_off_while_watches_keep_failing(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    kube.forbid_watches(ns)
    d = ConfigMapDiscovery("demo", namespace=ns, api_client=kube.api_client())
    d.start(initial_sync_timeout=0.1)
    try:
        assert wait_for(lambda: d.active() == {1: addr(1, ns)})  # the list alone still helps
        time.sleep(1.5)
    finally:
        d.close()
    # Waits of 0.2 + 0.4 + 0.8 s between resyncs: at most 4 lists in 1.5 s, where a fixed
    # 0.2 s retry would make 7 or more.
    assert 2 <= kube.list_requests(ns) <= 4


def test_does_not_poll_while_the_watch_is_healthy(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    d = start_discovery()
    assert wait_for(lambda: d.list_count == 1)
    time.sleep(1.0)
    assert kube.list_requests(ns) == 1


def test_close_stops_the_watch_promptly(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    d = start_discovery()
    d.start()  # idempotent: still one watcher
    assert wait_for(lambda: d.list_count == 1)
    time.sleep(0.2)  # let the watch open
    t0 = time.monotonic()
    d.close()
    assert time.monotonic() - t0 < 2.0
    assert d._thread is not None and not d._thread.is_alive()
    assert d.list_count == 1


def test_steps_are_known_as_soon_as_start_returns(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 1, ns))
    d = start_discovery()
    assert d.active() == {1: addr(1, ns)}  # no wait: start() waited for the first list


def test_configmap_being_deleted_with_finalizers_is_inactive(
        kube: KubeEmulator, ns: str, start_discovery: Callable[..., ConfigMapDiscovery]) -> None:
    cm = step_configmap("demo", 1, ns)
    assert cm.metadata is not None
    cm.metadata.finalizers = ["example.com/hold"]
    kube.core.create_namespaced_config_map(ns, cm)
    d = start_discovery()
    assert d.active() == {1: addr(1, ns)}
    kube.core.delete_namespaced_config_map("demo-step-1-config", ns)  # -> deletionTimestamp
    assert wait_for(lambda: d.active() == {})


def test_unreachable_api_server_does_not_block_start(unused_port: int) -> None:
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{unused_port}"))
    d = ConfigMapDiscovery("demo", namespace="default", api_client=api)
    t0 = time.monotonic()
    d.start(initial_sync_timeout=0.5)
    try:
        assert time.monotonic() - t0 < 3.0
        assert d.active() == {}
    finally:
        d.close()
    assert d._thread is not None and not d._thread.is_alive()


def test_make_discovery_kubernetes_uses_the_kubeconfig(
        kube: KubeEmulator, ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    kube.core.create_namespaced_config_map(ns, step_configmap("demo", 2, ns))
    d = make_discovery("kubernetes", "demo", namespace=ns, port=7000)
    try:
        assert isinstance(d, ConfigMapDiscovery)
        d.start()
        assert d.active() == {2: addr(2, ns, port=7000)}
    finally:
        d.close()


def test_api_connections_keep_tcp_keepalive_so_a_partitioned_watch_is_resynced(
        kube: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig")))
    options = load_api_client().configuration.socket_options
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, API_KEEPALIVE[0]) in options
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in options  # urllib3's own kept


def test_make_discovery_kubernetes_without_cluster_access_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(ValueError, match=r"needs either an in-cluster service account .* or a "
                                         r"kubeconfig"):
        make_discovery("kubernetes", "demo", namespace="default")


def test_namespace_defaults_to_the_pod_namespace(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ns_file = tmp_path / "namespace"
    monkeypatch.setattr(kube_discovery, "NAMESPACE_FILE", ns_file)
    assert kube_discovery.current_namespace() == "default"
    ns_file.write_text("prod\n")
    assert kube_discovery.current_namespace() == "prod"
    d = ConfigMapDiscovery("demo", api_client=client.ApiClient(
        client.Configuration(host="http://127.0.0.1:1")))
    assert d.namespace == "prod"

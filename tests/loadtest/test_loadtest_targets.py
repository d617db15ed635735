"""Load-test targets: ``--host`` parsing, and pipeline entries found in Kubernetes.

Discovery runs against kmock's KubernetesEmulator over real HTTP with the official client
(:class:`kube_fixtures.KubeEmulator`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kube_fixtures import KubeEmulator
from kubernetes import client

from loadtest.targets import Target, discover_kubernetes_targets, parse_hosts
from topology.kube.manifests import render_manifests
from topology.kube.objects import RenderOptions
from topology.pipeline.graph import parse_pipeline

_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator({
        "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True),
        "v1/nodes": kmock.ResourceInfo(kind="Node", namespaced=False)})
    try:
        yield emulator
    finally:
        emulator.close()


def namespace() -> str:
    # kmock ignores label selectors and keeps every object: each test uses its own namespace.
    return f"loadtest-{next(_namespaces)}"


def service(kube: KubeEmulator, ns: str, name: str, kind: str, node_port: int | None = None,
            port_name: str = "grpc", extra_ports: list[client.V1ServicePort] | None = None,
            labels: dict[str, str] | None = None) -> None:
    ports = [client.V1ServicePort(name=port_name, port=50051, node_port=node_port)]
    kube.core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name=name, namespace=ns, labels=labels),
        spec=client.V1ServiceSpec(type=kind, ports=(extra_ports or []) + ports)))


def node(name: str, ready: bool, **addresses: str) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(name=name),
        status=client.V1NodeStatus(
            addresses=[client.V1NodeAddress(type=k, address=v) for k, v in addresses.items()],
            conditions=[client.V1NodeCondition(type="Ready",
                                               status="True" if ready else "False")]))


@pytest.fixture(scope="module")
def nodes(kube: KubeEmulator) -> None:
    # Not-ready node first by name: discovery must prefer the Ready one.
    kube.core.create_node(node("a-broken", ready=False, ExternalIP="203.0.113.9"))
    kube.core.create_node(node("b-worker", ready=True, InternalIP="10.0.0.7",
                               ExternalIP="198.51.100.7"))


def test_only_nodeport_services_named_step_0_are_picked(kube: KubeEmulator, nodes: None) -> None:
    ns = namespace()
    service(kube, ns, "shop-step-0", "NodePort", 30100)  # the entry: picked
    service(kube, ns, "shop-step-1", "ClusterIP")
    service(kube, ns, "shop-step-10", "NodePort", 30110)  # ends in step-10, not step-0
    service(kube, ns, "lab-step-0", "ClusterIP")  # right name, not a NodePort
    service(kube, ns, "web", "NodePort", 30200)  # a NodePort, wrong name
    service(kube, ns, "photos-step-0", "NodePort", 30300)  # a second pipeline: picked
    found = discover_kubernetes_targets(namespace=ns, api=kube.core)
    assert found == [Target("198.51.100.7:30300", "photos"), Target("198.51.100.7:30100", "shop")]


def test_node_address_prefers_a_ready_nodes_external_ip_and_can_be_overridden(
        kube: KubeEmulator, nodes: None) -> None:
    ns = namespace()
    service(kube, ns, "p-step-0", "NodePort", 31000)
    assert discover_kubernetes_targets(namespace=ns, api=kube.core) == [
        Target("198.51.100.7:31000", "p")]
    assert discover_kubernetes_targets(namespace=ns, api=kube.core,
                                       node_address="127.0.0.1") == [
        Target("127.0.0.1:31000", "p")]


def test_the_port_named_grpc_is_used_when_a_service_has_several(kube: KubeEmulator,
                                                                nodes: None) -> None:
    ns = namespace()
    service(kube, ns, "multi-step-0", "NodePort", 32001, extra_ports=[
        client.V1ServicePort(name="metrics", port=9464, node_port=32002)])
    assert [t.address for t in discover_kubernetes_targets(namespace=ns, api=kube.core)] == [
        "198.51.100.7:32001"]


def test_all_namespaces_are_searched_without_a_namespace(kube: KubeEmulator, nodes: None) -> None:
    first, second = namespace(), namespace()
    service(kube, first, "same-step-0", "NodePort", 30401)
    service(kube, second, "same-step-0", "NodePort", 30402)
    found = [t for t in discover_kubernetes_targets(api=kube.core) if t.label.endswith("same")]
    # The same pipeline id in two namespaces: labels say which is which.
    assert found == [Target("198.51.100.7:30401", f"{first}/same"),
                     Target("198.51.100.7:30402", f"{second}/same")]


def test_no_entry_service_is_an_error_saying_what_was_searched(kube: KubeEmulator,
                                                               nodes: None) -> None:
    ns = namespace()
    service(kube, ns, "only-step-1", "ClusterIP")
    with pytest.raises(LookupError, match=rf"no NodePort Service labelled stepchain.io/entry=true "
                                          rf"\(nor, from older tools, one whose name ends in "
                                          rf"'step-0'\) in namespace '{ns}' \(1 Services seen\)"
                                          rf".*--host"):
        discover_kubernetes_targets(namespace=ns, api=kube.core)


def apply_rendered_services(kube: KubeEmulator, ns: str, pipeline: dict[str, Any],
                            node_port: int) -> None:
    """Creates the Services the topology service renders for `pipeline`, as the API server
    would (it assigns the entry's nodePort)."""
    rendered = render_manifests(parse_pipeline(pipeline), RenderOptions(namespace=ns))
    for manifest in rendered:
        if manifest["kind"] != "Service":
            continue
        if manifest["spec"]["type"] == "NodePort":
            manifest["spec"]["ports"][0]["nodePort"] = node_port
        kube.core.create_namespaced_service(ns, manifest)


#: Entered at step 3: the Service named "-step-0" is a headless ClusterIP in the middle.
ENTRY_IS_STEP_3 = {"name": "late", "steps": [
    {"step_id": 3, "type": "classify", "next_step": 0},
    {"step_id": 0, "type": "grayscale", "next_step": 1},
    {"step_id": 1, "type": "resize", "params": {"scale": 0.5}}]}


def test_a_rendered_pipeline_whose_entry_is_not_step_0_is_found_by_its_entry_label(
        kube: KubeEmulator, nodes: None) -> None:
    ns = namespace()
    apply_rendered_services(kube, ns, ENTRY_IS_STEP_3, 30500)
    assert {s.metadata.name for s in kube.core.list_namespaced_service(ns).items} == {
        "late-step-3", "late-step-0", "late-step-1"}
    assert discover_kubernetes_targets(namespace=ns, api=kube.core) == [
        Target("198.51.100.7:30500", "late")]


def test_a_step_0_name_is_only_a_fallback_for_pipelines_without_a_labelled_entry(
        kube: KubeEmulator, nodes: None) -> None:
    ns = namespace()
    apply_rendered_services(kube, ns, ENTRY_IS_STEP_3, 30600)
    # A stray NodePort named like the old convention, in the labelled pipeline: not an entry.
    service(kube, ns, "late-step-0-debug-step-0", "NodePort", 30601,
            labels={"pipeline_id": "late"})
    # A pipeline made by an older tool: no label, entry named *-step-0: still found.
    service(kube, ns, "old-step-0", "NodePort", 30602)
    # Labelled as not the entry: never picked, whatever its name.
    service(kube, ns, "odd-step-0", "NodePort", 30603, labels={"stepchain.io/entry": "false"})
    assert discover_kubernetes_targets(namespace=ns, api=kube.core) == [
        Target("198.51.100.7:30600", "late"), Target("198.51.100.7:30602", "old")]


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1:50051", [Target("127.0.0.1:50051", "127.0.0.1:50051")]),
    ("grpc://localhost:8080/", [Target("localhost:8080", "localhost:8080")]),
    ("a:1, b:2", [Target("a:1", "a:1"), Target("b:2", "b:2")]),
    ("[::1]:50051", [Target("[::1]:50051", "[::1]:50051")]),
])
def test_host_accepts_host_port_lists(spec: str, expected: list[Target]) -> None:
    assert parse_hosts(spec) == expected


@pytest.mark.parametrize("spec", ["localhost", "localhost:0", "host:99999", ":50051", "a:1,,b:2",
                                  "host:http"])
def test_host_without_a_valid_port_is_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"is not HOST:PORT with a port in 1\.\.65535"):
        parse_hosts(spec)

"""Where the load goes: ``--host HOST:PORT[,HOST:PORT...]``, or the pipelines in Kubernetes.

Without a host, the targets are the pipelines' entry Services: the topology service labels each
pipeline's entry Service ``stepchain.io/entry: "true"`` (with ``pipeline_id``) and makes it a
NodePort, whatever the entry step's id. A NodePort Service named ``*step-0`` without that label
counts too, as a fallback for Services made by older tools, unless its pipeline already has a
labelled entry. Its address is a node's address (ExternalIP, else InternalIP, Ready nodes first)
and the Service's nodePort. Several pipelines found = several targets; the users are spread
across them.

The filtering is pure (``entry_targets``); ``discover_kubernetes_targets`` only lists Services and
Nodes with the official client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Label the topology service puts on every object of a pipeline.
PIPELINE_LABEL = "pipeline_id"
#: Fallback for Services made by older tools: the entry was named ``<pipeline_id>-step-0``.
ENTRY_SUFFIX = "step-0"
#: Node address types, most preferred first (load usually comes from outside the cluster).
ADDRESS_PREFERENCE = ("ExternalIP", "InternalIP")
_SCHEMES = ("grpc://", "http://", "https://", "dns:///", "ipv4:")


@dataclass(frozen=True)
class Target:
    """One pipeline entry to load: ``address`` is ``host:port``; ``label`` names it in reports."""

    address: str
    label: str


def parse_hosts(spec: str) -> list[Target]:
    """Targets from ``--host``: ``HOST:PORT``, several separated by commas.

    A ``grpc://`` or ``http://`` prefix and a trailing ``/`` are tolerated (Locust's web UI
    suggests URLs).
    """
    targets: list[Target] = []
    for raw in spec.split(","):
        item = raw.strip()
        for scheme in _SCHEMES:
            if item.startswith(scheme):
                item = item[len(scheme):]
        item = item.rstrip("/")
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"--host {spec!r}: {raw.strip()!r} is not HOST:PORT with a port in 1..65535 "
                f"(several targets: HOST:PORT,HOST:PORT)")
        targets.append(Target(address=f"{host}:{int(port)}", label=item))
    return targets


def _entry_label() -> str:
    # The label's one home is topology.kube.names. Imported on use: it brings the pipeline
    # model (pydantic, the kernel registry), a good part of Locust's start-up, and only a run
    # without --host looks at labels.
    from topology.kube.names import ENTRY_LABEL

    return ENTRY_LABEL


def _labels(service: Any) -> dict[str, str]:
    return dict((service.metadata.labels if service.metadata else None) or {})


def _is_node_port(service: Any) -> bool:
    return service.spec is not None and service.spec.type == "NodePort"


def is_labelled_entry(service: Any) -> bool:
    """True for a NodePort Service labelled ``stepchain.io/entry: "true"``."""
    return _is_node_port(service) and _labels(service).get(_entry_label()) == "true"


def is_legacy_entry(service: Any) -> bool:
    """True for a NodePort Service without the entry label whose name ends in ``step-0``
    (how older tools named the entry step's Service)."""
    return (_is_node_port(service) and _entry_label() not in _labels(service)
            and (service.metadata.name or "").endswith(ENTRY_SUFFIX))


def pipeline_of(service: Any) -> str:
    """The pipeline an entry Service belongs to: its ``pipeline_id`` label, else its name
    without ``-step-0``."""
    labelled = _labels(service).get(PIPELINE_LABEL)
    if labelled:
        return labelled
    name = service.metadata.name or ""
    return name[: -len(ENTRY_SUFFIX)].rstrip("-") if name.endswith(ENTRY_SUFFIX) else name


def entry_services(services: Iterable[Any]) -> list[Any]:
    """The pipelines' entry Services: the labelled ones, then the ``*step-0`` fallbacks of
    pipelines (per namespace) that have no labelled entry."""
    services = list(services)
    labelled = [s for s in services if is_labelled_entry(s)]
    covered = {(s.metadata.namespace or "", pipeline_of(s)) for s in labelled}
    legacy = [s for s in services if is_legacy_entry(s)
              and (s.metadata.namespace or "", pipeline_of(s)) not in covered]
    return labelled + legacy


def node_port_of(service: Any) -> int | None:
    """The Service's nodePort for gRPC: the port named ``grpc`` if any, else the first one."""
    ports = [p for p in (service.spec.ports or []) if p.node_port]
    for port in ports:
        if port.name == "grpc":
            return int(port.node_port)
    return int(ports[0].node_port) if ports else None


def pick_node_address(nodes: Iterable[Any],
                      preference: Sequence[str] = ADDRESS_PREFERENCE) -> str | None:
    """A node address to reach NodePorts on: Ready nodes first, then by address type."""
    def ready(node: Any) -> bool:
        conditions = (node.status.conditions if node.status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    ordered = sorted(nodes, key=lambda node: (not ready(node), node.metadata.name or ""))
    for kind in preference:
        for node in ordered:
            for address in (node.status.addresses if node.status else None) or []:
                if address.type == kind and address.address:
                    return str(address.address)
    return None


def entry_targets(services: Iterable[Any], node_address: str) -> list[Target]:
    """The pipeline entries among ``services``, reached through ``node_address``.

    Labels are pipeline ids, prefixed with the namespace when the same pipeline id appears in
    several namespaces.
    """
    entries = []
    for service in entry_services(services):
        port = node_port_of(service)
        if port is None:
            continue
        entries.append((service.metadata.namespace or "", pipeline_of(service), port))
    entries.sort()
    pipelines = [pipeline for _, pipeline, _ in entries]
    return [
        Target(address=f"{node_address}:{port}",
               label=f"{namespace}/{pipeline}" if pipelines.count(pipeline) > 1 else pipeline)
        for namespace, pipeline, port in entries
    ]


def discover_kubernetes_targets(*, namespace: str | None = None,
                                node_address: str | None = None,
                                api: Any = None) -> list[Target]:
    """Pipeline entries from the Kubernetes API (kubeconfig or in-cluster configuration).

    ``namespace`` limits the search (default: all namespaces); ``node_address`` overrides the
    node lookup. Raises ``LookupError`` with what was searched when nothing is found.
    """
    if api is None:
        api = _core_api()
    if namespace:
        services = api.list_namespaced_service(namespace).items
    else:
        services = api.list_service_for_all_namespaces().items
    where = f"namespace {namespace!r}" if namespace else "any namespace"
    # The label decides (a labelSelector is not enough: not every API server or emulator
    # honours it, and Services of older tools carry no label), so filter here.
    candidates = entry_services(services)
    if not candidates:
        raise LookupError(
            f"no NodePort Service labelled {_entry_label()}=true (nor, from older tools, one whose "
            f"name ends in {ENTRY_SUFFIX!r}) in {where} ({len(services)} Services seen); "
            "deploy a pipeline or pass --host HOST:PORT")
    if node_address is None:
        node_address = pick_node_address(api.list_node().items)
        if node_address is None:
            raise LookupError("no node with an ExternalIP or InternalIP address to reach the "
                              "NodePorts on; pass --node-address ADDRESS or --host HOST:PORT")
    targets = entry_targets(candidates, node_address)
    if not targets:
        raise LookupError(f"the entry Services in {where} expose no nodePort; "
                          "pass --host HOST:PORT")
    return targets


def _core_api() -> Any:
    from kubernetes import client

    from stepsvc.routing.kubernetes import load_api_client

    try:
        api_client = load_api_client("finding the pipeline entry")
    except ValueError as exc:
        raise LookupError(
            "no --host given and no Kubernetes configuration found (in-cluster, KUBECONFIG "
            f"or ~/.kube/config): {exc}; pass --host HOST:PORT") from exc
    return client.CoreV1Api(api_client)

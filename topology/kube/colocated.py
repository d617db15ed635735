"""A `colocate: true` pipeline -> one Deployment whose pod runs every step (pure function).

Each step is a container of the same pod, listening on its own port (``GRPC_PORT + i`` and
``METRICS_PORT + i`` for the i-th step), reading its own ConfigMap and finding the others on
``127.0.0.1`` through a static discovery file (a ConfigMap mounted at :data:`DISCOVERY_DIR`).
Every container mounts one in-memory ``emptyDir`` at :data:`FRAMES_DIR` and passes frames to
the next step through it (``step serve --shm-dir``): the hop inside the pod moves a handle, not
the pixels. The pod shares one process namespace so a step can tell a crashed neighbour's
segments from live ones. Replicas scale the whole chain (the largest ``replicas`` of any step).

Per step there is still a ConfigMap and a Service (the entry step's a NodePort), all selecting
the one pod at that step's port, so clients, grpcurl and Locust see the same names as for a
pipeline of one Deployment per step.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from topology.kube.manifests import (
    CONFIG_KEY,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    RenderOptions,
    _config_map,
    _deployment,
    _hpa,
    _metadata,
    _service,
    labels,
    network_policy_metadata,
    step_config_text,
)
from topology.pipeline.graph import Pipeline, Step

#: Label on the colocated Deployment and its pod (the pod runs every step of the pipeline).
COLOCATED_LABEL = "stepchain.io/colocated"
#: Where every container mounts the shared in-memory frame directory.
FRAMES_DIR = "/frames"
#: Where the discovery file (step id -> 127.0.0.1:port) is mounted.
DISCOVERY_DIR = "/etc/stepchain/discovery"
DISCOVERY_FILE = "discovery.json"
#: Frames in flight per step the emptyDir has room for (sizeLimit): request + output segments.
FRAMES_PER_STEP = 4


def colocated_name(pipeline_id: str) -> str:
    """Name of the one Deployment: ``<pipeline_id>-chain``."""
    return f"{pipeline_id}-chain"


def discovery_config_map_name(pipeline_id: str) -> str:
    return f"{pipeline_id}-chain-discovery"


def step_ports(pipeline: Pipeline) -> dict[int, tuple[int, int]]:
    """(gRPC port, metrics port) of each step inside the shared pod."""
    return {s.id: (GRPC_PORT + i, METRICS_PORT + i) for i, s in enumerate(pipeline.steps)}


def http_ports(pipeline: Pipeline) -> dict[int, int]:
    """The HTTP face's port of each step inside the shared pod (``HTTP_PORT + i``)."""
    return {s.id: HTTP_PORT + i for i, s in enumerate(pipeline.steps)}


def pod_labels(pipeline: Pipeline) -> dict[str, str]:
    """The pod's labels: the pipeline's, no step id (it runs every step), colocated=true."""
    out = {k: v for k, v in labels(pipeline.pipeline_id, pipeline.entry_step).items()
           if k != "step_id"}
    out["app.kubernetes.io/component"] = "chain"
    out[COLOCATED_LABEL] = "true"
    return out


def pod_selector(pipeline: Pipeline) -> dict[str, str]:
    return {"app.kubernetes.io/name": "stepchain-step", "pipeline_id": pipeline.pipeline_id,
            COLOCATED_LABEL: "true"}


def render_colocated(pipeline: Pipeline, options: RenderOptions) -> list[dict[str, Any]]:
    """ConfigMaps (one per step and the discovery file), one Service per step, the one
    Deployment, an HPA when the entry step asks for autoscale, and the NetworkPolicy."""
    namespace = options.namespace
    image = pipeline.image or options.image
    ports = step_ports(pipeline)
    entry = pipeline.step(pipeline.entry_step)
    texts = {s.id: step_config_text(pipeline, s.id) for s in pipeline.steps}
    config_maps = [_config_map(pipeline, s, namespace, texts[s.id]) for s in pipeline.steps]
    config_maps.append(_discovery_config_map(pipeline, entry, namespace, ports))
    http = http_ports(pipeline)
    services = [_step_service(pipeline, s, namespace, ports[s.id][0], http[s.id])
                for s in pipeline.steps]
    deployment = _colocated_deployment(pipeline, namespace, image, texts, ports, options)
    out: list[dict[str, Any]] = [*config_maps, *services, deployment]
    if entry.autoscale is not None:
        hpa = _hpa(pipeline, entry, namespace)
        hpa["metadata"]["name"] = colocated_name(pipeline.pipeline_id)
        hpa["spec"]["scaleTargetRef"]["name"] = colocated_name(pipeline.pipeline_id)
        out.append(hpa)
    out.append(_network_policy(pipeline, namespace, ports))
    return out


def _discovery_config_map(pipeline: Pipeline, entry: Step, namespace: str,
                          ports: dict[int, tuple[int, int]]) -> dict[str, Any]:
    mapping = {str(sid): f"127.0.0.1:{grpc}" for sid, (grpc, _) in ports.items()}
    metadata = _metadata(pipeline, entry, discovery_config_map_name(pipeline.pipeline_id),
                         namespace)
    metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k != "step_id"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {DISCOVERY_FILE: json.dumps(mapping, sort_keys=True) + "\n"}}


def _step_service(pipeline: Pipeline, step: Step, namespace: str, port: int,
                  http: int) -> dict[str, Any]:
    service = _service(pipeline, step, namespace)
    spec = service["spec"]
    if spec.get("clusterIP") == "None":  # one pod per chain: nothing to balance inside it
        del spec["clusterIP"]
    spec["selector"] = pod_selector(pipeline)
    spec["ports"] = [{"name": "grpc", "port": GRPC_PORT, "targetPort": port, "protocol": "TCP"},
                     {"name": "http", "port": HTTP_PORT, "targetPort": http, "protocol": "TCP"}]
    return service


def _colocated_deployment(pipeline: Pipeline, namespace: str, image: str,
                          texts: dict[int, str], ports: dict[int, tuple[int, int]],
                          options: RenderOptions) -> dict[str, Any]:
    entry = pipeline.step(pipeline.entry_step)
    base = _deployment(pipeline, entry, namespace, image, texts[entry.id], options)
    pod = base["spec"]["template"]["spec"]
    containers = []
    volumes: dict[str, dict[str, Any]] = {}
    frames_bytes = 0
    for step in pipeline.steps:
        one = _deployment(pipeline, step, namespace, image, texts[step.id], options)
        container = one["spec"]["template"]["spec"]["containers"][0]
        grpc, metrics = ports[step.id]
        containers.append(_container(step, container, grpc, metrics,
                                     http_ports(pipeline)[step.id]))
        for volume in one["spec"]["template"]["spec"]["volumes"]:
            if volume["name"] != "tmp":
                volume = {**volume, "name": _volume_name(step, volume["name"])}
            volumes[volume["name"]] = volume
        max_pixels = int(container["args"][container["args"].index("--max-pixels") + 1])
        frames_bytes += FRAMES_PER_STEP * 4 * max_pixels
    volumes["frames"] = {"name": "frames",
                         "emptyDir": {"medium": "Memory", "sizeLimit": _mebibytes(frames_bytes)}}
    volumes["discovery"] = {"name": "discovery", "configMap": {
        "name": discovery_config_map_name(pipeline.pipeline_id)}}
    pod["containers"] = containers
    pod["volumes"] = list(volumes.values())
    # One process namespace: the shared-memory sweeper tells a dead neighbour's segments by pid.
    pod["shareProcessNamespace"] = True
    selectors = [s.node_selector for s in pipeline.steps if s.node_selector]
    if selectors:
        pod["nodeSelector"] = {k: v for sel in selectors for k, v in sel.items()}
    template_metadata = base["spec"]["template"]["metadata"]
    template_metadata["labels"] = pod_labels(pipeline)
    template_metadata["annotations"]["prometheus.io/port"] = str(METRICS_PORT)
    spec = base["spec"]
    spec["selector"] = {"matchLabels": pod_selector(pipeline)}
    if entry.autoscale is None:
        spec["replicas"] = max(s.replicas for s in pipeline.steps)
    metadata = base["metadata"]
    metadata["name"] = colocated_name(pipeline.pipeline_id)
    metadata["labels"] = pod_labels(pipeline)
    metadata["annotations"].pop("stepchain.io/step-type", None)
    return base


def _container(step: Step, container: dict[str, Any], grpc: int, metrics: int,
               http: int) -> dict[str, Any]:
    c = copy.deepcopy(container)
    c["name"] = f"step-{step.id}"
    args = c["args"]
    args[args.index("--port") + 1] = str(grpc)
    args[args.index("--metrics-port") + 1] = str(metrics)
    args[args.index("--http-port") + 1] = str(http)
    args[args.index("--discovery") + 1] = f"static:{DISCOVERY_DIR}/{DISCOVERY_FILE}"
    args += ["--shm-dir", FRAMES_DIR]
    c["ports"] = [{"name": f"grpc-{step.id}", "containerPort": grpc, "protocol": "TCP"},
                  {"name": f"http-{step.id}", "containerPort": http, "protocol": "TCP"},
                  {"name": f"metrics-{step.id}", "containerPort": metrics, "protocol": "TCP"}]
    c["readinessProbe"]["grpc"]["port"] = grpc
    c["livenessProbe"]["grpc"]["port"] = grpc
    mounts = []
    for mount in c["volumeMounts"]:
        if mount["name"] != "tmp":
            mount = {**mount, "name": _volume_name(step, mount["name"])}
        mounts.append(mount)
    mounts += [{"name": "frames", "mountPath": FRAMES_DIR},
               {"name": "discovery", "mountPath": DISCOVERY_DIR, "readOnly": True}]
    c["volumeMounts"] = mounts
    assert any(e["name"] == CONFIG_KEY for e in c["env"])  # each container: its own ConfigMap
    return c


def _volume_name(step: Step, name: str) -> str:
    """A step's own volume, renamed so two steps' volumes never collide in the one pod."""
    return f"s{step.id}-{name}"[:63].rstrip("-")


def _mebibytes(n: int) -> str:
    return f"{max(64, -(-n // (1024 * 1024)))}Mi"


def _network_policy(pipeline: Pipeline, namespace: str,
                    ports: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """Only the entry step's port (and every metrics port, for scrapers) is reachable from
    outside the pod; the steps talk to each other over loopback inside it."""
    entry = pipeline.step(pipeline.entry_step)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": network_policy_metadata(pipeline, namespace),
        "spec": {
            "podSelector": {"matchLabels": pod_selector(pipeline)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": ports[entry.id][0], "protocol": "TCP"},
                           {"port": http_ports(pipeline)[entry.id], "protocol": "TCP"}]},
                {"ports": [{"port": m, "protocol": "TCP"} for _, m in ports.values()]},
            ],
        },
    }

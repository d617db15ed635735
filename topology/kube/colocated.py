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

import json
from functools import partial
from typing import Any

from topology.kube import objects
from topology.kube.names import (
    COLOCATED_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    colocated_name,
    colocated_selector,
    discovery_config_map_name,
    pipeline_labels,
)
from topology.kube.objects import ContainerLayout, RenderOptions, StepPorts
from topology.pipeline.dump import step_config_text
from topology.pipeline.graph import Pipeline, Step

#: Where every container mounts the shared in-memory frame directory.
FRAMES_DIR = "/frames"
#: Where the discovery file (step id -> 127.0.0.1:port) is mounted.
DISCOVERY_DIR = "/etc/stepchain/discovery"
DISCOVERY_FILE = "discovery.json"
#: Frames in flight per step the emptyDir has room for (sizeLimit): request + output segments.
FRAMES_PER_STEP = 4
#: Bytes per pixel of a frame in the shared directory (RGBA).
FRAME_BYTES_PER_PIXEL = 4


def step_ports(pipeline: Pipeline) -> dict[int, StepPorts]:
    """Where each step listens inside the shared pod: the i-th step on each port + i."""
    return {s.id: StepPorts(grpc=GRPC_PORT + i, http=HTTP_PORT + i, metrics=METRICS_PORT + i)
            for i, s in enumerate(pipeline.steps)}


def pod_labels(pipeline: Pipeline) -> dict[str, str]:
    """The pod's labels: the pipeline's, no step id (it runs every step), colocated=true."""
    return {**pipeline_labels(pipeline.pipeline_id, pipeline.entry_step, "chain"),
            COLOCATED_LABEL: "true"}


def render_colocated(pipeline: Pipeline, options: RenderOptions) -> list[dict[str, Any]]:
    """ConfigMaps (one per step and the discovery file), one Service per step, the one
    Deployment, an HPA when the entry step asks for autoscale, and the NetworkPolicy."""
    namespace = options.namespace
    image = pipeline.image or options.image
    ports = step_ports(pipeline)
    entry = pipeline.step(pipeline.entry_step)
    texts = {s.id: step_config_text(pipeline, s.id) for s in pipeline.steps}
    config_maps = [objects.config_map(pipeline, s, namespace, texts[s.id])
                   for s in pipeline.steps]
    config_maps.append(_discovery_config_map(pipeline, entry, namespace, ports))
    # One pod per chain: nothing to balance inside it, so no Service is headless.
    services = [objects.service(pipeline, s, namespace, headless=False,
                                selector=colocated_selector(pipeline.pipeline_id),
                                ports=ports[s.id])
                for s in pipeline.steps]
    deployment = _colocated_deployment(pipeline, namespace, image, texts[entry.id], ports,
                                       options)
    out: list[dict[str, Any]] = [*config_maps, *services, deployment]
    if entry.autoscale is not None:
        out.append(objects.hpa(pipeline, entry, namespace, colocated_name(pipeline.pipeline_id)))
    out.append(_network_policy(pipeline, namespace, ports))
    return out


def _discovery_config_map(pipeline: Pipeline, entry: Step, namespace: str,
                          ports: dict[int, StepPorts]) -> dict[str, Any]:
    mapping = {str(sid): f"127.0.0.1:{p.grpc}" for sid, p in ports.items()}
    metadata = objects.metadata(pipeline, entry,
                                discovery_config_map_name(pipeline.pipeline_id), namespace)
    metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k != "step_id"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {DISCOVERY_FILE: json.dumps(mapping, sort_keys=True) + "\n"}}


def _layout(step: Step, ports: StepPorts) -> ContainerLayout:
    """Step `step`'s container in the shared pod: its own ports and volume names, static
    discovery, frames through the shared directory."""
    return ContainerLayout(
        name=f"step-{step.id}", ports=ports, port_suffix=f"-{step.id}",
        discovery=f"static:{DISCOVERY_DIR}/{DISCOVERY_FILE}", shm_dir=FRAMES_DIR,
        rename_volume=partial(_volume_name, step),
        extra_mounts=({"name": "frames", "mountPath": FRAMES_DIR},
                      {"name": "discovery", "mountPath": DISCOVERY_DIR, "readOnly": True}))


def _colocated_deployment(pipeline: Pipeline, namespace: str, image: str, entry_text: str,
                          ports: dict[int, StepPorts],
                          options: RenderOptions) -> dict[str, Any]:
    entry = pipeline.step(pipeline.entry_step)
    containers = []
    volumes: dict[str, dict[str, Any]] = {}
    frames_bytes = 0
    for step in pipeline.steps:
        containers.append(objects.container(pipeline, step, image, options,
                                            _layout(step, ports[step.id])))
        own, _ = objects.volumes(step, partial(_volume_name, step))
        for volume in own:
            volumes[volume["name"]] = volume
        max_pixels = objects.max_pixels_for(objects.memory_limit(step))
        frames_bytes += FRAMES_PER_STEP * FRAME_BYTES_PER_PIXEL * max_pixels
    volumes["frames"] = {"name": "frames",
                         "emptyDir": {"medium": "Memory", "sizeLimit": _mebibytes(frames_bytes)}}
    volumes["discovery"] = {"name": "discovery", "configMap": {
        "name": discovery_config_map_name(pipeline.pipeline_id)}}
    name = colocated_name(pipeline.pipeline_id)
    metadata = objects.metadata(pipeline, entry, name, namespace)
    metadata["labels"] = pod_labels(pipeline)
    return objects.deployment(
        metadata, options, containers=containers, volumes=list(volumes.values()),
        pod_labels=pod_labels(pipeline), selector=colocated_selector(pipeline.pipeline_id),
        config_text=entry_text,
        replicas=None if entry.autoscale else max(s.replicas for s in pipeline.steps),
        node_selector={k: v for s in pipeline.steps for k, v in s.nodeSelector.items()},
        # One process namespace: the shared-memory sweeper tells a dead neighbour's segments
        # by pid.
        share_process_namespace=True)


def _volume_name(step: Step, name: str) -> str:
    """A step's own volume, renamed so two steps' volumes never collide in the one pod."""
    return f"s{step.id}-{name}"[:63].rstrip("-")


def _mebibytes(n: int) -> str:
    return f"{max(64, -(-n // (1024 * 1024)))}Mi"


def _network_policy(pipeline: Pipeline, namespace: str,
                    ports: dict[int, StepPorts]) -> dict[str, Any]:
    """Only the entry step's ports (and every metrics port, for scrapers) are reachable from
    outside the pod; the steps talk to each other over loopback inside it."""
    entry = ports[pipeline.entry_step]
    return objects.network_policy(
        pipeline, namespace, {"matchLabels": colocated_selector(pipeline.pipeline_id)},
        [{"ports": [{"port": entry.grpc, "protocol": "TCP"},
                    {"port": entry.http, "protocol": "TCP"}]},
         {"ports": [{"port": p.metrics, "protocol": "TCP"} for p in ports.values()]}])

"""One step's Kubernetes objects, built from values (pure): what both layouts are made of.

:mod:`~topology.kube.per_step` puts each step in a Deployment of its own;
:mod:`~topology.kube.colocated` puts every step's container in one pod. Both build the same
pieces here, each from explicit values (ports, discovery, the container's name), so neither
edits or reads back what the other rendered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepsvc.limits import DEFAULT_MAX_PIXELS
from stepsvc.step.memory_budget import default_memory_mb
from topology.kube.names import (
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    ENTRY_LABEL,
    FINGERPRINT_ANNOTATION,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    STEP_TYPE_ANNOTATION,
    config_map_name,
    labels,
    network_policy_name,
    pipeline_labels,
)
from topology.pipeline.graph import Pipeline, Step
from topology.pipeline.model import parse_quantity, step_name

DEFAULT_STEP_IMAGE = "ghcr.io/stepchain/step:0.1.0"
#: Service account of the step pods unless configured: what the Helm chart creates for a
#: release named `stepchain` (`<fullname>-step`). It needs list and watch on configmaps
#: (Kubernetes discovery); the namespace's `default` account has neither, so steps would get 403.
DEFAULT_STEP_SERVICE_ACCOUNT = "stepchain-step"
#: Seconds a step drains in-flight requests after SIGTERM (`step serve --grace`).
DEFAULT_DRAIN_GRACE_S = 20
#: Seconds before a step asks a client connection to reconnect (`step serve
#: --max-connection-age`): upstream steps then re-resolve the headless Service's DNS name and
#: reach replicas that an HPA or a scale-up added since.
MAX_CONNECTION_AGE_S = 30
#: Extra seconds Kubernetes waits beyond the drain before SIGKILL.
GRACE_MARGIN_S = 10
#: User and group the step container runs as (non-root).
RUN_AS_USER = 10001
#: Memory a step needs per pixel of its largest image: a few RGBA copies (request, decoded,
#: kernel output, forward) plus working buffers. A step's --max-pixels is its memory limit
#: divided by this, so an oversized (or decompression-bomb) image is refused with
#: RESOURCE_EXHAUSTED instead of getting the pod OOM-killed.
BYTES_PER_PIXEL = 40
#: A step's memory request and limit unless its `resources` say otherwise.
DEFAULT_MEMORY_REQUEST = "256Mi"
DEFAULT_MEMORY_LIMIT = "1Gi"


@dataclass(frozen=True)
class RenderOptions:
    """Everything besides the pipeline that the manifests depend on."""

    namespace: str = "default"
    image: str = DEFAULT_STEP_IMAGE
    #: OTEL_* settings passed through to every step (OTEL_SERVICE_NAME is set per step).
    otel_env: Mapping[str, str] = field(default_factory=dict)
    drain_grace_s: int = DEFAULT_DRAIN_GRACE_S
    #: Steps watch ConfigMaps for discovery: this account needs list/watch on them.
    service_account: str = DEFAULT_STEP_SERVICE_ACCOUNT


@dataclass(frozen=True)
class StepPorts:
    """Where a step's container listens: gRPC, the HTTP face, Prometheus metrics."""

    grpc: int = GRPC_PORT
    http: int = HTTP_PORT
    metrics: int = METRICS_PORT


def metadata(pipeline: Pipeline, step: Step, name: str, namespace: str,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An object's metadata: the step's labels and the pipeline's fingerprint."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(pipeline.pipeline_id, step.id),
        "annotations": {FINGERPRINT_ANNOTATION: pipeline.fingerprint, **(annotations or {})},
    }


def pipeline_metadata(pipeline: Pipeline, name: str, namespace: str,
                      component: str) -> dict[str, Any]:
    """Metadata of an object of the whole pipeline: its labels without a step id."""
    entry = pipeline.step(pipeline.entry_step)
    out = metadata(pipeline, entry, name, namespace)
    out["labels"] = pipeline_labels(pipeline.pipeline_id, entry.id, component)
    return out


def config_map(pipeline: Pipeline, step: Step, namespace: str, text: str) -> dict[str, Any]:
    """The step's ConfigMap: its PIPELINE_CONFIG `text`."""
    name = config_map_name(pipeline.pipeline_id, step.id)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, step, name, namespace, {STEP_TYPE_ANNOTATION: step.type}),
        "data": {CONFIG_KEY: text},
    }


def service(pipeline: Pipeline, step: Step, namespace: str, *, headless: bool,
            selector: dict[str, str], ports: StepPorts | None = None) -> dict[str, Any]:
    """The step's Service on the gRPC and HTTP ports (to `ports` of the pods, by name when
    None): a NodePort for the entry step, else ClusterIP (`headless`: no cluster IP)."""
    name = step_name(pipeline.pipeline_id, step.id)
    spec: dict[str, Any]
    if step.id == pipeline.entry_step:
        # The entry step is reachable from outside the cluster (clients, Locust). No step
        # forwards to it (it is the one step nothing points to), so it needs no headless twin.
        spec = {"type": "NodePort"}
    elif headless:
        # Headless: DNS answers every ready pod's IP, so an upstream step's `dns:///` channel
        # with round_robin spreads requests over all replicas. A ClusterIP would pin each
        # upstream pod's one HTTP/2 connection to a single downstream pod.
        spec = {"type": "ClusterIP", "clusterIP": "None"}
    else:
        spec = {"type": "ClusterIP"}
    grpc_target: int | str = ports.grpc if ports else "grpc"
    http_target: int | str = ports.http if ports else "http"
    spec.update({
        "selector": selector,
        # gRPC and the HTTP face only: a NodePort opens every listed port on every node, and
        # /metrics is for in-cluster scrapers, which find the pods by their prometheus.io/*
        # annotations.
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": grpc_target, "protocol": "TCP"},
            {"name": "http", "port": HTTP_PORT, "targetPort": http_target, "protocol": "TCP"},
        ],
    })
    meta = metadata(pipeline, step, name, namespace)
    if step.id == pipeline.entry_step:
        # Found by label (with pipeline_id) rather than by a `-step-0` name: the entry is the step
        # nothing points to, and its id can be anything.
        meta["labels"][ENTRY_LABEL] = "true"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def is_headless(service: Mapping[str, Any]) -> bool:
    """True for a headless Service (``clusterIP: None``): DNS names its pods, not one VIP."""
    return (service.get("spec") or {}).get("clusterIP") == "None"


def max_memory_mb_for(memory_limit: str) -> int:
    """A step's `--max-memory-mb` for its memory limit: the share the step budgets for requests
    (what it would derive from its cgroup, stated so the manifest shows it)."""
    return default_memory_mb(int(parse_quantity(memory_limit)))


def max_pixels_for(memory_limit: str) -> int:
    """A step's `--max-pixels` for its memory limit (a Kubernetes quantity): the limit divided
    by BYTES_PER_PIXEL, at most the step server's default."""
    return max(1, min(DEFAULT_MAX_PIXELS, int(parse_quantity(memory_limit)) // BYTES_PER_PIXEL))


def resources(step: Step) -> dict[str, dict[str, Any]]:
    """The container's requests and limits: a CPU per thread, the defaults, the step's own."""
    requests: dict[str, Any] = {"cpu": str(step.threads), "memory": DEFAULT_MEMORY_REQUEST}
    limits: dict[str, Any] = {"cpu": str(step.threads), "memory": DEFAULT_MEMORY_LIMIT}
    if step.resources is not None:
        requests.update({k: str(v) for k, v in step.resources.requests.items()})
        limits.update({k: str(v) for k, v in step.resources.limits.items()})
    if step.gpu:
        limits["nvidia.com/gpu"] = str(step.gpu)
    return {"requests": requests, "limits": limits}


def memory_limit(step: Step) -> str:
    """The step's memory limit as its container states it."""
    return str(resources(step)["limits"]["memory"])


def _same(name: str) -> str:
    return name


def volumes(step: Step, rename: Callable[[str], str] = _same,
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The step's volumes and their mounts, its own ones named by `rename`; first the
    writable /tmp (the root filesystem is read-only)."""
    vols: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    for v in step.volumes:
        if v.hostPath is not None:
            source: dict[str, Any] = {"hostPath": {"path": v.hostPath}}
        elif v.configMap is not None:
            source = {"configMap": {"name": v.configMap}}
        else:
            assert v.emptyDir is not None
            source = {"emptyDir": v.emptyDir.model_dump(exclude_defaults=True)}
        vols.append({"name": rename(v.name), **source})
        mounts.append({"name": rename(v.name), "mountPath": v.mountPath, "readOnly": v.readOnly})
    return vols, mounts


def env(pipeline: Pipeline, step: Step, options: RenderOptions) -> list[dict[str, Any]]:
    """The step's environment: its PIPELINE_CONFIG from its ConfigMap, threads, pod identity,
    OTEL_SERVICE_NAME (the step's name) and the service's other OTEL_* settings."""
    cm = config_map_name(pipeline.pipeline_id, step.id)
    out: list[dict[str, Any]] = [
        {"name": CONFIG_KEY, "valueFrom": {"configMapKeyRef": {"name": cm, "key": CONFIG_KEY}}},
        {"name": "OMP_NUM_THREADS", "value": str(step.threads)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "OTEL_SERVICE_NAME", "value": step_name(pipeline.pipeline_id, step.id)},
    ]
    for key in sorted(options.otel_env):
        if key != "OTEL_SERVICE_NAME":
            out.append({"name": key, "value": options.otel_env[key]})
    return out


@dataclass(frozen=True)
class ContainerLayout:
    """Where a step's container sits: the per-step defaults, or one of a colocated pod's."""

    name: str = "step"
    ports: StepPorts = StepPorts()
    #: `step serve --discovery`: Kubernetes ConfigMaps, or `static:<file>`.
    discovery: str = "kubernetes"
    #: Suffix of the port names (a colocated pod names each step's ports apart).
    port_suffix: str = ""
    #: `step serve --shm-dir` (frames through shared memory), when given.
    shm_dir: str | None = None
    #: Names the step's own volumes (a colocated pod keeps two steps' volumes apart).
    rename_volume: Callable[[str], str] = _same
    #: Mounts added after the step's own.
    extra_mounts: tuple[dict[str, Any], ...] = ()


def container(pipeline: Pipeline, step: Step, image: str, options: RenderOptions,
              layout: ContainerLayout = ContainerLayout()) -> dict[str, Any]:
    """The step's container: `stepchain step serve` on the layout's ports, its limits derived
    from its memory limit, probes on its gRPC health, non-root and read-only."""
    ports = layout.ports
    limit = memory_limit(step)
    args = ["step", "serve", "--config-env", CONFIG_KEY, "--port", str(ports.grpc),
            "--discovery", layout.discovery, "--metrics-port", str(ports.metrics),
            "--http-port", str(ports.http),
            "--grace", str(options.drain_grace_s),
            "--max-connection-age", str(MAX_CONNECTION_AGE_S),
            "--max-pixels", str(max_pixels_for(limit)),
            "--max-memory-mb", str(max_memory_mb_for(limit))]
    if layout.shm_dir is not None:
        args += ["--shm-dir", layout.shm_dir]
    _, mounts = volumes(step, layout.rename_volume)
    suffix = layout.port_suffix
    return {
        "name": layout.name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["stepchain"],
        "args": args,
        "ports": [{"name": f"grpc{suffix}", "containerPort": ports.grpc, "protocol": "TCP"},
                  {"name": f"http{suffix}", "containerPort": ports.http, "protocol": "TCP"},
                  {"name": f"metrics{suffix}", "containerPort": ports.metrics,
                   "protocol": "TCP"}],
        "env": env(pipeline, step, options),
        "resources": resources(step),
        "readinessProbe": {"grpc": {"port": ports.grpc}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {"grpc": {"port": ports.grpc}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [*mounts, *layout.extra_mounts],
    }


def deployment(meta: dict[str, Any], options: RenderOptions, *,
               containers: list[dict[str, Any]], volumes: list[dict[str, Any]],
               pod_labels: dict[str, str], selector: dict[str, str], config_text: str,
               replicas: int | None, node_selector: Mapping[str, str],
               share_process_namespace: bool = False) -> dict[str, Any]:
    """A Deployment of `containers`; `replicas` None leaves the count to an HPA. The pods roll
    when `config_text` (read from the environment at start) changes."""
    pod_spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # SIGTERM starts the step's drain; Kubernetes waits for it plus a margin.
        "terminationGracePeriodSeconds": options.drain_grace_s + GRACE_MARGIN_S,
        "containers": containers,
        "volumes": volumes,
    }
    if share_process_namespace:
        pod_spec["shareProcessNamespace"] = True
    # Always explicit: the namespace's default account cannot list/watch the ConfigMaps.
    pod_spec["serviceAccountName"] = options.service_account
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    # Env from a ConfigMap is read at start: roll the pods when it changes.
                    CONFIG_HASH_ANNOTATION: hashlib.sha256(config_text.encode()).hexdigest(),
                    # How Prometheus finds /metrics: pod annotations, never a Service port.
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    if replicas is not None:  # with an HPA, the HPA owns the replica count
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": spec,
    }


def hpa(pipeline: Pipeline, step: Step, namespace: str, target: str) -> dict[str, Any]:
    """A HorizontalPodAutoscaler (CPU utilisation) of the Deployment `target`, as the step's
    `autoscale` asks."""
    assert step.autoscale is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(pipeline, step, target, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": step.autoscale.minReplicas,
            "maxReplicas": step.autoscale.maxReplicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization",
                           "averageUtilization": step.autoscale.targetCPUUtilization}}}],
        },
    }


def network_policy(pipeline: Pipeline, namespace: str, pod_selector: dict[str, Any],
                   ingress: list[dict[str, Any]]) -> dict[str, Any]:
    """The pipeline's one NetworkPolicy: `ingress` rules for the pods `pod_selector` picks."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": pipeline_metadata(pipeline, network_policy_name(pipeline.pipeline_id),
                                      namespace, "network-policy"),
        "spec": {"podSelector": pod_selector, "policyTypes": ["Ingress"], "ingress": ingress},
    }

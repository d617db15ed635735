"""Pipeline -> Kubernetes manifests: a pure function of the pipeline and the render options.

Per step: a ConfigMap ``<pipeline_id>-step-<N>-config`` (key ``PIPELINE_CONFIG``, what the step
server and Kubernetes discovery read), a Deployment whose pods announce their metrics port with
``prometheus.io/*`` annotations, a Service ``<pipeline_id>-step-<N>`` carrying only the gRPC
port (NodePort for the entry step, labelled ``stepchain.io/entry: "true"``; headless, ``clusterIP: None``, for every other step so that
upstream steps balance over its pods with ``dns:///`` and ``round_robin``) and, when the step
asks for ``autoscale``, a HorizontalPodAutoscaler. Per pipeline of more than one step, a
NetworkPolicy fences the data plane: the entry step stays reachable from outside (clients,
Locust); every other step takes traffic only from the pipeline's own pods (plus its metrics
port, for in-cluster scrapers). Every object carries the same labels so a pipeline is found
and deleted by ``pipeline_id`` alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from stepsvc.http.face import KUBERNETES_HTTP_PORT
from stepsvc.limits import DEFAULT_MAX_PIXELS
from stepsvc.step.config import PipelineConfig, dump_config
from stepsvc.step.config import StepSpec as ConfigStep
from stepsvc.step.memory_budget import default_memory_mb
from topology.pipeline.graph import Pipeline, Step
from topology.pipeline.model import parse_quantity

GRPC_PORT = 50051
METRICS_PORT = 9464
#: The HTTP face (POST /process, as the Flask-era pipelines) of every step.
HTTP_PORT = KUBERNETES_HTTP_PORT
CONFIG_KEY = "PIPELINE_CONFIG"
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
MANAGED_BY = "stepchain-topology"
#: Annotation holding the pipeline's fingerprint (POST of a different body -> 409).
FINGERPRINT_ANNOTATION = "stepchain.io/pipeline-sha256"
STEP_TYPE_ANNOTATION = "stepchain.io/step-type"
CONFIG_HASH_ANNOTATION = "stepchain.io/config-sha256"
#: Memory a step needs per pixel of its largest image: a few RGBA copies (request, decoded,
#: kernel output, forward) plus working buffers. A step's --max-pixels is its memory limit
#: divided by this, so an oversized (or decompression-bomb) image is refused with
#: RESOURCE_EXHAUSTED instead of getting the pod OOM-killed.
BYTES_PER_PIXEL = 40


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


def step_name(pipeline_id: str, step_id: int) -> str:
    """Service (and Deployment) name of a step: ``<pipeline_id>-step-<N>``."""
    return f"{pipeline_id}-step-{step_id}"


def config_map_name(pipeline_id: str, step_id: int) -> str:
    """ConfigMap name of a step: ``<pipeline_id>-step-<N>-config``."""
    return f"{step_name(pipeline_id, step_id)}-config"


#: Label on the entry step's Service (the NodePort clients and Locust use), whatever its id.
ENTRY_LABEL = "stepchain.io/entry"


def labels(pipeline_id: str, step_id: int) -> dict[str, str]:
    """Labels on every object of a step."""
    return {
        "app.kubernetes.io/name": "stepchain-step",
        "app.kubernetes.io/part-of": "stepchain",
        "app.kubernetes.io/instance": pipeline_id,
        "app.kubernetes.io/component": f"step-{step_id}",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "pipeline_id": pipeline_id,
        "step_id": str(step_id),
    }


def selector_labels(pipeline_id: str, step_id: int) -> dict[str, str]:
    """Pod selector of a step's Deployment and Service (immutable once created)."""
    return {"app.kubernetes.io/name": "stepchain-step", "pipeline_id": pipeline_id,
            "step_id": str(step_id)}


def step_config(pipeline: Pipeline, step_id: int) -> PipelineConfig:
    """The routing graph as step `step_id` sees it (the ConfigMap's PIPELINE_CONFIG)."""
    return PipelineConfig(
        pipeline_id=pipeline.pipeline_id,
        step_id=step_id,
        steps=[ConfigStep(id=s.id, type=s.type, params=s.params, next_step=list(s.next_step),
                          preferred_next=s.preferred_next, route=s.route)
               for s in pipeline.steps],
    )


def step_config_text(pipeline: Pipeline, step_id: int) -> str:
    """PIPELINE_CONFIG text of step `step_id`, written by the one config dumper."""
    return dump_config(step_config(pipeline, step_id))


def render_manifests(pipeline: Pipeline, options: RenderOptions) -> list[dict[str, Any]]:
    """All objects of the pipeline: ConfigMaps, Services, Deployments, HPAs, then the
    NetworkPolicy."""
    if pipeline.colocate:
        from topology.kube.colocated import render_colocated  # it builds on this module's helpers

        return render_colocated(pipeline, options)
    namespace = options.namespace
    image = pipeline.image or options.image
    config_maps, services, deployments, hpas = [], [], [], []
    for step in pipeline.steps:
        text = step_config_text(pipeline, step.id)
        config_maps.append(_config_map(pipeline, step, namespace, text))
        services.append(_service(pipeline, step, namespace))
        deployments.append(_deployment(pipeline, step, namespace, image, text, options))
        if step.autoscale is not None:
            hpas.append(_hpa(pipeline, step, namespace))
    policies = [network_policy(pipeline, namespace)] if len(pipeline.steps) > 1 else []
    return [*config_maps, *services, *deployments, *hpas, *policies]


def network_policy_name(pipeline_id: str) -> str:
    """The pipeline's NetworkPolicy: ``<pipeline_id>-steps``."""
    return f"{pipeline_id}-steps"


def network_policy_metadata(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    """The pipeline's one NetworkPolicy's metadata: the pipeline's labels (no step_id)."""
    entry = pipeline.step(pipeline.entry_step)
    metadata = _metadata(pipeline, entry, network_policy_name(pipeline.pipeline_id), namespace)
    metadata["labels"] = {k: v for k, v in metadata["labels"].items() if k != "step_id"} | {
        "app.kubernetes.io/component": "network-policy"}
    return metadata


def network_policy(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    """Ingress to every step but the entry only from the pipeline's own pods.

    The entry step's pods are not selected, so they stay open like any Service (its NodePort
    is the pipeline's front door). The other steps are reachable on any port from the
    pipeline's pods and on the metrics port from anywhere (Prometheus finds pods by their
    annotations); nothing else reaches them.
    """
    pipeline_pods = {"app.kubernetes.io/name": "stepchain-step",
                     "pipeline_id": pipeline.pipeline_id}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": network_policy_metadata(pipeline, namespace),
        "spec": {
            "podSelector": {
                "matchLabels": pipeline_pods,
                "matchExpressions": [{"key": "step_id", "operator": "NotIn",
                                      "values": [str(pipeline.entry_step)]}],
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": pipeline_pods}}]},
                {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PIPELINE_CONFIG) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def manifests_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, like ``helm template`` prints."""
    return "".join("---\n" + yaml.dump(m, Dumper=_BlockDumper, sort_keys=False)
                   for m in manifests)


def _metadata(pipeline: Pipeline, step: Step, name: str, namespace: str,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(pipeline.pipeline_id, step.id),
        "annotations": {FINGERPRINT_ANNOTATION: pipeline.fingerprint, **(annotations or {})},
    }


def _config_map(pipeline: Pipeline, step: Step, namespace: str, text: str) -> dict[str, Any]:
    name = config_map_name(pipeline.pipeline_id, step.id)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(pipeline, step, name, namespace, {STEP_TYPE_ANNOTATION: step.type}),
        "data": {CONFIG_KEY: text},
    }


def _service(pipeline: Pipeline, step: Step, namespace: str) -> dict[str, Any]:
    name = step_name(pipeline.pipeline_id, step.id)
    spec: dict[str, Any]
    if step.id == pipeline.entry_step:
        # The entry step is reachable from outside the cluster (clients, Locust). No step
        # forwards to it (it is the one step nothing points to), so it needs no headless twin.
        spec = {"type": "NodePort"}
    else:
        # Headless: DNS answers every ready pod's IP, so an upstream step's `dns:///` channel
        # with round_robin spreads requests over all replicas. A ClusterIP would pin each
        # upstream pod's one HTTP/2 connection to a single downstream pod.
        spec = {"type": "ClusterIP", "clusterIP": "None"}
    spec.update({
        "selector": selector_labels(pipeline.pipeline_id, step.id),
        # gRPC and the HTTP face only: a NodePort opens every listed port on every node, and
        # /metrics is for in-cluster scrapers, which find the pods by their prometheus.io/*
        # annotations.
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
        ],
    })
    metadata = _metadata(pipeline, step, name, namespace)
    if step.id == pipeline.entry_step:
        # Found by label (with pipeline_id) rather than by a `-step-0` name: the entry is the step
        # nothing points to, and its id can be anything.
        metadata["labels"][ENTRY_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
    }


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


def _resources(step: Step) -> dict[str, dict[str, Any]]:
    requests: dict[str, Any] = {"cpu": str(step.threads), "memory": "256Mi"}
    limits: dict[str, Any] = {"cpu": str(step.threads), "memory": "1Gi"}
    if step.resources is not None:
        requests.update({k: str(v) for k, v in step.resources.requests.items()})
        limits.update({k: str(v) for k, v in step.resources.limits.items()})
    if step.gpu:
        limits["nvidia.com/gpu"] = str(step.gpu)
    return {"requests": requests, "limits": limits}


def _volumes(step: Step) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # The root filesystem is read-only; /tmp is the step's only writable place.
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    for v in step.volumes:
        if v.hostPath is not None:
            source: dict[str, Any] = {"hostPath": {"path": v.hostPath}}
        elif v.configMap is not None:
            source = {"configMap": {"name": v.configMap}}
        else:
            assert v.emptyDir is not None
            source = {"emptyDir": v.emptyDir.model_dump(exclude_defaults=True)}
        volumes.append({"name": v.name, **source})
        mounts.append({"name": v.name, "mountPath": v.mountPath, "readOnly": v.readOnly})
    return volumes, mounts


def _env(pipeline: Pipeline, step: Step, options: RenderOptions) -> list[dict[str, Any]]:
    cm = config_map_name(pipeline.pipeline_id, step.id)
    env: list[dict[str, Any]] = [
        {"name": CONFIG_KEY, "valueFrom": {"configMapKeyRef": {"name": cm, "key": CONFIG_KEY}}},
        {"name": "OMP_NUM_THREADS", "value": str(step.threads)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "OTEL_SERVICE_NAME", "value": step_name(pipeline.pipeline_id, step.id)},
    ]
    for key in sorted(options.otel_env):
        if key != "OTEL_SERVICE_NAME":
            env.append({"name": key, "value": options.otel_env[key]})
    return env


def _deployment(pipeline: Pipeline, step: Step, namespace: str, image: str, config_text: str,
                options: RenderOptions) -> dict[str, Any]:
    name = step_name(pipeline.pipeline_id, step.id)
    volumes, mounts = _volumes(step)
    resources = _resources(step)
    container: dict[str, Any] = {
        "name": "step",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["stepchain"],
        "args": ["step", "serve", "--config-env", CONFIG_KEY, "--port", str(GRPC_PORT),
                 "--discovery", "kubernetes", "--metrics-port", str(METRICS_PORT),
                 "--http-port", str(HTTP_PORT),
                 "--grace", str(options.drain_grace_s),
                 "--max-connection-age", str(MAX_CONNECTION_AGE_S),
                 "--max-pixels", str(max_pixels_for(resources["limits"]["memory"])),
                 "--max-memory-mb", str(max_memory_mb_for(resources["limits"]["memory"]))],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": _env(pipeline, step, options),
        "resources": resources,
        "readinessProbe": {"grpc": {"port": GRPC_PORT}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {"grpc": {"port": GRPC_PORT}, "initialDelaySeconds": 10,
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
        "volumeMounts": mounts,
    }
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
        "containers": [container],
        "volumes": volumes,
    }
    # Always explicit: the namespace's default account cannot list/watch the ConfigMaps.
    pod_spec["serviceAccountName"] = options.service_account
    if step.node_selector:
        pod_spec["nodeSelector"] = dict(step.node_selector)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(pipeline.pipeline_id, step.id)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": labels(pipeline.pipeline_id, step.id),
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
    if step.autoscale is None:  # with an HPA, the HPA owns the replica count
        spec = {"replicas": step.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pipeline, step, name, namespace, {STEP_TYPE_ANNOTATION: step.type}),
        "spec": spec,
    }


def _hpa(pipeline: Pipeline, step: Step, namespace: str) -> dict[str, Any]:
    assert step.autoscale is not None
    name = step_name(pipeline.pipeline_id, step.id)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(pipeline, step, name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": step.autoscale.minReplicas,
            "maxReplicas": step.autoscale.maxReplicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization",
                           "averageUtilization": step.autoscale.targetCPUUtilization}}}],
        },
    }

"""A pipeline -> one Deployment per step (pure): the default layout.

Per step: a ConfigMap ``<pipeline_id>-step-<N>-config`` (key ``PIPELINE_CONFIG``, what the step
server and Kubernetes discovery read), a Deployment whose pods announce their metrics port with
``prometheus.io/*`` annotations, a Service ``<pipeline_id>-step-<N>`` carrying only the gRPC
and HTTP ports (NodePort for the entry step, labelled ``stepchain.io/entry: "true"``; headless,
``clusterIP: None``, for every other step so that upstream steps balance over its pods with
``dns:///`` and ``round_robin``) and, when the step asks for ``autoscale``, a
HorizontalPodAutoscaler. Per pipeline of more than one step, a NetworkPolicy fences the data
plane: the entry step stays reachable from outside (clients, Locust); every other step takes
traffic only from the pipeline's own pods (plus its metrics port, for in-cluster scrapers).
"""

from __future__ import annotations

import json
from typing import Any

from topology.kube import objects
from topology.kube.names import (
    METRICS_PORT,
    STEP_TYPE_ANNOTATION,
    labels,
    pipeline_pods,
    selector_labels,
)
from topology.kube.objects import RenderOptions
from topology.pipeline.dump import step_config, step_config_text
from topology.pipeline.graph import Pipeline
from topology.pipeline.model import step_name


def render_per_step(pipeline: Pipeline, options: RenderOptions) -> list[dict[str, Any]]:
    """ConfigMaps, Services, Deployments, HPAs, then the NetworkPolicy."""
    namespace = options.namespace
    image = pipeline.image or options.image
    config_maps, services, deployments, hpas = [], [], [], []
    for step in pipeline.steps:
        text = step_config_text(pipeline, step.id)
        name = step_name(pipeline.pipeline_id, step.id)
        selector = selector_labels(pipeline.pipeline_id, step.id)
        config_maps.append(objects.config_map(pipeline, step, namespace, text))
        services.append(objects.service(pipeline, step, namespace, headless=True,
                                        selector=selector))
        vols, _ = objects.volumes(step)
        deployments.append(objects.deployment(
            objects.metadata(pipeline, step, name, namespace,
                             {STEP_TYPE_ANNOTATION: step.type}),
            options, containers=[objects.container(pipeline, step, image, options)],
            volumes=vols, pod_labels=labels(pipeline.pipeline_id, step.id), selector=selector,
            config_text=pod_config_text(pipeline, step.id),
            replicas=None if step.autoscale else step.replicas,
            node_selector=step.nodeSelector))
        if step.autoscale is not None:
            hpas.append(objects.hpa(pipeline, step, namespace, name))
    policies = [network_policy(pipeline, namespace)] if len(pipeline.steps) > 1 else []
    return [*config_maps, *services, *deployments, *hpas, *policies]


def pod_config_text(pipeline: Pipeline, step_id: int) -> str:
    """What a step's pods use of their ConfigMap (read from the environment at start): the step
    itself (type, params) and the routing graph (every step's id, type and routes), without the
    other steps' params. Its hash on the pod template makes a PUT that changes one step's params
    roll that step's Deployment and no other; the ConfigMaps all get the new graph."""
    own = next(s for s in step_config(pipeline, step_id).steps if s.id == step_id)
    graph = [{"id": s.id, "type": s.type, "next_step": list(s.next_step),
              "preferred_next": s.preferred_next, "route": dict(s.route or {})}
             for s in pipeline.steps]
    return json.dumps({"pipeline_id": pipeline.pipeline_id, "step": own.model_dump(mode="json"),
                       "graph": graph}, sort_keys=True, separators=(",", ":"))


def network_policy(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    """Ingress to every step but the entry only from the pipeline's own pods.

    The entry step's pods are not selected, so they stay open like any Service (its NodePort
    is the pipeline's front door). The other steps are reachable on any port from the
    pipeline's pods and on the metrics port from anywhere (Prometheus finds pods by their
    annotations); nothing else reaches them.
    """
    pods = pipeline_pods(pipeline.pipeline_id)
    return objects.network_policy(
        pipeline, namespace,
        {"matchLabels": pods,
         "matchExpressions": [{"key": "step_id", "operator": "NotIn",
                               "values": [str(pipeline.entry_step)]}]},
        [{"from": [{"podSelector": {"matchLabels": pods}}]},
         {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]}])

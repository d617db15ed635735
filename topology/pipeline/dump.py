"""A checked pipeline written back out: as each step's PIPELINE_CONFIG, and as pipeline JSON.

Both are pure functions of a :class:`~topology.pipeline.graph.Pipeline`:

- :func:`step_config` is the routing graph as step N reads it (what the Kubernetes ConfigMap and
  the local backend's ``step-<N>.yaml`` hold), written by the step's own config dumper
  (:func:`stepsvc.step.config.dump_config`) in :func:`step_config_text`;
- :func:`pipeline_document` is pipeline JSON that parses back to the same pipeline, the same
  fingerprint included (what the local backend keeps to bring a pipeline back after a restart).
"""

from __future__ import annotations

from typing import Any

from stepsvc.step.config import PipelineConfig, dump_config
from stepsvc.step.config import StepSpec as ConfigStep
from topology.pipeline.graph import Pipeline


def step_config(pipeline: Pipeline, step_id: int) -> PipelineConfig:
    """The routing graph as step `step_id` sees it (its PIPELINE_CONFIG)."""
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


def pipeline_document(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as pipeline JSON that parses back to the same pipeline (same fingerprint)."""
    steps = []
    for s in pipeline.steps:
        step: dict[str, Any] = {"id": s.id, "type": s.type, "params": s.params,
                                "next_step": list(s.next_step), "replicas": s.replicas,
                                "threads": s.threads, "gpu": s.gpu}
        if s.preferred_next is not None:
            step["preferred_next"] = s.preferred_next
        if s.route:
            step["route"] = s.route
        if s.resources is not None:
            step["resources"] = s.resources.model_dump(exclude_none=True)
        if s.volumes:
            step["volumes"] = [v.model_dump(exclude_none=True) for v in s.volumes]
        if s.node_selector:
            step["nodeSelector"] = s.node_selector
        if s.autoscale is not None:
            step["autoscale"] = s.autoscale.model_dump()
        steps.append(step)
    data: dict[str, Any] = {"name": pipeline.pipeline_id, "steps": steps}
    for key, value in (("namespace", pipeline.namespace), ("image", pipeline.image)):
        if value is not None:
            data[key] = value
    if pipeline.colocate:
        data["colocate"] = True
    return data

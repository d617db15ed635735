"""A checked pipeline written back out: as each step's PIPELINE_CONFIG, and as pipeline JSON.

One serializer: a step's fields as its schema dumps them. A checked
:class:`~topology.pipeline.graph.Step` *is* a step config step
(:class:`stepsvc.step.config.StepSpec`) with how it runs added, so

- :func:`step_config` is the routing graph as step N reads it (what the Kubernetes ConfigMap
  and the local backend's ``step-<N>.yaml`` hold): each step's routing fields, written by the
  step's own config dumper in :func:`step_config_text`;
- :func:`step_document` is one step (checked, or as a step config holds it) as pipeline JSON,
  and :func:`pipeline_document` the whole pipeline: it parses back to the same pipeline, the
  same fingerprint included (what the local backend keeps to bring a pipeline back after a
  restart, and what the console's editor starts from).
"""

from __future__ import annotations

from typing import Any

from stepsvc.step.config import PipelineConfig, dump_config
from stepsvc.step.config import StepSpec as ConfigStep
from topology.pipeline.graph import Pipeline, Step

#: The fields of a step that every step of the pipeline reads: the step config's schema.
ROUTE_FIELDS = frozenset(ConfigStep.model_fields)


def route_step(step: Step) -> ConfigStep:
    """The step as the step config holds it: its routing fields only."""
    return ConfigStep.model_validate(step.model_dump(include=set(ROUTE_FIELDS)))


def step_config(pipeline: Pipeline, step_id: int) -> PipelineConfig:
    """The routing graph as step `step_id` sees it (its PIPELINE_CONFIG)."""
    return PipelineConfig(pipeline_id=pipeline.pipeline_id, step_id=step_id,
                          steps=[route_step(s) for s in pipeline.steps])


def step_config_text(pipeline: Pipeline, step_id: int) -> str:
    """PIPELINE_CONFIG text of step `step_id`, written by the one config dumper."""
    return dump_config(step_config(pipeline, step_id))


def step_document(step: ConfigStep) -> dict[str, Any]:
    """The step as pipeline JSON: its fields that differ from their defaults, and always its
    ``next_step`` (left out, it would mean "the next item of ``steps``")."""
    data = step.model_dump(mode="json", exclude_defaults=True)
    data["next_step"] = list(step.next_step)
    return {name: data[name] for name in type(step).model_fields if name in data}


def pipeline_document(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as pipeline JSON that parses back to the same pipeline (same fingerprint)."""
    data: dict[str, Any] = {"name": pipeline.pipeline_id,
                            "steps": [step_document(s) for s in pipeline.steps]}
    for key, value in (("namespace", pipeline.namespace), ("image", pipeline.image)):
        if value is not None:
            data[key] = value
    if pipeline.colocate:
        data["colocate"] = True
    return data

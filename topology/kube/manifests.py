"""Pipeline -> Kubernetes manifests: a pure function of the pipeline and the render options.

A pipeline renders one Deployment per step (:mod:`~topology.kube.per_step`) or, with
``colocate: true``, one pod running every step (:mod:`~topology.kube.colocated`); both build
on :mod:`~topology.kube.objects` and carry the labels of :mod:`~topology.kube.names`, so a
pipeline is found and deleted by ``pipeline_id`` alone. :func:`manifests_yaml` writes them as
``helm template`` prints.
"""

from __future__ import annotations

from typing import Any

import yaml

from topology.kube.colocated import render_colocated
from topology.kube.objects import RenderOptions
from topology.kube.per_step import render_per_step
from topology.pipeline.graph import Pipeline


def render_manifests(pipeline: Pipeline, options: RenderOptions) -> list[dict[str, Any]]:
    """All objects of the pipeline: ConfigMaps, Services, Deployments, HPAs, then the
    NetworkPolicy."""
    if pipeline.colocate:
        return render_colocated(pipeline, options)
    return render_per_step(pipeline, options)


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

"""What the topology API answers: the response models of its OpenAPI document.

A backend reports in dataclasses (:mod:`topology.backend`); these are the same facts as the
API's JSON, with the descriptions users read in ``/docs``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from topology.backend import PipelineStatus
from topology.load.hops import PipelineHops


class NextStepOut(BaseModel):
    """One hop as the step before it sees it."""

    step_id: int
    reachable: bool
    channel: str = Field("-", description="the gRPC channel's connectivity state")
    reason: str = Field("", description="why a request cannot go on to it (empty when it can)")


class StepStatusOut(BaseModel):
    """One step's readiness."""

    step_id: int
    type: str
    ready: bool
    ready_replicas: int
    replicas: int
    address: str | None = None
    restarts: int = Field(0, description="times the step was restarted after it exited")
    error: str | None = Field(None, description="why the step is down for good, with the end "
                                                "of its log")
    metrics: list[str] = Field(default_factory=list,
                               description="host:port of each replica's Prometheus /metrics "
                                           "the service can scrape (local backend)")
    next_steps: list[NextStepOut] = Field(
        default_factory=list, description="whether the step can reach each of its next steps "
                                          "now, as it reports it (empty when it cannot be "
                                          "scraped)")


class PipelineStatusOut(BaseModel):
    """A deployed pipeline."""

    pipeline_id: str
    namespace: str
    ready: bool = Field(description="every step serves and no step is cut off from all of its "
                                    "next steps: a request would get through")
    degraded: bool = Field(False, description="some hop cannot be taken now (problems says "
                                              "which and why)")
    problems: list[str] = Field(default_factory=list,
                                description="each broken hop, with the reason its step gives")
    entrypoint: str | None
    fingerprint: str
    steps: list[StepStatusOut]
    details: dict[str, Any] = Field(default_factory=dict)
    entry_step: int | None = Field(None, description="the step clients call")
    graph: list[dict[str, Any]] = Field(
        default_factory=list, description="the routing graph as deployed: id, type, params, "
                                          "next_step, preferred_next, route of every step")
    http_entrypoint: str | None = Field(None, description="base URL of the entry step's HTTP "
                                                          "face; POST an image to its /process")
    spec: dict[str, Any] | None = Field(None, description="the pipeline JSON as submitted (last "
                                                          "POST or PUT)")


class PipelineList(BaseModel):
    """Every pipeline of the backend."""

    pipelines: list[PipelineStatusOut]


class Applied(BaseModel):
    """Result of a create or update."""

    pipeline_id: str
    namespace: str
    created: bool = Field(description="true: new pipeline (201); false: it existed (200)")
    resources: list[dict[str, Any]]
    entrypoint: str | None = Field(description="host:port of the entry step (gRPC); null while "
                                               "it runs no process (replicas: 0)")
    http_entrypoint: str | None = Field(None, description="base URL of the entry step's HTTP "
                                                          "face; POST an image to its /process")
    details: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list,
                                description="accepted but worth knowing, each naming its field "
                                            "(?strict=true refuses them)")


class DryRunResult(BaseModel):
    """What would be applied."""

    pipeline_id: str
    namespace: str
    dry_run: bool = True
    entry_step: int
    manifests: list[dict[str, Any]]
    warnings: list[str] = Field(default_factory=list)


class Deleted(BaseModel):
    """Result of a delete."""

    pipeline_id: str
    deleted: bool


class Health(BaseModel):
    """Liveness of the service."""

    status: str
    backend: str


class ErrorDetail(BaseModel):
    """An error the caller can act on."""

    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "missing or wrong bearer token"},
    413: {"model": ErrorDetail, "description": "body larger than the limit"},
    422: {"model": ErrorDetail, "description": "invalid pipeline; detail[].loc names the field"},
    502: {"model": ErrorDetail, "description": "the backend (Kubernetes, step processes) failed"},
}


def status_out(status: PipelineStatus, hops: PipelineHops | None = None) -> PipelineStatusOut:
    """A backend's status of a pipeline as the API answers it; with `hops`, readiness also
    says whether a request would get through each hop (GET /pipeline/{id})."""
    hops = hops or PipelineHops()
    steps = [StepStatusOut(**asdict(s), next_steps=[
        NextStepOut(**hop.to_json()) for hop in hops.next_steps.get(s.step_id, ())])
        for s in status.steps]
    return PipelineStatusOut(
        pipeline_id=status.pipeline_id, namespace=status.namespace,
        ready=status.ready and not hops.cut_off, degraded=hops.degraded,
        problems=hops.problems(), entrypoint=status.entrypoint, fingerprint=status.fingerprint,
        steps=steps, details=status.details,
        entry_step=status.entry_step, graph=[s.model_dump() for s in status.graph],
        http_entrypoint=status.http_entrypoint, spec=status.spec)

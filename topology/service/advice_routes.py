"""``GET /pipeline/{id}/advice``: every step's live load and scaling advice, as JSON.

The console's live panel and ``stepchain top --topology URL`` both read this, so they show
the same numbers. The service scrapes only the ``/metrics`` endpoints its backend reports for
the pipeline's steps (never an address a caller names). Reads are open, like every GET.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from topology.backend import Backend, PipelineStatus
from topology.load.advice import DEFAULT_TARGET_UTILISATION
from topology.load.live import LiveMetrics, LoadReport
from topology.pipeline.flow import flow_order
from topology.pipeline.model import MAX_PIPELINE_NAME, PIPELINE_NAME_RE

NO_METRICS = ("the {backend} backend reports no /metrics endpoint the service can reach for "
              "these steps; run `stepchain top --target HOST:PORT` against the steps' metrics "
              "ports (kubectl port-forward deploy/<pipeline>-step-<N> 9464) instead")


def pipeline_report(status: PipelineStatus, live: LiveMetrics, *, namespace: str,
                    target: float = DEFAULT_TARGET_UTILISATION) -> LoadReport:
    """The load and advice of `status`'s steps, in flow order."""
    endpoints = [e for step in status.steps for e in step.metrics]
    order = flow_order(status.graph, status.entry_step) if status.graph else None
    replicas = {s.step_id: s.replicas for s in status.steps if s.replicas > 0}
    report = live.report(endpoints, order=order, replicas=replicas, namespace=namespace,
                         target=target)
    return report


def report_json(status: PipelineStatus, report: LoadReport, backend_name: str) -> dict[str, Any]:
    """The advice answer: the report plus who it is about (and why it is empty, when it is)."""
    body = {"pipeline_id": status.pipeline_id, "namespace": status.namespace,
            **report.to_json()}
    if not any(step.metrics for step in status.steps):
        body["errors"] = {"*": NO_METRICS.format(backend=backend_name)}
    return body


def advice_router(backend: Backend, live: LiveMetrics) -> APIRouter:
    """The advice endpoint over `backend`, scraping with `live`."""
    router = APIRouter(tags=["load"])

    @router.get("/pipeline/{pipeline_id}/advice",
                responses={404: {"description": "no such pipeline"}})
    def advice(
            pipeline_id: Annotated[str, Path(pattern=PIPELINE_NAME_RE.pattern,
                                             max_length=MAX_PIPELINE_NAME)],
            target: Annotated[float, Query(gt=0, le=1, description="target utilisation per "
                                                                   "replica")]
            = DEFAULT_TARGET_UTILISATION) -> dict[str, Any]:
        """Per step, in flow order: requests/s, p50/p95, queue, refusals, errors, CPU, RSS,
        utilisation, and the scaling advice (action, replicas by Little's law, reason,
        confidence, the `kubectl scale` / HPA change). Advice only: nothing is applied."""
        status = backend.status(pipeline_id)
        if status is None:
            raise HTTPException(404, f"no pipeline {pipeline_id!r}; GET /pipelines lists them")
        report = pipeline_report(status, live, namespace=status.namespace, target=target)
        return report_json(status, report, backend.name)

    return router

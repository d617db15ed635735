"""The pipeline routes: create, list, inspect, replace and delete pipelines.

``POST /pipeline`` answers 201 when it created the pipeline and 200 when a pipeline with the
same id and the same definition already existed (it is re-applied, so a re-POST converges); a
different definition under an existing id is a 409 — change it with ``PUT /pipeline/{id}``.
Every refused field comes back as 422 with its path in ``detail[].loc``; warnings also come
back as HTTP ``Warning`` headers. Writes are serialised (one apply at a time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse

from topology.backend import Backend
from topology.kube.manifests import render_manifests
from topology.load.hops import scrape_hops
from topology.pipeline.graph import Pipeline, resolve_pipeline
from topology.pipeline.model import (
    MAX_PIPELINE_NAME,
    PIPELINE_NAME_RE,
    PipelineInvalid,
    PipelineSpec,
)
from topology.service.schemas import (
    ERRORS,
    Applied,
    Deleted,
    DryRunResult,
    ErrorDetail,
    PipelineList,
    PipelineStatusOut,
    status_out,
)
from topology.service.security import check_policy
from topology.service.settings import Settings, render_options

log = logging.getLogger(__name__)

PipelineId = Annotated[str, Path(pattern=PIPELINE_NAME_RE.pattern, max_length=MAX_PIPELINE_NAME,
                                 description="pipeline id (DNS-1035 label)")]


DryRun = Annotated[bool, Query(description="validate and return the manifests; change nothing")]


Strict = Annotated[bool, Query(description="refuse (422) what is otherwise a warning, e.g. a "
                                           "next_step naming no step of the pipeline")]


def _answer(result: Applied | DryRunResult, status_code: int) -> JSONResponse:
    """`result` as JSON; its warnings also as HTTP `Warning` headers, as kube-apiserver sends
    them (kubectl prints those)."""
    headers = [("Warning", '299 - "{}"'.format(
        w.replace('"', "'").encode("ascii", "backslashreplace").decode("ascii")))
        for w in result.warnings]
    response = JSONResponse(result.model_dump(), status_code=status_code)
    for name, value in headers:
        response.headers.append(name, value)
    return response


async def submitted_json(request: Request) -> Any:
    """The request's JSON document as sent (what GET returns as `spec`).

    Refuses (415) a body sent without ``Content-Type: application/json`` -- e.g. ``curl -d``
    without ``-H`` sends a form -- instead of letting validation say it is not an object.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, "send Content-Type: application/json (the body is a pipeline "
                                 f"JSON document; got {media or 'no Content-Type'}), e.g. curl "
                                 "-H 'Content-Type: application/json' -d @pipeline.json")
    try:
        return await request.json()
    except ValueError:  # not JSON: the 422 handler answers its line and column
        return None


#: The request body as sent, for endpoints that keep it (POST and PUT /pipeline).
Submitted = Annotated[Any, Depends(submitted_json)]


def _not_found(pipeline_id: str, backend: Backend) -> HTTPException:
    return HTTPException(404, f"no pipeline {pipeline_id!r} in {backend.name} namespace "
                              f"{backend.namespace!r}; GET /pipelines lists them")


def add_pipeline_routes(app: FastAPI, backend: Backend, settings: Settings,
                        writer: Sequence[DependsParam]) -> None:
    """Adds the pipeline routes over `backend` to `app`; `writer` guards the writes (the bearer
    token). On the app itself, not through an included router: the request metrics match a
    request refused before routing (413) against the app's own routes."""
    write_lock = threading.Lock()

    def checked(spec: PipelineSpec, name: str | None = None, strict: bool = False,
                source: Any = None) -> Pipeline:
        pipeline = resolve_pipeline(spec, name=name, strict=strict)
        check_policy(pipeline, settings)
        if isinstance(source, dict):
            pipeline = replace(pipeline, source=source)
        for warning in pipeline.warnings:
            log.warning("pipeline %s: %s", pipeline.pipeline_id, warning)
        return pipeline

    def dry_run_result(pipeline: Pipeline) -> DryRunResult:
        options = render_options(settings)
        return DryRunResult(pipeline_id=pipeline.pipeline_id, namespace=options.namespace,
                            entry_step=pipeline.entry_step,
                            manifests=render_manifests(pipeline, options),
                            warnings=[str(w) for w in pipeline.warnings])

    def applied(pipeline: Pipeline, created: bool) -> Applied:
        result = backend.apply(pipeline)
        return Applied(pipeline_id=result.pipeline_id, namespace=backend.namespace,
                       created=created, resources=result.resources,
                       entrypoint=result.entrypoint, http_entrypoint=result.http_entrypoint,
                       details=result.details, warnings=[str(w) for w in pipeline.warnings])

    @app.post("/pipeline", status_code=201, tags=["pipelines"], dependencies=writer,
              response_model=Applied | DryRunResult,
              responses={200: {"model": Applied, "description": "already existed, identical "
                                                                "(re-applied); or dry run"},
                         409: {"model": ErrorDetail,
                               "description": "the id exists with a different definition"},
                         **ERRORS})
    def create_pipeline(spec: PipelineSpec, source: Submitted, dry_run: DryRun = False,
                        strict: Strict = False) -> Any:
        """Creates a pipeline (201). Identical re-POST: 200. Same id, other body: 409."""
        pipeline = checked(spec, strict=strict, source=source)
        if dry_run:
            return _answer(dry_run_result(pipeline), 200)
        with write_lock:
            existing = backend.status(pipeline.pipeline_id)
            if existing is not None and existing.fingerprint != pipeline.fingerprint:
                raise HTTPException(409, f"pipeline {pipeline.pipeline_id!r} already exists with "
                                         "a different definition; change it with PUT "
                                         f"/pipeline/{pipeline.pipeline_id} or DELETE it first")
            result = applied(pipeline, created=existing is None)
        return _answer(result, 201 if result.created else 200)

    @app.get("/pipelines", response_model=PipelineList, tags=["pipelines"])
    def list_pipelines() -> PipelineList:
        """Every pipeline with its steps' readiness."""
        return PipelineList(pipelines=[status_out(s) for s in backend.list_pipelines()])

    @app.get("/pipeline/{pipeline_id}", response_model=PipelineStatusOut, tags=["pipelines"],
             responses={404: {"model": ErrorDetail, "description": "no such pipeline"},
                        502: ERRORS[502]})
    def get_pipeline(pipeline_id: PipelineId) -> PipelineStatusOut:
        """A pipeline's steps with readiness and its entrypoint."""
        status = backend.status(pipeline_id)
        if status is None:
            raise _not_found(pipeline_id, backend)
        # What a request would meet at each hop: the steps' own view of their next steps.
        return status_out(status, scrape_hops([m for s in status.steps for m in s.metrics]))

    @app.put("/pipeline/{pipeline_id}", response_model=Applied | DryRunResult,
             tags=["pipelines"], dependencies=writer,
             responses={404: {"model": ErrorDetail, "description": "no such pipeline"},
                        **ERRORS})
    def update_pipeline(pipeline_id: PipelineId, spec: PipelineSpec, source: Submitted,
                        dry_run: DryRun = False, strict: Strict = False) -> Any:
        """Replaces an existing pipeline's definition; its objects converge to it."""
        if spec.name is not None and spec.name != pipeline_id:
            raise PipelineInvalid.single(("name",), f"name {spec.name!r} differs from the "
                                                    f"pipeline id {pipeline_id!r} in the path")
        pipeline = checked(spec, name=pipeline_id, strict=strict, source=source)
        if dry_run:
            return _answer(dry_run_result(pipeline), 200)
        with write_lock:
            if backend.status(pipeline_id) is None:
                raise _not_found(pipeline_id, backend)
            return _answer(applied(pipeline, created=False), 200)

    @app.delete("/pipeline/{pipeline_id}", response_model=Deleted, tags=["pipelines"],
                dependencies=writer,
                responses={404: {"model": ErrorDetail, "description": "no such pipeline"},
                           401: ERRORS[401], 502: ERRORS[502]})
    def delete_pipeline(pipeline_id: PipelineId) -> Deleted:
        """Removes everything labelled with the pipeline (or stops its processes)."""
        with write_lock:
            if not backend.delete(pipeline_id):
                raise _not_found(pipeline_id, backend)
        return Deleted(pipeline_id=pipeline_id, deleted=True)

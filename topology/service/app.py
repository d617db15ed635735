"""The topology HTTP API (FastAPI): create, inspect, update and delete pipelines.

``POST /pipeline`` answers 201 when it created the pipeline and 200 when a pipeline with the
same id and the same definition already existed (it is re-applied, so a re-POST converges); a
different definition under an existing id is a 409 — change it with ``PUT /pipeline/{id}``.
Every refused field comes back as 422 with its path in ``detail[].loc``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from topology.backend import Backend, BackendError, PipelineStatus
from topology.jobs.wiring import make_controller
from topology.kube.manifests import render_manifests
from topology.load.live import LiveMetrics
from topology.pipeline.graph import Pipeline, resolve_pipeline
from topology.pipeline.model import (
    MAX_PIPELINE_NAME,
    PIPELINE_NAME_RE,
    PipelineInvalid,
    PipelineSpec,
    clean_loc,
)
from topology.service.advice_routes import advice_router
from topology.service.auth import token_matches, token_path
from topology.service.console.routes import mount_console, upload_limit
from topology.service.job_routes import job_router
from topology.service.kernel_routes import kernels_router
from topology.service.metrics import (
    METRICS_CONTENT_TYPE,
    METRICS_PATH,
    MeteredBackend,
    RequestMetrics,
    RunsStepProcesses,
    TopologyMetrics,
)
from topology.service.security import check_policy
from topology.service.settings import Settings, check_startup, render_options, with_token

log = logging.getLogger(__name__)

PipelineId = Annotated[str, Path(pattern=PIPELINE_NAME_RE.pattern, max_length=MAX_PIPELINE_NAME,
                                 description="pipeline id (DNS-1035 label)")]
DryRun = Annotated[bool, Query(description="validate and return the manifests; change nothing")]
Strict = Annotated[bool, Query(description="refuse (422) what is otherwise a warning, e.g. a "
                                           "next_step naming no step of the pipeline")]


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


class PipelineStatusOut(BaseModel):
    """A deployed pipeline."""

    pipeline_id: str
    namespace: str
    ready: bool
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


def make_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    if settings.backend == "kubernetes":
        from topology.kube.backend import KubernetesBackend

        return KubernetesBackend.from_environment(render_options(settings))
    from topology.local.backend import LocalBackend

    return LocalBackend(settings.state_dir, namespace=settings.namespace,
                        otel_env=settings.otel_env)


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The API over `backend` (built from `settings` when not given), closed on shutdown.

    Without a token in `settings` (and without --no-auth) the state dir's token is used,
    generated at first start; ``app.state.settings.token`` is the one writes need.
    Raises ValueError for settings the service must not run with (see check_startup).
    """
    check_startup(settings)
    settings = with_token(settings)
    if not settings.auth:
        log.warning("auth is OFF (--no-auth): any process that can reach %s:%d can create and "
                    "delete pipelines, i.e. start processes as this user", settings.host,
                    settings.port)
    inner = backend if backend is not None else make_backend(settings)
    metrics = TopologyMetrics(inner.name)
    if isinstance(inner, RunsStepProcesses):
        metrics.watch_step_processes(inner)
    backend = MeteredBackend(inner, metrics)
    write_lock = threading.Lock()
    live = LiveMetrics()  # the steps' own /metrics, scraped for advice and the console
    jobs = make_controller(inner, settings.state_dir, os.environ,
                           step_image=settings.step_image, pipelines=backend.status)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Plugin kernels load now, so a broken one is logged at start (never fatal).
        from native.registry import load_plugins

        load_plugins()
        # Count the pipelines a previous service left, so the gauge is right from the start.
        try:
            backend.list_pipelines()
        except BackendError as exc:
            log.warning("cannot list the pipelines at startup (the service runs on): %s", exc)
        jobs.start()  # resumes the jobs a previous service left unfinished
        try:
            yield
        finally:
            jobs.close()
            # The local backend's step processes must not outlive the service.
            backend.close()
            live.close()

    app = FastAPI(
        title="stepchain topology",
        version="0.1.0",
        description="Turns pipeline JSON into step servers: ConfigMaps, Deployments and "
                    "Services on Kubernetes, or local processes.",
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.jobs = jobs

    def require_writer(
            authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        if not settings.auth:
            return  # --no-auth, only possible when bound to loopback (check_startup)
        assert settings.token is not None  # with_token
        if not token_matches(authorization, settings.token):
            raise HTTPException(401, "writes need the header 'Authorization: Bearer <token>' "
                                     f"with the service's token ({where_token})",
                                headers={"WWW-Authenticate": "Bearer"})

    where_token = (f"printed at its start; kept in {token_path(settings.state_dir)} unless "
                   "--token-file / STEPCHAIN_TOKEN_FILE names another")
    writer = [Depends(require_writer)]

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

    @app.exception_handler(PipelineInvalid)
    async def _invalid(_: Request, exc: PipelineInvalid) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [
            {**e, "loc": ["body", *e["loc"]]} for e in exc.errors]})

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": list(clean_loc(tuple(e.get("loc", ())))), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in exc.errors()]})

    @app.exception_handler(BackendError)
    async def _backend_failed(_: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": str(exc)})

    # Reads are open like every GET; out of the OpenAPI document: it is not part of the API.
    @app.get(METRICS_PATH, include_in_schema=False)
    def prometheus_metrics() -> Response:
        """The service's Prometheus metrics (text exposition format)."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> Health:
        """Liveness: the service answers."""
        return Health(status="ok", backend=backend.name)

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
        return PipelineList(pipelines=[_status_out(s) for s in backend.list_pipelines()])

    @app.get("/pipeline/{pipeline_id}", response_model=PipelineStatusOut, tags=["pipelines"],
             responses={404: {"model": ErrorDetail, "description": "no such pipeline"},
                        502: ERRORS[502]})
    def get_pipeline(pipeline_id: PipelineId) -> PipelineStatusOut:
        """A pipeline's steps with readiness and its entrypoint."""
        status = backend.status(pipeline_id)
        if status is None:
            raise _not_found(pipeline_id, backend)
        return _status_out(status)

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

    app.include_router(advice_router(backend, live))
    app.include_router(kernels_router())
    app.include_router(job_router(jobs, writer))
    mount_console(app, backend, live, settings, writer,
                  jobs=lambda: [status.to_json() for status in jobs.list()])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, limit_for=upload_limit)
    # Added last = outermost: it also records the 413s BodyLimit answers.
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.router.routes)
    return app


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


def _status_out(status: PipelineStatus) -> PipelineStatusOut:
    return PipelineStatusOut(
        pipeline_id=status.pipeline_id, namespace=status.namespace, ready=status.ready,
        entrypoint=status.entrypoint, fingerprint=status.fingerprint,
        steps=[StepStatusOut(**asdict(s)) for s in status.steps], details=status.details,
        entry_step=status.entry_step, graph=[s.model_dump() for s in status.graph],
        http_entrypoint=status.http_entrypoint, spec=status.spec)


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
    except ValueError:  # malformed JSON: FastAPI's own 422 names the position
        return None


#: The request body as sent, for endpoints that keep it (POST and PUT /pipeline).
Submitted = Annotated[Any, Depends(submitted_json)]


def _not_found(pipeline_id: str, backend: Backend) -> HTTPException:
    return HTTPException(404, f"no pipeline {pipeline_id!r} in {backend.name} namespace "
                              f"{backend.namespace!r}; GET /pipelines lists them")


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413 before anything parses them;
    `limit_for(path, max_bytes)` may give some paths another limit (console photo uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 limit_for: Callable[[str, int], int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (self.limit_for(str(scope.get("path", "")), self.max_bytes)
                 if self.limit_for is not None else self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        # Chunked or lying bodies: read up to the limit here, then replay them to the app.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._refuse(send, limit)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Callable[[Message], Awaitable[None]], limit: int) -> None:
        body = (b'{"detail":"request body is larger than %d bytes"}' % limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

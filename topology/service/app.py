"""The topology HTTP service (FastAPI): one app over one backend, and what every route shares.

:func:`create_app` checks the settings, builds the backend (:func:`make_backend`) and wraps it
in metrics, then mounts the routes: the pipelines (:mod:`~topology.service.pipeline_routes`),
advice, kernels, jobs and the web console. Here too: the bearer-token check every write
depends on, the answers for refused input (422 naming the field, as ``detail[].loc``) and for
a failing backend (502), ``/healthz``, ``/metrics``, and :class:`BodyLimit` (413 before any
parsing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from topology.backend import Backend, BackendError
from topology.jobs.wiring import make_controller
from topology.load.live import LiveMetrics
from topology.pipeline.model import (
    PipelineInvalid,
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
from topology.service.pipeline_routes import add_pipeline_routes
from topology.service.request_body import not_json_detail
from topology.service.schemas import Health
from topology.service.settings import Settings, check_startup, render_options, with_token

log = logging.getLogger(__name__)


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

    @app.exception_handler(PipelineInvalid)
    async def _invalid(_: Request, exc: PipelineInvalid) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [
            {**e, "loc": ["body", *e["loc"]]} for e in exc.errors]})

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):  # its line and column
            return JSONResponse(status_code=422, content={"detail": [
                not_json_detail(await request.body())]})
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": list(clean_loc(tuple(e.get("loc", ())))), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in errors]})

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

    add_pipeline_routes(app, backend, settings, writer)
    app.include_router(advice_router(backend, live))
    app.include_router(kernels_router())
    app.include_router(job_router(jobs, writer))
    mount_console(app, backend, live, settings, writer,
                  jobs=lambda: [status.to_json() for status in jobs.list()])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, limit_for=upload_limit)
    # Added last = outermost: it also records the 413s BodyLimit answers.
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.router.routes)
    return app


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

"""The web console's pages: server-rendered HTML (Jinja2), inline SVG, one small script.

Served by the topology service at ``/`` and under ``/console/``; the same auth rules as the
API: pages and fragments are reads, open like every GET; a Run (it makes the steps work)
needs the bearer token, as do the API writes the page's script calls (``POST /pipeline``,
``PUT``, ``DELETE``). The script sends the token the user typed or gave once as
``?token=`` (kept in the tab's sessionStorage, removed from the address bar).

Nothing is fetched from elsewhere: no CDN, no build step; charts are SVG drawn here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Path, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel

from topology.backend import Backend, PipelineStatus
from topology.load.hops import PipelineHops, scrape_hops
from topology.load.live import LiveMetrics
from topology.pipeline.dump import step_document
from topology.pipeline.model import MAX_PIPELINE_NAME, PIPELINE_NAME_RE
from topology.service.console import svg
from topology.service.console.jsonview import annotate
from topology.service.console.run import (
    MAX_UPLOAD_BYTES,
    RunRefused,
    run_pipeline,
    run_plan,
    samples,
    summarize,
    thread_choices,
)
from topology.service.settings import Settings

HERE = FilePath(__file__).resolve().parent
STATIC_PATH = "/console/static"
#: Paths whose request bodies may be photos (the BodyLimit middleware lets them be larger).
UPLOAD_PATH_SUFFIX = "/run"
UPLOAD_LIMIT_BYTES = MAX_UPLOAD_BYTES + (1 << 20)

PipelineId = Annotated[str, Path(pattern=PIPELINE_NAME_RE.pattern,
                                 max_length=MAX_PIPELINE_NAME)]

_templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True,
                         lstrip_blocks=True)
_templates.globals["dict"] = dict


def upload_limit(path: str, default: int) -> int:
    """The body limit for `path`: photos for a console Run may be larger than API bodies."""
    if path.startswith("/console/pipelines/") and path.endswith(UPLOAD_PATH_SUFFIX):
        return UPLOAD_LIMIT_BYTES
    return default


class AnnotateBody(BaseModel):
    """A submitted pipeline text and the API's 422 detail for it."""

    text: str
    errors: list[dict[str, Any]] = []


def graph_steps(status: PipelineStatus, hops: PipelineHops | None = None
                ) -> list[svg.GraphStep]:
    """The boxes of a pipeline's graph: routing from the deployed config, state from status,
    the hops a request cannot take (red) from `hops`."""
    state = {s.step_id: s for s in status.steps}
    broken: dict[int, dict[int, str]] = {}
    for hop in (hops.broken if hops else ()):
        broken.setdefault(hop.from_step, {})[hop.to_step] = hop.reason
    out = []
    for route_step in status.graph:
        s = state.get(route_step.id)
        out.append(svg.GraphStep(
            id=route_step.id, type=route_step.type, params=route_step.params,
            next_step=list(route_step.next_step), preferred_next=route_step.preferred_next,
            route=dict(route_step.route), ready=s.ready if s else None,
            replicas=f"{s.ready_replicas}/{s.replicas} ready" if s else "",
            address=(s.address or "") if s else "", broken=broken.get(route_step.id, {})))
    if not out:  # no routing graph readable: boxes without edges, still with their state
        out = [svg.GraphStep(id=s.step_id, type=s.type, params={}, next_step=[],
                             preferred_next=None, route={}, ready=s.ready,
                             replicas=f"{s.ready_replicas}/{s.replicas} ready",
                             address=s.address or "") for s in status.steps]
    return out


def pipeline_json(status: PipelineStatus) -> str:
    """A pipeline JSON that re-creates `status`'s routing (the start of a Replace), written
    by the pipeline model's one step serializer; replicas as the steps run now."""
    replicas = {s.step_id: s.replicas for s in status.steps}
    steps = []
    for s in status.graph:
        step = step_document(s)
        if replicas.get(s.id, 1) > 1:
            step["replicas"] = replicas[s.id]
        steps.append(step)
    return json.dumps({"name": status.pipeline_id, "steps": steps}, indent=2)


def _example_pipeline() -> str:
    example = HERE.parents[2] / "examples" / "pipeline.json"
    try:
        data = json.loads(example.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"name": "demo", "steps": [{"type": "classify"}, {"type": "grayscale"}]}
    data["name"] = "console-demo"
    return json.dumps(data, indent=2)


def mount_console(app: FastAPI, backend: Backend, live: LiveMetrics, settings: Settings,
                  writer: Sequence[Any], jobs: Callable[[], list[dict[str, Any]]] | None = None
                  ) -> None:
    """Adds the console's pages, fragments and static files to `app`; `jobs` lists the jobs'
    status documents for the Jobs page."""
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(console_router(backend, live, settings, writer, jobs or list))


def console_router(backend: Backend, live: LiveMetrics, settings: Settings,
                   writer: Sequence[Any],
                   jobs: Callable[[], list[dict[str, Any]]] = list) -> APIRouter:
    """The console routes (not part of the API's OpenAPI document)."""
    router = APIRouter(include_in_schema=False)
    cores = os.cpu_count() or 1

    def page(name: str, **context: Any) -> HTMLResponse:
        html = _templates.get_template(name).render(
            static=STATIC_PATH, auth=settings.auth, backend=backend.name,
            namespace=backend.namespace, jaeger_url=settings.jaeger_url, **context)
        return HTMLResponse(html)

    def refused(field: str, message: str, code: int) -> HTMLResponse:
        response = page("run_error.html", field=field, message=message)
        response.status_code = code
        return response

    def status_or_404(pipeline_id: str) -> PipelineStatus:
        status = backend.status(pipeline_id)
        if status is None:
            raise HTTPException(404, f"no pipeline {pipeline_id!r}")
        return status

    def cards() -> list[dict[str, Any]]:
        out = []
        for status in backend.list_pipelines():
            out.append({"status": status,
                        "graph": svg.pipeline_graph(graph_steps(status), status.entry_step,
                                                    title=status.pipeline_id)})
        return out

    @router.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return page("index.html", pipelines=cards(), example=_example_pipeline())

    @router.get("/console/kernels", response_class=HTMLResponse)
    def kernels_page() -> HTMLResponse:
        from native.registry import EXEC_PARAM_NAMES, catalog

        listed = catalog()
        kernels = [{**k, "own_params": [(name, p) for name, p in
                                        k["params"]["properties"].items()
                                        if name not in EXEC_PARAM_NAMES]}
                   for k in listed["kernels"]]
        return page("kernels.html", kernels=kernels, failed=listed["failed"],
                    exec_params=sorted(EXEC_PARAM_NAMES))

    @router.get("/console/jobs", response_class=HTMLResponse)
    def jobs_page() -> HTMLResponse:
        return page("jobs.html", jobs=jobs())

    @router.get("/console/fragments/jobs", response_class=HTMLResponse)
    def jobs_fragment() -> HTMLResponse:
        return page("jobs_table.html", jobs=jobs())

    @router.get("/console/fragments/pipelines", response_class=HTMLResponse)
    def pipelines_fragment() -> HTMLResponse:
        return page("pipelines.html", pipelines=cards())

    @router.get("/console/pipelines/{pipeline_id}", response_class=HTMLResponse)
    def pipeline_page(pipeline_id: PipelineId) -> HTMLResponse:
        status = status_or_404(pipeline_id)
        hops = scrape_hops([m for s in status.steps for m in s.metrics])
        return page("pipeline.html", status=status, hops=hops,
                    graph=svg.pipeline_graph(graph_steps(status, hops), status.entry_step,
                                             title=status.pipeline_id),
                    definition=pipeline_json(status), samples=samples(),
                    threads=thread_choices(cores), cores=cores)

    @router.get("/console/pipelines/{pipeline_id}/live", response_class=HTMLResponse)
    def live_fragment(pipeline_id: PipelineId) -> HTMLResponse:
        from topology.service.advice_routes import pipeline_report, report_json

        status = status_or_404(pipeline_id)
        report = pipeline_report(status, live, namespace=status.namespace)
        body = report_json(status, report, backend.name)
        # The hops as the steps saw them at the end of the window: the graph at the top of the
        # page is redrawn from it (console.js), a broken edge red with its reason.
        hops = report.hops()
        graph = svg.pipeline_graph(graph_steps(status, hops), status.entry_step,
                                   title=status.pipeline_id)
        return page("live.html", report=body, status=status, hops=hops, graph=graph)

    @router.post("/console/pipelines/{pipeline_id}/run", response_class=HTMLResponse,
                 dependencies=list(writer))
    def run(pipeline_id: PipelineId,
            image: Annotated[UploadFile | None, File()] = None,
            sample: Annotated[str | None, Form()] = None,
            threads: Annotated[list[str] | None, Form()] = None,
            passes: Annotated[str, Form()] = "1",
            runs: Annotated[str, Form()] = "1") -> HTMLResponse:
        status = status_or_404(pipeline_id)
        data = image.file.read(MAX_UPLOAD_BYTES + 1) if image is not None else None
        try:
            plan = run_plan(image=data or None, image_name=image.filename or "" if image else "",
                            sample=sample or None, threads=threads or [], passes=passes,
                            runs=runs, cores=cores)
        except RunRefused as exc:
            return refused(exc.field, str(exc), 422)
        if not status.entrypoint:
            return refused("pipeline", f"pipeline {pipeline_id} has no entry step address yet",
                           409)
        try:
            answers = run_pipeline(status.entrypoint, plan)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return refused("pipeline", f"the pipeline answered {code}: {details}", 502)
        summary = summarize(answers)
        last = summary.last
        return page(
            "run.html", plan=plan, summary=summary,
            input_src=_data_uri(plan.image),
            output_src=_data_uri(last.image_png) if last.image_png else "",
            waterfall=svg.waterfall(last.phases, last.round_trip_ms),
            step_chart=(svg.step_time_chart(summary.step_ms, summary.steps)
                        if len(plan.threads) > 1 else ""),
            speedup_chart=(svg.speedup_chart(summary.speedups, summary.parallel_fraction)
                           if len(summary.speedups) > 1 else ""))

    @router.post("/console/annotate", response_class=HTMLResponse)
    def annotate_fragment(body: AnnotateBody) -> HTMLResponse:
        return HTMLResponse(annotate(body.text, body.errors))

    @router.get("/console/samples/{name}")
    def sample_file(name: str) -> FileResponse:
        if name not in samples():
            raise HTTPException(404, f"no sample {name!r}")
        from topology.service.console.run import SAMPLES_DIR

        return FileResponse(SAMPLES_DIR / name)

    return router


def _data_uri(data: bytes) -> str:
    kind = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"

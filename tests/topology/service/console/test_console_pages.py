"""The web console's pages and fragments: served at /, offline (no CDN), same auth as the API,
validation errors beside their field, Run form checks naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from topology_fixtures import api_client

from stepsvc.step.config import StepSpec
from topology.backend import ApplyResult, PipelineStatus, StepStatus
from topology.pipeline.graph import Pipeline
from topology.service.app import create_app
from topology.service.console.jsonview import annotate
from topology.service.console.run import RunRefused, run_plan, samples, thread_choices
from topology.service.console.svg import GraphStep, pipeline_graph
from topology.service.settings import Settings

TOKEN = "console-token-for-tests-0123456789"
GRAPH = (StepSpec(id=0, type="classify", next_step=[1, 2], preferred_next=1,
                  route={"blurry": 2}),
         StepSpec(id=1, type="grayscale", next_step=[3]),
         StepSpec(id=2, type="deblur", params={"sigma": 1.5}, next_step=[3]),
         StepSpec(id=3, type="resize", params={"scale": 0.5}))


class StaticBackend:
    """One deployed-looking pipeline and no processes: enough for the pages."""

    name = "local"
    namespace = "default"

    def __init__(self) -> None:
        self.pipelines = {"demo": PipelineStatus(
            pipeline_id="demo", namespace="default", fingerprint="f", entrypoint="127.0.0.1:1",
            steps=tuple(StepStatus(step_id=s.id, type=s.type, ready=True, ready_replicas=1,
                                   replicas=1, address=f"127.0.0.1:{5000 + s.id}")
                        for s in GRAPH),
            graph=GRAPH, entry_step=0)}

    def apply(self, pipeline: Pipeline) -> ApplyResult:
        raise NotImplementedError

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        return self.pipelines.get(pipeline_id)

    def list_pipelines(self) -> list[PipelineStatus]:
        return list(self.pipelines.values())

    def delete(self, pipeline_id: str) -> bool:
        return self.pipelines.pop(pipeline_id, None) is not None

    def close(self) -> None:
        pass


@pytest.fixture()
def app(tmp_path: Path) -> Any:
    return create_app(Settings(state_dir=tmp_path, token=TOKEN,
                               jaeger_url="http://jaeger:16686"), StaticBackend())


@pytest.fixture()
def reader(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def test_console_is_served_at_the_root_with_every_pipeline_drawn(reader: TestClient) -> None:
    page = reader.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "#0 classify" in page.text
    assert "preferred_next" in page.text and "route: blurry" in page.text
    assert "ENTRY" in page.text
    assert "Create a pipeline" in page.text


def test_console_needs_nothing_from_another_host(reader: TestClient) -> None:
    for path in ("/", "/console/pipelines/demo"):
        html = reader.get(path).text
        external = re.findall(r"""(?:src|href)=["'](?:https?:)?//[^"']+""", html)
        assert external == [], external
    assert reader.get("/console/static/console.js").status_code == 200
    assert reader.get("/console/static/console.css").status_code == 200


def test_pipeline_page_shows_steps_run_form_and_live_panel(reader: TestClient) -> None:
    page = reader.get("/console/pipelines/demo").text
    assert "127.0.0.1:5002" in page  # addresses
    assert 'name="threads"' in page and 'name="passes"' in page and 'name="runs"' in page
    for name in samples():
        assert f"/console/samples/{name}" in page
    assert 'id="live"' in page
    assert "&#34;route&#34;: {" in page  # the Replace editor starts from the deployed graph


def test_unknown_pipeline_page_is_404(reader: TestClient) -> None:
    assert reader.get("/console/pipelines/nope").status_code == 404


def test_run_needs_the_token_like_every_write(reader: TestClient) -> None:
    reply = reader.post("/console/pipelines/demo/run", data={"sample": samples()[0],
                                                             "threads": ["1"]})
    assert reply.status_code == 401


def test_run_form_errors_name_the_field(app: Any) -> None:
    with api_client(app) as client:
        reply = client.post("/console/pipelines/demo/run",
                            data={"sample": samples()[0], "threads": ["999"], "runs": "1"})
        assert reply.status_code == 422
        assert 'data-field="threads"' in reply.text
        reply = client.post("/console/pipelines/demo/run",
                            files={"image": ("x.png", b"not an image", "image/png")},
                            data={"threads": ["1"]})
        assert reply.status_code == 422
        assert 'data-field="image"' in reply.text


def test_photo_uploads_may_exceed_the_api_body_limit_but_api_bodies_may_not(app: Any) -> None:
    big = b"\0" * (2 << 20)
    with api_client(app) as client:
        api = client.post("/pipeline", content=big, headers={"Content-Type": "application/json"})
        assert api.status_code == 413
        run = client.post("/console/pipelines/demo/run",
                          files={"image": ("big.png", big, "image/png")}, data={"threads": ["1"]})
        assert run.status_code == 422  # read and refused as "not an image", not as too large
        assert 'data-field="image"' in run.text


def test_annotate_puts_each_error_beside_the_field_it_names(reader: TestClient) -> None:
    text = json.dumps({"name": "x", "steps": [{"type": "grayscale"}, {"type": "warp"}]})
    reply = reader.post("/console/annotate", json={"text": text, "errors": [
        {"loc": ["body", "steps", 1, "type"], "msg": "unknown step type 'warp'"}]})
    line = next(li for li in reply.text.split("<span class='line") if "field-error" in li)
    assert '&quot;type&quot;: &quot;warp&quot;' in line and "unknown step type" in line


def test_annotate_reports_json_syntax_errors_at_their_line() -> None:
    html = annotate('{\n  "name": "x",\n  "steps": [,]\n}', [])
    assert "not JSON" in html and "line 3" in html
    assert "class='line error'><span class='code'>  &quot;steps&quot;: [,]" in html


def test_annotate_lists_errors_whose_field_is_not_in_the_document() -> None:
    html = annotate('{"steps": []}', [{"loc": ["body", "name"], "msg": "name is required"}])
    assert "<li>name: name is required</li>" in html


def test_graph_draws_an_edge_label_per_route_and_marks_the_entry() -> None:
    steps = [GraphStep(id=s.id, type=s.type, params=s.params, next_step=s.next_step,
                       preferred_next=s.preferred_next, route=s.route) for s in GRAPH]
    svg = pipeline_graph(steps, 0)
    assert svg.count("class='step'") == 4
    assert svg.count("<path d='M") - 1 == 4  # 0->1, 0->2, 1->3, 2->3 (and the arrowhead)
    assert "route: blurry" in svg and "preferred_next" in svg and "ENTRY" in svg
    assert "sigma=1.5" in svg


def test_graph_escapes_what_users_typed() -> None:
    svg = pipeline_graph([GraphStep(id=0, type="<script>", params={"a": "'x'"}, next_step=[],
                                    preferred_next=None, route={})], 0)
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_thread_choices_double_up_to_the_cores() -> None:
    assert thread_choices(6) == [1, 2, 4, 6]
    assert thread_choices(1) == [1]
    assert thread_choices(8) == [1, 2, 4, 8]


def test_run_plan_refuses_too_many_requests_naming_runs() -> None:
    with pytest.raises(RunRefused) as refused:
        run_plan(image=None, image_name="", sample=samples()[0], threads=["1", "2", "4", "8"],
                 passes="1", runs="20", cores=8)
    assert refused.value.field == "runs"
    plan = run_plan(image=None, image_name="", sample=samples()[0], threads=["2", "1", "2"],
                    passes="3", runs="2", cores=2)
    assert plan.threads == (1, 2) and plan.passes == 3 and plan.requests == 4


def test_live_fragment_says_why_it_has_no_numbers_without_metrics_endpoints(
        reader: TestClient) -> None:
    live = reader.get("/console/pipelines/demo/live")
    assert live.status_code == 200
    assert "stepchain top --target" in live.text
    advice = reader.get("/pipeline/demo/advice").json()
    assert advice["steps"] == [] and "*" in advice["errors"]


def test_jaeger_url_must_be_http() -> None:
    from topology.service.settings import settings_from

    assert settings_from({"jaeger_url": "http://jaeger:16686/"}, {}).jaeger_url == \
        "http://jaeger:16686"
    with pytest.raises(ValueError, match="--jaeger-url"):
        settings_from({"jaeger_url": "jaeger:16686"}, {})
    assert settings_from({}, {"STEPCHAIN_JAEGER_URL": "https://j"}).jaeger_url == "https://j"


def test_waterfall_starts_each_step_inside_its_callers_forward() -> None:
    from topology.service.console.svg import Phases, waterfall

    steps = [Phases(0, "classify", queue=1, decode=2, kernel=3, forward=40, encode=0,
                    total=46),
             Phases(1, "blur", queue=0, decode=0, kernel=30, forward=0, encode=4, total=34)]
    svg = waterfall(steps, round_trip_ms=50)
    xs = [float(x) for x in re.findall(r"class='phase (?:\w+)' x='([\d.]+)'", svg)]
    # classify: queue, decode, kernel, forward; blur: kernel, encode
    assert len(xs) == 6
    assert xs[1] < xs[2] < xs[3] < xs[4] < xs[5]
    assert xs[4] > xs[3]  # blur's kernel starts after classify's kernel, inside its forward
    assert "round trip 50.0 ms" in svg


def test_every_command_in_the_console_docs_is_accepted_by_the_cli() -> None:
    import shlex

    from stepsvc.cli import build_parser

    docs = (Path(__file__).resolve().parents[4] / "docs" / "console.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", docs, re.S)
    lines = [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines()]
    # Commands, not what they print ("stepchain topology serve: http://...").
    commands = [line.split(" #")[0].strip() for line in lines
                if line.startswith("stepchain ") and ": " not in line]
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # SystemExit on a bad flag
        assert callable(args.func), command

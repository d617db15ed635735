"""The topology service's own Prometheus metrics on ``GET /metrics``: requests by route
template, rejections by reason, backend calls and errors, the pipeline and step-process gauges.

Scrapes are parsed with prometheus_client's own parser, as Prometheus would read them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from topology_fixtures import RunningKmock, api_client, kmock_server  # noqa: F401  (fixture)

from topology.kube.backend import KubernetesBackend
from topology.kube.objects import RenderOptions
from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
DEMO = json.loads((ROOT / "examples" / "pipeline.json").read_text())
TOKEN = "s3cret-token-for-tests-0123456789"
REQUESTS = "stepchain_topology_requests_total"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of ``/metrics`` keyed by (sample name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a series that is not exposed reads as absent (KeyError)."""
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def increments(before: Samples, after: Samples, name: str) -> dict[tuple[str, ...], float]:
    """How much each series of `name` grew, keyed by its label values in label-name order."""
    grown = {}
    for labels, v in series(after, name).items():
        delta = v - before.get((name, labels), 0.0)
        if delta:
            grown[tuple(v for _, v in sorted(labels))] = delta
    return grown


@pytest.fixture()
def namespace() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def kube_api(kmock_server: RunningKmock, namespace: str) -> Iterator[TestClient]:  # noqa: F811
    """The service on the Kubernetes backend against kmock: writes apply without processes."""
    backend = KubernetesBackend(kmock_server.api_client(), RenderOptions(namespace=namespace))
    with api_client(create_app(Settings(namespace=namespace), backend)) as client:
        yield client


@pytest.fixture()
def local_api(tmp_path: Path) -> Iterator[TestClient]:
    with api_client(create_app(Settings(state_dir=tmp_path), LocalBackend(tmp_path))) as client:
        yield client


def test_metrics_are_served_as_prometheus_text_outside_the_openapi_document(
        local_api: TestClient) -> None:
    response = local_api.get("/metrics")
    assert response.status_code == 200
    # Prometheus' text exposition format (the version is prometheus_client's).
    assert response.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"stepchain_topology_requests", "stepchain_topology_request_duration_seconds",
            "stepchain_topology_rejections", "stepchain_topology_backend_operation_seconds",
            "stepchain_topology_backend_errors", "stepchain_topology_pipelines",
            "stepchain_topology_step_processes", "process_resident_memory_bytes"} <= names
    assert "/metrics" not in local_api.get("/openapi.json").json()["paths"]


def test_requests_are_counted_exactly_by_method_route_template_and_status(
        kube_api: TestClient) -> None:
    before = scrape(kube_api)
    assert kube_api.post("/pipeline", json=DEMO).status_code == 201
    assert kube_api.post("/pipeline", params={"dry_run": "true"}, json=DEMO).status_code == 200
    assert kube_api.post("/pipeline", json={"steps": [{"type": "sepia"}]}).status_code == 422
    assert kube_api.get("/pipeline/demo").status_code == 200
    assert kube_api.get("/pipeline/nothing").status_code == 404
    assert kube_api.get("/no/such/path").status_code == 404
    assert kube_api.delete("/pipeline/demo").status_code == 200
    after = scrape(kube_api)
    # (method, route, status): the scrapes themselves are not counted.
    assert increments(before, after, REQUESTS) == {
        ("POST", "/pipeline", "201"): 1, ("POST", "/pipeline", "200"): 1,
        ("POST", "/pipeline", "422"): 1, ("GET", "/pipeline/{pipeline_id}", "200"): 1,
        ("GET", "/pipeline/{pipeline_id}", "404"): 1, ("GET", "unmatched", "404"): 1,
        ("DELETE", "/pipeline/{pipeline_id}", "200"): 1}
    # Each request is also one observation of the duration histogram, under the same route.
    assert increments(before, after, "stepchain_topology_request_duration_seconds_count") == {
        ("POST", "/pipeline"): 3, ("GET", "/pipeline/{pipeline_id}"): 2, ("GET", "unmatched"): 1,
        ("DELETE", "/pipeline/{pipeline_id}"): 1}


def test_route_label_is_the_template_never_the_raw_path(local_api: TestClient) -> None:
    for n in range(5):
        assert local_api.get(f"/pipeline/p{n}").status_code == 404
    assert local_api.get("/pipeline/Not_A_Name").status_code == 422  # refused by the pattern
    routes = {dict(labels)["route"] for labels in series(scrape(local_api), REQUESTS)}
    assert routes == {"/pipeline/{pipeline_id}"}


def test_rejections_are_counted_by_reason(kube_api: TestClient) -> None:
    before = scrape(kube_api)
    assert kube_api.post("/pipeline", json={"steps": []}).status_code == 422
    assert kube_api.post("/pipeline", content=b"{not json",
                         headers={"content-type": "application/json"}).status_code == 422
    assert kube_api.post("/pipeline", json=DEMO).status_code == 201
    changed = json.loads(json.dumps(DEMO))
    changed["steps"][3]["params"] = {"scale": 0.25}
    assert kube_api.post("/pipeline", json=changed).status_code == 409
    big = {"name": "p", "steps": [{"type": "blur", "x": "y" * (2 << 20)}]}
    assert kube_api.post("/pipeline", json=big).status_code == 413
    after = scrape(kube_api)
    assert increments(before, after, "stepchain_topology_rejections_total") == {
        ("validation",): 2, ("conflict",): 1, ("too_large",): 1}
    # Refused before routing, the 413 still carries its route template.
    assert increments(before, after, REQUESTS)[("POST", "/pipeline", "413")] == 1
    assert value(after, "stepchain_topology_rejections_total", reason="auth") == 0


def test_unauthenticated_write_is_a_rejection_and_metrics_need_no_token(tmp_path: Path) -> None:
    settings = Settings(host="0.0.0.0", token=TOKEN, state_dir=tmp_path)
    with TestClient(create_app(settings, LocalBackend(tmp_path))) as client:
        before = scrape(client)  # no Authorization header: reads are open
        assert client.post("/pipeline", params={"dry_run": "true"},
                           json=DEMO).status_code == 401
        assert client.delete("/pipeline/demo",
                             headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/pipeline", params={"dry_run": "true"}, json=DEMO,
                           headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        after = scrape(client)
    assert increments(before, after, "stepchain_topology_rejections_total") == {("auth",): 2}
    assert increments(before, after, REQUESTS) == {
        ("POST", "/pipeline", "401"): 1, ("DELETE", "/pipeline/{pipeline_id}", "401"): 1,
        ("POST", "/pipeline", "200"): 1}


@pytest.mark.slow
def test_pipelines_gauge_follows_create_and_delete(kube_api: TestClient) -> None:
    def pipelines() -> float:
        return value(scrape(kube_api), "stepchain_topology_pipelines")

    assert pipelines() == 0
    assert kube_api.post("/pipeline", json=DEMO).status_code == 201
    assert pipelines() == 1
    assert kube_api.post("/pipeline", json={"name": "other",
                                            "steps": [{"type": "edges"}]}).status_code == 201
    assert kube_api.post("/pipeline", json=DEMO).status_code == 200  # re-POST: still two
    assert pipelines() == 2
    assert kube_api.post("/pipeline", params={"dry_run": "true"},
                         json=DEMO | {"name": "dry"}).status_code == 200
    assert pipelines() == 2  # a dry run creates nothing
    assert kube_api.delete("/pipeline/demo").status_code == 200
    assert pipelines() == 1
    assert kube_api.delete("/pipeline/other").status_code == 200
    assert pipelines() == 0


def test_a_restarted_service_counts_the_pipelines_already_deployed(
        kmock_server: RunningKmock, namespace: str) -> None:  # noqa: F811
    def service() -> TestClient:
        backend = KubernetesBackend(kmock_server.api_client(),
                                    RenderOptions(namespace=namespace))
        return api_client(create_app(Settings(namespace=namespace), backend))

    with service() as first:
        assert first.post("/pipeline", json=DEMO).status_code == 201
    with service() as second:
        assert value(scrape(second), "stepchain_topology_pipelines") == 1


@pytest.mark.slow
def test_backend_operations_are_timed_per_operation(kube_api: TestClient) -> None:
    histogram = "stepchain_topology_backend_operation_seconds_count"
    before = scrape(kube_api)
    assert kube_api.post("/pipeline", json=DEMO).status_code == 201  # status, then apply
    assert kube_api.get("/pipelines").status_code == 200
    assert kube_api.delete("/pipeline/demo").status_code == 200
    after = scrape(kube_api)
    assert increments(before, after, histogram) == {
        ("kubernetes", "status"): 1, ("kubernetes", "apply"): 1, ("kubernetes", "list"): 1,
        ("kubernetes", "delete"): 1}
    assert increments(before, after, "stepchain_topology_backend_errors_total") == {}
    assert value(after, "stepchain_topology_backend_errors_total",
                 backend="kubernetes", operation="apply") == 0


def test_unreachable_kubernetes_api_counts_backend_errors(namespace: str) -> None:
    from kubernetes import client as k8s

    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    backend = KubernetesBackend(k8s.ApiClient(configuration), RenderOptions(namespace=namespace))
    with api_client(create_app(Settings(namespace=namespace), backend)) as api:
        assert api.post("/pipeline", json=DEMO).status_code == 502
        samples = scrape(api)
    errors = {dict(labels)["operation"]: v for labels, v in
              series(samples, "stepchain_topology_backend_errors_total").items()}
    # The startup list failed (the service still came up), then the POST's existence check.
    assert errors == {"list": 1, "status": 1, "apply": 0, "delete": 0}
    assert value(samples, REQUESTS, method="POST", route="/pipeline", status="502") == 1
    assert value(samples, "stepchain_topology_pipelines") == 0


def test_step_processes_gauge_counts_the_local_steps_running(local_api: TestClient) -> None:
    def processes() -> float:
        return value(scrape(local_api), "stepchain_topology_step_processes")

    assert processes() == 0
    one_step: dict[str, Any] = {"name": "solo", "steps": [{"type": "identity"}]}
    created = local_api.post("/pipeline", json=one_step)
    assert created.status_code == 201, created.text
    assert processes() == 1
    assert value(scrape(local_api), "stepchain_topology_pipelines") == 1
    assert local_api.delete("/pipeline/solo").status_code == 200
    assert processes() == 0


def test_kubernetes_backend_exposes_no_step_processes_gauge(kube_api: TestClient) -> None:
    assert not series(scrape(kube_api), "stepchain_topology_step_processes")

"""The topology API fuzzed from its own OpenAPI document (schemathesis): never a 500.

The service runs the Kubernetes backend against kmock's emulator, so generated pipelines that
happen to be valid are really applied (over HTTP) without starting any process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from topology_fixtures import RunningKmock, kmock_server  # noqa: F401  (fixture)

from topology.kube.backend import KubernetesBackend
from topology.kube.objects import RenderOptions
from topology.service.app import create_app
from topology.service.auth import auth_header
from topology.service.settings import Settings

#: Slow (over ~5 s each): schemathesis explores the whole API (minutes).
pytestmark = pytest.mark.slow

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_app(kmock_server: RunningKmock) -> Iterator[FastAPI]:  # noqa: F811
    backend = KubernetesBackend(kmock_server.api_client(), RenderOptions(namespace="fuzz"))
    yield create_app(Settings(namespace="fuzz"), backend)
    backend.close()


def operations(app: FastAPI) -> list[object]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["schema-conforming", "schema-violating"])
def test_no_generated_request_gets_a_server_error(fuzzed_app: FastAPI,
                                                  mode: GenerationMode) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    tried = 0
    for operation in operations(fuzzed_app):

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))  # type: ignore[attr-defined]
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers=auth_header(fuzzed_app.state.settings.token))
            seen[(f"{case.method} {case.path}", response.status_code)] += 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} answered {response.status_code}: "
                f"{response.text[:500]}\nbody: {case.body!r}")

        try:
            call()
            tried += 1
        except Unsatisfiable:
            continue  # e.g. no way to violate the schema of GET /healthz (no parameters)
    assert tried >= 4, f"too few operations could be fuzzed: {seen}"
    # Guard against a fuzz run that never reached the application logic.
    assert any(status in (404, 422) for _, status in seen), seen

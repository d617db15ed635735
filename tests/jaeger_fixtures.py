"""A real Jaeger v2 for tests (tests/jaeger_server.py), one per test session on free ports.

``jaeger`` starts the binary `make tools` built the first time a test asks for it and stops it
when the session ends. A missing binary fails the test with the command that builds it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from jaeger_server import Jaeger


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    server = Jaeger(workdir=tmp_path_factory.mktemp("jaeger"))
    try:
        server.start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


def query(server: Jaeger, path: str) -> tuple[int, Any]:
    """GET `path` of Jaeger's query API: (HTTP status, parsed JSON body)."""
    try:
        with urllib.request.urlopen(f"{server.query_url}{path}", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for_spans(server: Jaeger, trace_id: str, count: int, *, steps: int = 0,
                   timeout: float = 30.0) -> list[dict[str, Any]]:
    """The OTLP spans of `trace_id` from ``/api/v3/traces/{id}`` once at least `count` are
    there and, with `steps`, the server span of every step 0..steps-1: each process exports in
    batches of its own, so a count alone can be met by one step's spans before the next
    step's have arrived (a step's server span ends after its children: once it is there, so
    are they). Fails with what did arrive."""
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = query(server, f"/api/v3/traces/{trace_id}")
        if status == 200:
            spans = [dict(span, service=_service(rs))
                     for rs in body["result"]["resourceSpans"]
                     for ss in rs.get("scopeSpans", [])
                     for span in ss.get("spans", [])]
            if len(spans) >= count and set(range(steps)) <= _server_steps(spans):
                return spans
        time.sleep(0.3)
    raise AssertionError(f"Jaeger has {len(spans)} of {count} spans of {trace_id} after "
                         f"{timeout:.0f} s: {sorted(s['name'] for s in spans)}")


def _server_steps(spans: list[dict[str, Any]]) -> set[int]:
    """The ``stepchain.step_id`` of every server span among `spans`."""
    return {int(next(iter(attr["value"].values())))
            for span in spans if span.get("kind") in (2, "SPAN_KIND_SERVER")
            for attr in span.get("attributes", []) if attr["key"] == "stepchain.step_id"}


def _service(resource_spans: dict[str, Any]) -> str:
    for attr in resource_spans.get("resource", {}).get("attributes", []):
        if attr.get("key") == "service.name":
            return str(attr["value"].get("stringValue"))
    return "unknown"

"""Traces in a real Jaeger v2: `stepchain submit` through a chain of real step processes, every
process exporting with nothing but the standard OTEL_* variables pointed at Jaeger's OTLP port,
read back through Jaeger's query API (/api/v3/traces) and drawn by `stepchain trace show
--jaeger`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jaeger_fixtures import query, wait_for_spans
from jaeger_server import Jaeger
from PIL import Image as PILImage
from step_fixtures import ROOT, noisy_image, step_env
from telemetry_fixtures import TracedChain

#: Real processes and a real Jaeger: each test takes seconds.
pytestmark = pytest.mark.slow

STEPS = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 1.0}, "next_step": 1},
         {"id": 1, "type": "resize", "params": {"scale": 0.5}, "next_step": 2},
         {"id": 2, "type": "grayscale"}]
#: Step 2 refuses more pixels than this: a 96x128 input reaches it as 48x64 and fails there,
#: a 48x64 one (24x32 there) passes.
STEP2_MAX_PIXELS = 1000


def jaeger_env(jaeger: Jaeger) -> dict[str, str]:
    """What a user sets to send traces to Jaeger: its OTLP endpoint, nothing stepchain-specific
    (a short batch delay so the test does not wait the SDK's default 5 s)."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def chain(jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedChain]:
    procs = TracedChain(tmp_path_factory.mktemp("chain"), STEPS, jaeger_env(jaeger),
                        pipeline_id="jaeger",
                        extra_args={2: ["--max-pixels", str(STEP2_MAX_PIXELS)]})
    yield procs
    procs.stop()


def stepchain(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", *args], cwd=ROOT,
                          env={**os.environ, **step_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def submitted(chain: TracedChain, jaeger: Jaeger,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `stepchain submit --json` through the chain: its JSON answer."""
    tmp = tmp_path_factory.mktemp("submit")
    image = tmp / "in.png"
    PILImage.fromarray(noisy_image(48, 64)).save(image)
    result = stepchain("submit", str(image), "--target", chain.address(0), "--out",
                       str(tmp / "out.png"), "--json", env=jaeger_env(jaeger))
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert len(answer["trace_id"]) == 32  # --json: the trace id is in the answer
    assert np.asarray(PILImage.open(tmp / "out.png")).shape == (24, 32)
    return answer


def _attr(span: dict[str, Any], key: str) -> Any:
    for attr in span.get("attributes", []):
        if attr["key"] == key:
            value = attr["value"]
            return next(iter(value.values())) if value else None
    return None


def _depths(spans: list[dict[str, Any]]) -> dict[str, int]:
    """Depth of every span in its trace, from the parent links Jaeger stored."""
    parents = {s["spanId"]: s.get("parentSpanId") or None for s in spans}
    depths: dict[str, int] = {}
    for span_id in parents:
        depth, cursor = 0, parents[span_id]
        while cursor in parents:
            depth, cursor = depth + 1, parents[cursor]
        depths[span_id] = depth
    return depths


def test_a_submitted_request_is_one_trace_with_a_server_span_per_executed_step(
        submitted: dict[str, Any], jaeger: Jaeger) -> None:
    trace_id = submitted["trace_id"]
    # submit's root span + per step: server span and its decode/kernel/forward children.
    spans = wait_for_spans(jaeger, trace_id, count=1 + 3 * 3, steps=3)
    assert {s["traceId"] for s in spans} == {trace_id}
    servers = [s for s in spans if s["kind"] in (2, "SPAN_KIND_SERVER")]
    assert sorted(int(_attr(s, "stepchain.step_id")) for s in servers) == [0, 1, 2]
    assert {_attr(s, "stepchain.step_type") for s in servers} == \
        {"gaussian_blur", "resize", "grayscale"}
    assert {_attr(s, "stepchain.pipeline_id") for s in servers} == {"jaeger"}
    roots = [s for s in spans if not s.get("parentSpanId")]
    assert [(r["name"], r["service"]) for r in roots] == [("stepchain submit", "stepchain-submit")]
    # Every step's server span hangs below the previous hop (the chain, not three trees).
    depths = _depths(spans)
    by_step = {int(_attr(s, "stepchain.step_id")): depths[s["spanId"]] for s in servers}
    assert by_step[0] < by_step[1] < by_step[2]
    # The per-step timings of the answer name the same steps.
    assert [t["step_id"] for t in submitted["timings"]] == [0, 1, 2]


def test_jaeger_lists_the_submit_client_and_every_step_as_services(
        submitted: dict[str, Any], jaeger: Jaeger) -> None:
    wait_for_spans(jaeger, submitted["trace_id"], count=10, steps=3)
    status, body = query(jaeger, "/api/v3/services")
    assert status == 200
    assert {"stepchain-submit", "jaeger-step-0", "jaeger-step-1", "jaeger-step-2"} <= \
        set(body["services"])


def test_trace_show_draws_the_trace_from_jaeger_with_jaegers_parent_links(
        submitted: dict[str, Any], jaeger: Jaeger) -> None:
    trace_id = submitted["trace_id"]
    spans = wait_for_spans(jaeger, trace_id, count=10, steps=3)
    result = stepchain("trace", "show", trace_id, "--jaeger", jaeger.query_url, "--ascii",
                       "--width", "200")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id} · {len(spans)} spans · ")
    assert "services: jaeger-step-0, jaeger-step-1, jaeger-step-2, stepchain-submit" in lines[0]
    rows = lines[2:]
    assert len(rows) == len(spans)  # one row per span, nothing incomplete
    assert rows[0].startswith("stepchain submit ")
    depths = _depths(spans)
    for span in spans:
        step = _attr(span, "stepchain.step_id")
        if span["kind"] not in (2, "SPAN_KIND_SERVER"):
            continue
        row = next(r for r in rows if f"step {step} " in r and "(server)" in r)
        indent = len(row) - len(row.lstrip(" "))
        assert indent == 2 * depths[span["spanId"]], row


def test_trace_show_draws_a_failed_step_from_jaeger_with_its_error(
        chain: TracedChain, jaeger: Jaeger, tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    PILImage.fromarray(noisy_image(96, 128)).save(image)
    failed = stepchain("submit", str(image), "--target", chain.address(0), "--out",
                       str(tmp_path / "out.png"), env=jaeger_env(jaeger))
    assert failed.returncode == 1
    assert "RESOURCE_EXHAUSTED" in failed.stderr
    trace_id = failed.stderr.split("trace: ")[1].split()[0]
    wait_for_spans(jaeger, trace_id, count=1 + 3 * 3, steps=3)
    shown = stepchain("trace", "show", trace_id, "--jaeger", jaeger.query_url + "/", "--ascii",
                      "--width", "200")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert " error(s)" in lines[0]
    server_row = next(i for i, line in enumerate(lines)
                      if "step 2 grayscale" in line and "(server)" in line)
    assert lines[server_row].endswith("ERROR")
    assert lines[server_row + 1].strip().startswith("error: RESOURCE_EXHAUSTED")


def test_trace_show_says_when_jaeger_has_no_such_trace(jaeger: Jaeger) -> None:
    result = stepchain("trace", "show", "f" * 32, "--jaeger", jaeger.query_url, "--wait", "0.5")
    assert result.returncode == 1
    assert f"Jaeger at {jaeger.query_url} has no trace {'f' * 32}" in result.stderr


def test_trace_show_names_an_unreachable_jaeger(tmp_path: Path) -> None:
    result = stepchain("trace", "show", "f" * 32, "--jaeger", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach Jaeger query API" in result.stderr

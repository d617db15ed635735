"""`stepchain trace show` waits for a whole trace, and says what is missing when it is not.

Spans reach a trace source in batches, step by step. The delayed exporter here is the real
one: each "step" has its own OpenTelemetry SDK provider with the real OTLP JSON file exporter
behind a ``BatchSpanProcessor``, one of them configured (``OTEL_BSP_SCHEDULE_DELAY``) to export
seconds later than the other. With Jaeger the same
happens for real: the delayed provider exports to a real Jaeger's OTLP port and ``trace show
--jaeger`` polls its query API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jaeger_server import Jaeger
from opentelemetry.trace import SpanKind

from stepsvc.cli import main
from stepsvc.client.trace.completeness import missing_parts
from stepsvc.client.trace.show import SpanRecord
from stepsvc.telemetry import Tracing, current_trace_id

PROCESS = "stepchain.v1.StepService/Process"


def record(span_id: str, parent: str | None, name: str, *, kind: str = "INTERNAL",
           service: str = "demo-step-0", status: str = "UNSET", **attributes: Any) -> SpanRecord:
    return SpanRecord(trace_id="ab" * 16, span_id=span_id, parent_id=parent, name=name,
                      service=service, start_ns=1, end_ns=2, kind=kind, status=status,
                      attributes={f"stepchain.{k}": v for k, v in attributes.items()})


def step_spans(step: int, parent: str | None, *, next_step: int | None = None
               ) -> list[SpanRecord]:
    """A step's server span, its kernel phase, and (when it forwards) forward > client."""
    attributes: dict[str, Any] = {"pipeline_id": "demo", "step_id": step}
    if next_step is not None:
        attributes["next_step"] = next_step
    service = f"demo-step-{step}"
    spans = [record(f"s{step}", parent, PROCESS, kind="SERVER", service=service, **attributes),
             record(f"k{step}", f"s{step}", "kernel", service=service)]
    if next_step is not None:
        spans += [record(f"f{step}", f"s{step}", "forward", service=service),
                  record(f"c{step}", f"f{step}", PROCESS, kind="CLIENT", service=service)]
    return spans


def test_a_whole_route_with_every_parent_is_complete() -> None:
    spans = [*step_spans(0, None, next_step=1), *step_spans(1, "c0", next_step=2),
             *step_spans(2, "c1")]
    assert missing_parts(spans) == []


def test_phases_whose_server_span_has_not_arrived_name_the_missing_parent() -> None:
    spans = [record("q", "s9", "queue", service="demo-step-1"),
             record("k", "s9", "kernel", service="demo-step-1")]
    assert missing_parts(spans) == [
        "the parent span s9 of kernel [demo-step-1], queue [demo-step-1]"]


def test_a_step_of_the_route_not_there_yet_is_named_once() -> None:
    spans = [*step_spans(0, None, next_step=1), *step_spans(1, "c0", next_step=2)]
    assert missing_parts(spans) == ["step 2 (step 1 forwarded to it)"]


def test_a_callers_client_span_without_its_server_span_is_incomplete() -> None:
    submit = [record("r", None, "stepchain submit", service="stepchain-submit"),
              record("c", "r", PROCESS, kind="CLIENT", service="stepchain-submit")]
    assert missing_parts(submit) == [
        "the server span answering StepService/Process [stepchain-submit]"]
    # A call that failed (the step was down, failover went elsewhere) has no server span.
    failed = [*submit[:1], record("c", "r", PROCESS, kind="CLIENT", status="ERROR")]
    assert missing_parts(failed) == []


# -- the CLI against a file the steps' delayed exporters write to ------------------------------


@pytest.fixture
def delayed_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[Path, str, Tracing]]:
    """A two-step trace: step 0 exports within 50 ms, step 1 (the delayed exporter) after 1.5 s.

    Returns (file, trace id, step 1's tracing) once step 0's spans are in the file.
    """
    path = tmp_path / "spans.jsonl"

    def tracing(step: int, delay_ms: int) -> Tracing:
        # The SDK's BatchSpanProcessor reads OTEL_BSP_* from the process environment.
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", str(delay_ms))
        return Tracing.from_env(f"demo-step-{step}", env={"STEPCHAIN_TRACE_FILE": str(path)})

    step0, step1 = tracing(0, 50), tracing(1, 1500)
    attributes = {"stepchain.pipeline_id": "demo"}
    with step0.span(PROCESS, {**attributes, "stepchain.step_id": 0, "stepchain.next_step": 1},
                    kind=SpanKind.SERVER):
        trace_id = current_trace_id()
        with step0.span("kernel"):
            pass
        with (step0.span("forward"), step0.span(PROCESS, kind=SpanKind.CLIENT),
              step1.span(PROCESS, {**attributes, "stepchain.step_id": 1}, kind=SpanKind.SERVER),
              step1.span("kernel")):
            pass
    step0.force_flush()
    step0.shutdown()
    try:
        yield path, trace_id, step1
    finally:
        step1.shutdown()


def test_show_waits_for_the_delayed_steps_spans_and_draws_the_whole_trace(
        delayed_trace: tuple[Path, str, Tracing], capsys: pytest.CaptureFixture[str]) -> None:
    path, trace_id, _ = delayed_trace
    started = time.monotonic()
    assert main(["trace", "show", trace_id, "--file", str(path), "--wait", "20",
                 "--width", "120"]) == 0
    waited = time.monotonic() - started
    out = capsys.readouterr().out
    assert out.startswith(f"trace {trace_id} · 6 spans")
    assert out.count("(server)") == 2 and "step 1" in out
    assert "incomplete" not in out
    assert 0.5 < waited < 20  # it waited for the delayed batch, and no longer than needed


def test_show_draws_what_arrived_with_what_is_missing_when_the_wait_runs_out(
        delayed_trace: tuple[Path, str, Tracing], capsys: pytest.CaptureFixture[str]) -> None:
    path, trace_id, _ = delayed_trace
    assert main(["trace", "show", trace_id, "--file", str(path), "--wait", "0",
                 "--width", "120"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"trace {trace_id} · 4 spans")
    assert lines[-1].startswith("incomplete: missing step 1 (step 0 forwarded to it) — "
                                "without waiting (--wait 0)")
    # The same with the latest trace of the file, and a short wait that runs out.
    assert main(["trace", "show", str(path), "--wait", "0.4", "--width", "120"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "incomplete: missing step 1 (step 0 forwarded to it) — after waiting 0.4 s")


def test_a_negative_wait_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "show", "a" * 32, "--file", str(tmp_path / "x"), "--wait",
                 "-1"]) == 2
    assert "--wait must be >= 0 seconds, got -1" in capsys.readouterr().err


# -- Jaeger: the real one (tests/jaeger_server.py) answers more of the trace as batches arrive --


@pytest.mark.slow
def test_show_with_jaeger_polls_until_every_step_of_the_route_is_there(
        jaeger: Jaeger, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def tracing(step: int, delay_ms: int) -> Tracing:
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", str(delay_ms))
        return Tracing.from_env(f"demo-step-{step}", env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc_endpoint})

    step0, step1 = tracing(0, 50), tracing(1, 2500)
    attributes = {"stepchain.pipeline_id": "demo"}
    with step0.span(PROCESS, {**attributes, "stepchain.step_id": 0, "stepchain.next_step": 1},
                    kind=SpanKind.SERVER):
        trace_id = current_trace_id()
        with (step0.span("forward"), step0.span(PROCESS, kind=SpanKind.CLIENT),
              step1.span(PROCESS, {**attributes, "stepchain.step_id": 1}, kind=SpanKind.SERVER)):
            pass
    step0.shutdown()  # step 0's spans are in Jaeger; step 1's batch follows seconds later
    try:
        started = time.monotonic()
        assert main(["trace", "show", trace_id, "--jaeger", jaeger.query_url, "--wait", "20",
                     "--width", "120"]) == 0
        waited = time.monotonic() - started
    finally:
        step1.shutdown()
    out = capsys.readouterr().out
    assert out.startswith(f"trace {trace_id} · 4 spans") and "incomplete" not in out
    assert out.count("(server)") == 2
    assert 0.5 < waited < 20

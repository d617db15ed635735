"""A caller that cancels its call is counted as CANCELLED, apart from the step's errors: in the
step's metrics (``grpc_code="CANCELLED"``, never UNKNOWN) and in its trace (the server span is
not an error; an event says the caller went away).

Users stopped at a ramp-down cancel their calls wherever those are: waiting for a slot, in the
kernel, or while the step waits on its next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
from step_fixtures import MutableDiscovery, noisy_image, pipeline, raw_request
from stepchain.v1 import step_pb2, step_pb2_grpc
from telemetry_fixtures import sample, scrape

from stepsvc.client.trace.show import read_otlp_json_lines
from stepsvc.step.server import ServerSettings, StepServer, build_server
from stepsvc.telemetry import Tracing
from stepsvc.telemetry.metrics import StepMetrics
from stepsvc.telemetry.observer import StepTelemetry

#: A request that keeps a step busy for a while (a few hundred ms here, more under load).
SLOW = step_pb2.Overrides(passes=100)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.01)


def start_step(step_id: int, steps: list[dict[str, object]], discovery: MutableDiscovery,
               spans: Path, settings: ServerSettings) -> tuple[StepServer, StepTelemetry, int]:
    cfg = pipeline(step_id, steps)
    telemetry = StepTelemetry(
        cfg, Tracing.from_env(f"step-{step_id}", env={"STEPCHAIN_TRACE_FILE": str(spans)}),
        StepMetrics("p1", step_id, cfg.this_step().type))
    server = build_server(cfg, discovery, settings, interceptors=telemetry.server_interceptors(),
                          client_interceptors=telemetry.client_interceptors(),
                          observer=telemetry)
    server.start()
    discovery.mapping[step_id] = server.address
    return server, telemetry, telemetry.start_metrics_http(0, "127.0.0.1")


def test_a_call_cancelled_while_waiting_for_a_slot_is_cancelled_not_unknown(
        tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    steps: list[dict[str, object]] = [{"id": 1, "type": "gaussian_blur",
                                       "params": {"sigma": 2.0}}]
    discovery = MutableDiscovery()
    server, telemetry, port = start_step(
        1, steps, discovery, spans, ServerSettings(host="127.0.0.1", port=0, max_inflight=1,
                                                   max_queue_wait_ms=-1))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = step_pb2_grpc.StepServiceStub(channel)
            busy = stub.Process.future(
                raw_request(noisy_image(512, 512), overrides=SLOW), timeout=120)
            wait_until("busy slot", lambda: server.servicer.admission.inflight == 1)
            waiting = stub.Process.future(raw_request(noisy_image()), timeout=120)
            wait_until("queued call", lambda: server.servicer.admission.queued == 1)
            waiting.cancel()
            busy.result()
            wait_until("the cancelled call counted", lambda: sample(
                scrape(port), "stepchain_step_requests_total", pipeline_id="p1", step_id="1",
                step_type="gaussian_blur", grpc_code="CANCELLED") == 1)
        samples = scrape(port)
    finally:
        server.stop(0)
        telemetry.close()
    labels = {"pipeline_id": "p1", "step_id": "1", "step_type": "gaussian_blur"}
    assert sample(samples, "stepchain_step_requests_total", **labels, grpc_code="OK") == 1
    assert sample(samples, "stepchain_step_requests_total", **labels, grpc_code="UNKNOWN") == 0
    server_spans = [s for s in read_otlp_json_lines(spans) if s.kind == "SERVER"]
    cancelled = [s for s in server_spans if s.attributes.get("rpc.grpc.status_code") == 1]
    assert len(cancelled) == 1 and len(server_spans) == 2
    assert cancelled[0].status == "UNSET"  # not an error of the step


def test_a_call_cancelled_while_the_step_waits_on_its_next_step_is_cancelled(
        tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    steps: list[dict[str, object]] = [
        {"id": 1, "type": "identity", "next_step": 2},
        {"id": 2, "type": "gaussian_blur", "params": {"sigma": 2.0}}]
    discovery = MutableDiscovery()
    settings = ServerSettings(host="127.0.0.1", port=0)
    second, second_telemetry, _ = start_step(2, steps, discovery, spans, settings)
    first, first_telemetry, port = start_step(1, steps, discovery, spans, settings)
    try:
        with grpc.insecure_channel(first.address) as channel:
            call = step_pb2_grpc.StepServiceStub(channel).Process.future(
                raw_request(noisy_image(512, 512), overrides=SLOW), timeout=120)
            wait_until("the kernel of step 2 running",
                       lambda: second.servicer.admission.inflight == 1)
            call.cancel()
            wait_until("step 1 done with the call", lambda: sum(
                value for (name, labels), value in scrape(port).items()
                if name == "stepchain_step_requests_total") == 1)
        samples = scrape(port)
    finally:
        first.stop(0)
        second.stop(0)
        first_telemetry.close()
        second_telemetry.close()
    labels = {"pipeline_id": "p1", "step_id": "1", "step_type": "identity"}
    # The step's answer reached nobody: not OK, and not an error of the step either.
    assert sample(samples, "stepchain_step_requests_total", **labels, grpc_code="CANCELLED") == 1
    assert sample(samples, "stepchain_step_requests_total", **labels, grpc_code="OK") == 0

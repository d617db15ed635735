"""Tracing configuration from OTEL_* variables, tracing off, and the local OTLP JSON file.

Step servers run inside the test process here (build_server on loopback port 0).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from step_fixtures import MutableDiscovery, noisy_image, pipeline, raw_request
from stepchain.v1 import step_pb2_grpc
from telemetry_fixtures import serve_traced

import native
from stepsvc.client.trace.show import read_otlp_json_lines, select_trace
from stepsvc.step.server import StepServer
from stepsvc.telemetry import (
    TelemetryConfigError,
    Tracing,
    current_trace_id,
    tracing_config_from_env,
)
from stepsvc.telemetry.metrics import StepMetrics
from stepsvc.telemetry.observer import StepTelemetry

TWO_STEPS = [{"id": 1, "type": "grayscale", "next_step": 2}, {"id": 2, "type": "identity"}]


# -- configuration (pure) ---------------------------------------------------------------------


def test_nothing_configured_means_tracing_off() -> None:
    config = tracing_config_from_env({}, "svc")
    assert not config.enabled
    assert config.resource_attributes == {"service.name": "svc"}


def test_an_otlp_endpoint_alone_turns_on_otlp_over_grpc() -> None:
    config = tracing_config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, "s")
    assert config.enabled
    assert (config.exporters, config.otlp_protocol, config.otlp_endpoint) == (
        ("otlp",), "grpc", "http://jaeger:4317")


def test_http_protobuf_appends_the_traces_path_unless_a_traces_endpoint_is_given() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert tracing_config_from_env(env, "s").otlp_endpoint == "http://collector:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://other:4318/custom"
    assert tracing_config_from_env(env, "s").otlp_endpoint == "http://other:4318/custom"


def test_exporter_none_and_sdk_disabled_turn_tracing_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}
    assert not tracing_config_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}, "s").enabled
    assert not tracing_config_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}, "s").enabled


def test_service_name_and_resource_attributes_come_from_the_standard_variables() -> None:
    config = tracing_config_from_env({
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=dev,team=image%20lab",
        "OTEL_SERVICE_NAME": "blur-step"}, "default-name")
    assert config.resource_attributes == {"service.name": "blur-step",
                                          "deployment.environment": "dev", "team": "image lab"}


def test_sampler_and_ratio_are_read_and_checked() -> None:
    config = tracing_config_from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                      "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "s")
    assert (config.sampler, config.sampler_arg) == ("parentbased_traceidratio", 0.25)


@pytest.mark.parametrize(("env", "words"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'; allowed: otlp, console"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "allowed: grpc, http/protobuf"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
     "a number from 0.0 to 1.0"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "'team' is not key=value"),
])
def test_bad_values_are_refused_naming_the_variable_and_what_is_allowed(
        env: dict[str, str], words: str) -> None:
    with pytest.raises(TelemetryConfigError) as info:
        tracing_config_from_env(env, "s")
    assert words in str(info.value)


# -- servers in-process -----------------------------------------------------------------------


def otel_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("OtelBatch"))


@contextmanager
def two_steps(tracing_first: Tracing, tracing_second: Tracing
              ) -> Iterator[tuple[list[StepServer], list[StepTelemetry]]]:
    """Steps 1 -> 2 in-process, each with its own telemetry."""
    discovery = MutableDiscovery()
    servers, telemetries = [], []
    try:
        for step_id, tracing in ((2, tracing_second), (1, tracing_first)):
            cfg = pipeline(step_id, TWO_STEPS)
            telemetry = StepTelemetry(cfg, tracing, StepMetrics("p1", step_id, "x"))
            server = serve_traced(cfg, discovery, telemetry)
            servers.append(server)
            telemetries.append(telemetry)
        yield servers[::-1], telemetries[::-1]
    finally:
        for server in servers:
            server.stop(0)
        for telemetry in telemetries:
            telemetry.close()


def test_tracing_off_starts_no_exporter_thread_and_requests_still_work() -> None:
    before = otel_threads()
    off = Tracing.from_env("off", env={})
    assert not off.enabled
    with two_steps(off, Tracing.from_env("off-too", env={})) as (servers, _):
        with grpc.insecure_channel(servers[0].address) as channel:
            img = noisy_image()
            response = step_pb2_grpc.StepServiceStub(channel).Process(raw_request(img),
                                                                      timeout=10)
        assert otel_threads() == before
    np.testing.assert_array_equal(
        np.frombuffer(response.image.data, np.uint8).reshape(48, 64, 1), native.grayscale(img))
    assert response.trace_id == ""  # nothing recorded, nothing to look up
    assert [t.step_id for t in response.timings] == [1, 2]


def test_a_step_with_tracing_off_passes_the_callers_trace_context_on(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {"STEPCHAIN_TRACE_FILE": str(spans_file)}
    client = Tracing.from_env("client", env=env)
    with two_steps(Tracing.from_env("off", env={}), Tracing.from_env("on", env=env)) as (
            servers, _):
        channel = client.intercept_channel(grpc.insecure_channel(servers[0].address))
        with client.span("root"):
            trace_id = current_trace_id()
            response = step_pb2_grpc.StepServiceStub(channel).Process(
                raw_request(noisy_image()), timeout=10)
        channel.close()
    client.shutdown()  # the "on" step was flushed when its telemetry closed
    assert response.trace_id == trace_id
    spans = select_trace(read_otlp_json_lines(spans_file), trace_id)
    by_name = {(s.service, s.name): s for s in spans}
    call = by_name[("client", "stepchain.v1.StepService/Process")]
    second = by_name[("on", "stepchain.v1.StepService/Process")]
    assert second.kind == "SERVER" and second.parent_id == call.span_id
    assert {s.service for s in spans} == {"client", "on"}  # step 1 recorded nothing


def test_trace_file_holds_one_otlp_json_request_per_line_with_hex_ids(tmp_path: Path) -> None:
    spans_file = tmp_path / "nested" / "spans.jsonl"
    tracing = Tracing.from_env("writer", env={"STEPCHAIN_TRACE_FILE": str(spans_file)})
    with tracing.span("outer", {"stepchain.step_id": 3}):
        trace_id = current_trace_id()
        with pytest.raises(ValueError), tracing.span("inner"):
            raise ValueError("bad sigma")
    tracing.shutdown()
    lines = spans_file.read_text().splitlines()
    assert lines
    docs = [json.loads(line) for line in lines]
    spans = [span for doc in docs for rs in doc["resourceSpans"]
             for ss in rs["scopeSpans"] for span in ss["spans"]]
    assert {s["traceId"] for s in spans} == {trace_id}
    inner = next(s for s in spans if s["name"] == "inner")
    outer = next(s for s in spans if s["name"] == "outer")
    assert inner["parentSpanId"] == outer["spanId"] and len(outer["spanId"]) == 16
    assert inner["status"] == {"code": 2, "message": "ValueError: bad sigma"}
    assert outer["attributes"] == [{"key": "stepchain.step_id", "value": {"intValue": "3"}}]

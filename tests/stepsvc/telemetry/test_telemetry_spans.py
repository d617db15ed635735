"""Span details inside the test process: failover attempts, and export over OTLP/HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from step_fixtures import MutableDiscovery, free_port, noisy_image, pipeline, raw_request
from stepchain.v1 import step_pb2_grpc
from telemetry_fixtures import serve_traced

from stepsvc.client.trace.show import read_otlp_json_lines, select_trace
from stepsvc.step.server import ServerSettings, build_server
from stepsvc.telemetry import Tracing, current_trace_id
from stepsvc.telemetry.observer import StepTelemetry

FAILOVER = [{"id": 1, "type": "identity", "next_step": [2, 3], "preferred_next": 2},
            {"id": 2, "type": "edges"}, {"id": 3, "type": "grayscale"}]


def test_a_failed_over_attempt_is_an_error_client_span_beside_the_one_that_worked(
        tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {"STEPCHAIN_TRACE_FILE": str(spans_file)}
    dead = f"127.0.0.1:{free_port()}"  # step 2 is in discovery but nothing listens there
    discovery = MutableDiscovery({2: dead})
    servers, telemetries = [], []
    try:
        for step_id in (3, 1):
            cfg = pipeline(step_id, FAILOVER)
            telemetry = StepTelemetry(cfg, Tracing.from_env(f"step-{step_id}", env=env))
            server = serve_traced(cfg, discovery, telemetry)
            servers.append(server)
            telemetries.append(telemetry)
        with grpc.insecure_channel(discovery.mapping[1]) as channel:
            response = step_pb2_grpc.StepServiceStub(channel).Process(
                raw_request(noisy_image()), timeout=20)
    finally:
        for server in servers:
            server.stop(0)
        for telemetry in telemetries:
            telemetry.close()
    assert [t.step_id for t in response.timings] == [1, 3]
    spans = select_trace(read_otlp_json_lines(spans_file), response.trace_id)
    entry = next(s for s in spans if s.kind == "SERVER" and s.service == "step-1")
    assert entry.parent_id is None  # no caller span: the entry step starts the trace
    assert entry.attributes["stepchain.forward_attempts"] == 2
    assert entry.attributes["stepchain.next_step"] == 3
    assert entry.status == "UNSET"
    forward = next(s for s in spans if s.name == "forward")
    attempts = sorted((s for s in spans if s.parent_id == forward.span_id),
                      key=lambda s: s.start_ns)
    assert [(a.kind, a.status) for a in attempts] == [("CLIENT", "ERROR"), ("CLIENT", "UNSET")]
    assert attempts[0].status_message.startswith("UNAVAILABLE")
    assert attempts[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    answered = next(s for s in spans if s.kind == "SERVER" and s.service == "step-3")
    assert answered.parent_id == attempts[1].span_id


class _OtlpHttpReceiver(BaseHTTPRequestHandler):
    """OTLP/HTTP: POST /v1/traces with a protobuf ExportTraceServiceRequest body."""

    received: ClassVar[list[tuple[str, str, trace_service_pb2.ExportTraceServiceRequest]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.received.append((self.path, self.headers["Content-Type"], request))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_receiver() -> Iterator[str]:
    _OtlpHttpReceiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpHttpReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_protobuf_protocol_posts_spans_to_the_v1_traces_path(http_receiver: str) -> None:
    tracing = Tracing.from_env("http-client", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"})
    with tracing.span("over http"):
        trace_id = current_trace_id()
    tracing.shutdown()
    assert len(_OtlpHttpReceiver.received) == 1
    path, content_type, request = _OtlpHttpReceiver.received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    (resource_spans,) = request.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "http-client"
    assert resource["deployment.environment"] == "test"
    (span,) = resource_spans.scope_spans[0].spans
    assert (span.name, span.trace_id.hex()) == ("over http", trace_id)


def test_requests_succeed_and_carry_a_trace_id_while_the_collector_is_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # keep the final flush attempt short
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nobody listens
    cfg = pipeline(3, FAILOVER)
    telemetry = StepTelemetry(cfg, Tracing.from_env("lonely", env=env))
    server = build_server(cfg, MutableDiscovery(), ServerSettings(host="127.0.0.1", port=0),
                          interceptors=telemetry.server_interceptors(), observer=telemetry)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = step_pb2_grpc.StepServiceStub(channel)
            replies = [stub.Process(raw_request(noisy_image(seed=i)), timeout=10)
                       for i in range(3)]
    finally:
        server.stop(0)
        telemetry.close()
    assert all(len(r.trace_id) == 32 for r in replies)
    assert len({r.trace_id for r in replies}) == 3  # one trace per request


def test_a_request_id_is_never_copied_unbounded_into_a_span() -> None:
    from stepsvc.limits import MAX_REQUEST_ID_BYTES
    from stepsvc.telemetry.spans import ATTR_REQUEST_ID, bounded, step_attributes

    huge = "é" * 5_000_000  # 10 MB, refused by the step, yet its span is still made
    attributes = step_attributes(pipeline_id="p", step_id=0, step_type="identity", threads=1,
                                 pixels=1, kernel_seconds=0.0, request_id=huge)
    kept = attributes[ATTR_REQUEST_ID]
    assert kept.endswith("…") and len(kept[:-1].encode()) <= MAX_REQUEST_ID_BYTES
    assert bounded("short", 128) == "short"

"""Helpers for the telemetry tests: an OTLP/gRPC receiver, traced step processes, scraping.

The receiver is opentelemetry-proto's collector ``TraceService`` on loopback: step processes
export real OTLP/gRPC to it exactly as they would to an OpenTelemetry Collector or Jaeger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families
from step_fixtures import (
    ROOT,
    MutableDiscovery,
    StepProcess,
    free_port,
    step_env,
    wait_serving,
)

from stepsvc.routing.discovery import write_static_discovery
from stepsvc.step.config import PipelineConfig
from stepsvc.step.server import ServerSettings, StepServer, build_server
from stepsvc.telemetry.observer import StepTelemetry


def serve_traced(cfg: PipelineConfig, discovery: MutableDiscovery,
                 telemetry: StepTelemetry) -> StepServer:
    """Starts step `cfg.step_id` in this process on a free loopback port, wired to `telemetry`
    as ``stepchain step serve`` wires it, and makes it active in `discovery`."""
    server = build_server(cfg, discovery, ServerSettings(host="127.0.0.1", port=0),
                          interceptors=telemetry.server_interceptors(),
                          client_interceptors=telemetry.client_interceptors(),
                          observer=telemetry)
    server.start()
    discovery.mapping[cfg.step_id] = server.address
    return server


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the receiver got it (ids in hex, kind/status by proto enum name)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()


def _any_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(items: Sequence[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in items}


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self.exports = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None, name=span.name,
                        kind=trace_pb2.Span.SpanKind.Name(span.kind), service=service,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        status=trace_pb2.Status.StatusCode.Name(span.status.code),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=tuple(e.name for e in span.events)))
        with self._cond:
            self.exports += 1
            self._spans.extend(received)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._cond:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, trace_id: str, count: int, timeout: float = 20.0) -> list[ReceivedSpan]:
        """Waits until `count` spans of `trace_id` arrived; fails listing what did arrive."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                spans = [s for s in self._spans if s.trace_id == trace_id]
                if len(spans) >= count:
                    return spans
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted(f"{s.service}:{s.name}" for s in spans)
                    raise AssertionError(f"got {len(spans)} of {count} spans of {trace_id} "
                                         f"in {timeout} s: {names}")
                self._cond.wait(left)

    def stop(self) -> None:
        self._server.stop(0).wait()


def otlp_env(receiver: OtlpReceiver) -> dict[str, str]:
    """The standard OTEL_* variables pointing an exporter at `receiver`, batching every 100 ms."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


class TracedChain:
    """Real ``stepchain step serve`` processes with the given telemetry environment."""

    def __init__(self, tmp: Path, steps: Sequence[Mapping[str, Any]], env: Mapping[str, str], *,
                 pipeline_id: str = "tel",
                 extra_args: Mapping[int, Sequence[str]] | None = None) -> None:
        self.pipeline_id = pipeline_id
        ids = [int(s["id"]) for s in steps]
        self.ports = {i: free_port() for i in ids}
        self.metrics_ports = {i: free_port() for i in ids}
        discovery = tmp / "discovery.json"
        write_static_discovery(discovery, {i: f"127.0.0.1:{p}" for i, p in self.ports.items()})
        self.procs: dict[int, StepProcess] = {}
        full_env = {**step_env(), **env}
        for i in ids:
            cfg = tmp / f"step-{i}.json"
            cfg.write_text(json.dumps({"pipeline_id": pipeline_id, "step_id": i,
                                       "steps": list(steps)}))
            log = tmp / f"step-{i}.log"
            cmd = [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config", str(cfg),
                   "--host", "127.0.0.1", "--port", str(self.ports[i]),
                   "--metrics-port", str(self.metrics_ports[i]),
                   "--discovery", f"static:{discovery}", "--grace", "2",
                   *(extra_args or {}).get(i, ())]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh,
                                        stderr=subprocess.STDOUT)
            self.procs[i] = StepProcess(i, self.ports[i], proc, log)
        try:
            for proc in self.procs.values():
                wait_serving(proc, 60.0)
        except BaseException:
            self.stop()
            raise

    def address(self, step_id: int) -> str:
        return self.procs[step_id].address

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on loopback, parsed by prometheus-client: (sample name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The value of one sample (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)

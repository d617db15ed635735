"""A step server's telemetry: spans and Prometheus metrics hooked into the servicer.

:class:`StepTelemetry` is the servicer's :class:`~stepsvc.step.hooks.StepObserver`: each phase
("queue", "decode", "kernel", "forward", "encode") becomes a child span of the step's SERVER span
and a histogram observation; when a request finishes, the server span gets the ``stepchain.*``
attributes and the response the trace id it returns. Its interceptors (tracing outermost, then
metrics) go on the gRPC server, its client interceptors on the channels to the next step.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from stepchain.v1 import step_pb2

from stepsvc.step.config import PipelineConfig
from stepsvc.step.hooks import StepObserver
from stepsvc.telemetry import (
    Tracing,
    annotate_current_span,
    current_trace_id,
    step_attributes,
    step_service_name,
)
from stepsvc.telemetry.metrics import MetricsHTTPServer, StepMetrics


def _input_pixels(image: step_pb2.Image) -> int:
    """Pixels the kernel sees: from the header fields, or from an encoded file's header."""
    if image.width and image.height:
        return int(image.width) * int(image.height)
    if image.encoding and image.data:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(image.data)) as pil:  # reads the header only
                return int(pil.width) * int(pil.height)
        except Exception:  # an undecodable image already failed the request; no pixels
            return 0
    return 0


class StepTelemetry(StepObserver):
    """Tracing and metrics for one step server (see the module docstring)."""

    def __init__(self, config: PipelineConfig, tracing: Tracing,
                 metrics: StepMetrics | None = None) -> None:
        self.config = config
        self.step = config.this_step()
        self.tracing = tracing
        self.metrics = metrics
        self._metrics_http: MetricsHTTPServer | None = None

    @classmethod
    def from_env(cls, config: PipelineConfig, *, with_metrics: bool = True) -> StepTelemetry:
        """Tracing from the ``OTEL_*`` environment, metrics in a registry of their own."""
        step = config.this_step()
        tracing = Tracing.from_env(step_service_name(config.pipeline_id, step.id))
        metrics = StepMetrics(config.pipeline_id, step.id, step.type) if with_metrics else None
        return cls(config, tracing, metrics)

    # -- gRPC wiring ---------------------------------------------------------------------------

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        """Tracing first so the metrics' duration is measured inside the server span."""
        interceptors = self.tracing.server_interceptors()
        if self.metrics is not None:
            interceptors.append(self.metrics.server_interceptor())
        return interceptors

    def client_interceptors(self) -> list[grpc.UnaryUnaryClientInterceptor]:
        """For the forwarder's channels: CLIENT spans and ``traceparent`` to the next step."""
        return self.tracing.client_interceptors()

    def start_metrics_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Serves ``/metrics`` on `host`:`port`; returns the bound port. No-op without metrics."""
        if self.metrics is None:
            return 0
        self._metrics_http = self.metrics.serve_http(port, host)
        return self._metrics_http.port

    def close(self) -> None:
        """Stops ``/metrics`` and flushes the spans still queued for export."""
        if self._metrics_http is not None:
            self._metrics_http.stop()
            self._metrics_http = None
        self.tracing.shutdown()

    # -- StepObserver --------------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str) -> Iterator[Any]:
        """A child span named after the phase, and its duration into the phase histogram."""
        start = time.perf_counter()
        try:
            with self.tracing.span(name) as span:
                yield span
        finally:
            if self.metrics is not None:
                self.metrics.observe_phase(name, time.perf_counter() - start)

    def finished(self, *, code: grpc.StatusCode, timing: step_pb2.StepTiming,
                 request: step_pb2.ProcessRequest, request_id: str) -> str:
        """Annotates the step's server span; returns the trace id for the response."""
        trace_id = current_trace_id()
        if not self.tracing.enabled:
            return trace_id
        request_id = request_id or request.request_id
        attributes = step_attributes(
            pipeline_id=timing.pipeline_id, step_id=timing.step_id, step_type=timing.step_type,
            threads=timing.threads, pixels=_input_pixels(request.image),
            kernel_seconds=timing.kernel_ms / 1000.0, request_id=request_id)
        attributes["stepchain.queue_wait_ms"] = timing.queue_wait_ms
        if timing.HasField("next_step"):
            attributes["stepchain.next_step"] = timing.next_step
        if timing.forward_attempts:
            attributes["stepchain.forward_attempts"] = timing.forward_attempts
        annotate_current_span(attributes)
        return trace_id

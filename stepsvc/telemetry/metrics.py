"""Prometheus metrics of one step server, recorded by a gRPC interceptor.

Every series is labelled ``pipeline_id``, ``step_id``, ``step_type``:

- ``stepchain_step_requests_total{grpc_code}`` — finished StepService calls by status code.
- ``stepchain_step_duration_seconds`` — wall time of each call in this step (includes forward).
- ``stepchain_step_queue_wait_seconds``, ``stepchain_step_kernel_seconds``,
  ``stepchain_step_forward_seconds`` — the step's phases, observed by the step's telemetry
  observer each time a phase ran (also when it failed).
- ``stepchain_step_in_flight`` — calls being handled now.
- ``stepchain_step_received_bytes_total``, ``stepchain_step_sent_bytes_total`` — serialized
  request/response sizes.
- ``stepchain_step_cpu_cores{source}``, ``stepchain_step_host_cpu_cores``,
  ``stepchain_step_host_cpu_busy_seconds_total`` — the CPU a replica has and how busy its host
  is (:mod:`stepsvc.telemetry.cpu`).
- ``stepchain_step_next_step_reachable{next_step, next_address, channel, reason}`` — 1 when a
  request can go on to that next step now, 0 with the reason (``watch_next_steps``).
- ``stepchain_step_busy_slots`` / ``stepchain_step_queue_depth`` — admitted requests holding a
  slot and requests waiting for one, read at scrape time; ``stepchain_step_max_inflight`` /
  ``stepchain_step_max_queue`` — the limits they are held to (``watch_admission``).

The duration histogram carries the trace id of the request as an OpenMetrics exemplar (seen
by scrapers that ask for ``application/openmetrics-text``): the console links recent requests
to their traces with it.

Each :class:`StepMetrics` owns its registry, so several servers in one process (tests, the
benchmark) never collide; :meth:`StepMetrics.serve_http` exposes it on ``--metrics-port``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import HTTPServer
from threading import Thread
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stepsvc.telemetry import spans
from stepsvc.telemetry.cpu import register_cpu_metrics
from stepsvc.telemetry.filters import behavior_of, call_code, is_step_call, rewrap

if TYPE_CHECKING:
    from stepsvc.routing.reachability import NextStepHealth
    from stepsvc.step.admission import Admission

LABELS = ("pipeline_id", "step_id", "step_type")
#: Seconds: from a fast kernel on a thumbnail to a deblur of a large photo.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, float("inf"))


def new_registry() -> CollectorRegistry:
    """A registry of one's own, with the process and platform metrics the global one has.

    Per-instance registries let several servers live in one process (tests, the benchmark)
    without their series colliding.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@dataclass
class MetricsHTTPServer:
    """The ``/metrics`` HTTP endpoint of one registry."""

    httpd: HTTPServer
    thread: Thread

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class StepMetrics:
    """The metrics of one step.

    :meth:`server_interceptor` records calls (count by code, duration, in-flight, bytes);
    :meth:`observe_phase` records the servicer's phases.
    """

    def __init__(self, pipeline_id: str, step_id: int, step_type: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.pipeline_id = pipeline_id
        self.step_id = step_id
        labels = {"pipeline_id": pipeline_id, "step_id": str(step_id), "step_type": step_type}
        reg = self.registry
        self._requests = Counter(
            "stepchain_step_requests", "StepService calls finished, by gRPC status code.",
            (*LABELS, "grpc_code"), registry=reg)
        self._labels = labels
        # Expose the OK series at 0 from the start so rate() works before the first request.
        self._requests.labels(**labels, grpc_code="OK")

        def histogram(name: str, doc: str) -> Any:
            return Histogram(name, doc, LABELS, buckets=LATENCY_BUCKETS,
                             registry=reg).labels(**labels)

        self.duration = histogram("stepchain_step_duration_seconds",
                                  "Wall time of a call in this step, forward included.")
        self.queue_wait = histogram("stepchain_step_queue_wait_seconds",
                                    "Time a call waited for a free in-flight slot.")
        self.kernel = histogram("stepchain_step_kernel_seconds",
                                "Time in the native kernel (all passes).")
        self.forward = histogram("stepchain_step_forward_seconds",
                                 "Time forwarding to the next step and waiting for its answer.")
        self.in_flight = Gauge("stepchain_step_in_flight", "StepService calls being handled now.",
                               LABELS, registry=reg).labels(**labels)
        self.received_bytes = Counter(
            "stepchain_step_received_bytes", "Serialized size of the requests received.",
            LABELS, registry=reg).labels(**labels)
        self._phases = {"queue": self.queue_wait, "kernel": self.kernel, "forward": self.forward}
        self.sent_bytes = Counter(
            "stepchain_step_sent_bytes", "Serialized size of the responses sent.",
            LABELS, registry=reg).labels(**labels)
        #: The cores one replica may use; the host's cores and busy seconds (scaling advice).
        self.cpu = register_cpu_metrics(reg, labels)
        kernel = spans.kernel_identity(step_type)
        if kernel is not None:  # which code computes this step: a built-in or which plugin
            Gauge("stepchain_step_kernel_info",
                  "The step's kernel and the package it comes from (1; built-ins: stepchain).",
                  (*LABELS, "kernel", "package", "version"), registry=reg).labels(
                **labels, **kernel).set(1)

    def watch_admission(self, admission: Admission) -> None:
        """Exposes the step's admission state (busy slots, queue) and limits, read at scrape
        time."""
        reg, labels = self.registry, self._labels
        for name, doc, read in (
                ("stepchain_step_busy_slots", "Admitted requests holding an in-flight slot now.",
                 lambda: admission.inflight),
                ("stepchain_step_queue_depth", "Requests waiting for an in-flight slot now.",
                 lambda: admission.queued),
                ("stepchain_step_max_inflight", "In-flight slots (--max-inflight).",
                 lambda: admission.max_inflight),
                ("stepchain_step_max_queue", "Wait queue length (--max-queue).",
                 lambda: admission.max_queue)):
            Gauge(name, doc, LABELS, registry=reg).labels(**labels).set_function(read)

    def watch_next_steps(self, health: Callable[[], Sequence[NextStepHealth]]) -> None:
        """Exposes whether each next step can be reached (``health()`` read at scrape time):
        ``stepchain_step_next_step_reachable{next_step, next_address, channel, reason}``, 1 or
        0, one series per next step (stepsvc.routing.reachability)."""
        self.registry.register(_NextStepCollector(self._labels, health))

    def count_request(self, code: grpc.StatusCode) -> None:
        """Counts one finished call with status `code`."""
        self._requests.labels(**self._labels, grpc_code=code.name).inc()

    def observe_phase(self, phase: str, seconds: float) -> None:
        """Records one phase of a request ("queue", "kernel", "forward"; others are ignored)."""
        histogram = self._phases.get(phase)
        if histogram is not None:
            histogram.observe(seconds)

    def server_interceptor(self) -> grpc.ServerInterceptor:
        """An interceptor recording every StepService call into these metrics."""
        return _MetricsInterceptor(self)

    def serve_http(self, port: int, addr: str = "0.0.0.0") -> MetricsHTTPServer:
        """Serves ``/metrics`` for this registry on `addr`:`port` (0 picks a free port)."""
        httpd, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsHTTPServer(httpd, thread)


class _NextStepCollector(Collector):
    def __init__(self, labels: dict[str, str],
                 health: Callable[[], Sequence[NextStepHealth]]) -> None:
        self._labels = labels
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "stepchain_step_next_step_reachable",
            "Whether a request can go on to this next step now (1) or not (0, reason says why): "
            "discovery, the channel's state and the last forward's outcome.",
            labels=[*self._labels, "next_step", "next_address", "channel", "reason"])
        for hop in self._health():
            family.add_metric([*self._labels.values(), str(hop.step_id), hop.address or "",
                               hop.channel, hop.reason], 1.0 if hop.reachable else 0.0)
        yield family


def _trace_exemplar() -> dict[str, str] | None:
    """The current request's trace id as an exemplar (None when it is not traced)."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": trace.format_trace_id(context.trace_id)}


class _MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: StepMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if not is_step_call(method, handler):  # health probes and reflection are not requests
            return handler
        behavior = behavior_of(handler)
        metrics = self._metrics
        streaming = handler.request_streaming

        def counted(requests: Iterator[Any]) -> Iterator[Any]:
            for request in requests:  # Process reads its one message after admission
                metrics.received_bytes.inc(request.ByteSize())
                yield request

        def metered(request: Any, context: grpc.ServicerContext) -> Any:
            metrics.in_flight.inc()
            if streaming:
                request = counted(request)
            else:
                metrics.received_bytes.inc(request.ByteSize())
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = behavior(request, context)
                code = call_code(context, raised=False)
                if code == grpc.StatusCode.OK and response is not None:
                    metrics.sent_bytes.inc(response.ByteSize())
                return response
            except BaseException:
                code = call_code(context, raised=True)
                raise
            finally:
                metrics.duration.observe(time.perf_counter() - start, _trace_exemplar())
                metrics.in_flight.dec()
                metrics.count_request(code)

        return rewrap(handler, metered)

"""A process's tracing: the SDK provider built from :class:`TracingConfig`, and its lifecycle.

:class:`Tracing` is what servers and CLIs hold: a tracer, the gRPC interceptors that use it,
:meth:`Tracing.span` for phases, and a shutdown that never holds the process up for long.

Export happens on a background thread (``BatchSpanProcessor``), so a slow or absent collector
never delays a request. At exit the remaining spans are flushed, but for at most
:data:`EXPORT_SHUTDOWN_TIMEOUT_S`: a collector that cannot be reached costs a CLI or a draining
step about one second and one log line, not the OTLP exporter's retries (10 s by default).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from stepsvc.telemetry.client import ClientTracingInterceptor
from stepsvc.telemetry.config import TracingConfig, tracing_config_from_env
from stepsvc.telemetry.server import ServerTracingInterceptor
from stepsvc.telemetry.spans import TRACER_NAME, mark_error

#: Longest :meth:`Tracing.shutdown` / :meth:`Tracing.force_flush` wait for spans to leave.
EXPORT_SHUTDOWN_TIMEOUT_S = 1.0
#: The OTLP exporters' loggers: their per-retry warnings are replaced by our one line.
OTLP_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                         "opentelemetry.exporter.otlp.proto.http.trace_exporter")

log = logging.getLogger(__name__)


def _build_sampler(config: TracingConfig) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = config.sampler_arg if config.sampler_arg is not None else 1.0
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(
            sampling.TraceIdRatioBased(ratio)),
    }[config.sampler]()


def _build_exporter(name: str, config: TracingConfig) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if config.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=config.otlp_endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    return GrpcExporter(endpoint=config.otlp_endpoint)


def _build_provider(config: TracingConfig) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # shutdown_on_exit=False: the SDK's own atexit hook would wait for a dead collector without
    # bound; Tracing.shutdown bounds it instead.
    provider = TracerProvider(resource=Resource.create(dict(config.resource_attributes)),
                              sampler=_build_sampler(config), shutdown_on_exit=False)
    exporters = [_build_exporter(name, config) for name in config.exporters]
    if config.trace_file is not None:
        from stepsvc.telemetry.file_exporter import OtlpJsonFileExporter

        exporters.append(OtlpJsonFileExporter(config.trace_file))
    for exporter in exporters:
        # Batching on a background thread: a slow or absent collector never delays a request;
        # when the queue is full spans are dropped, not waited for.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class _DropRetryNotices(logging.Filter):
    """Drops the OTLP exporters' "Transient error ..., retrying" warnings: at exit our one line
    says what happened; while running, an unreachable collector is not worth a line a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Transient error")


_RETRY_FILTER = _DropRetryNotices()


def _quiet_exporter_retries() -> None:
    for name in OTLP_EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if _RETRY_FILTER not in logger.filters:
            logger.addFilter(_RETRY_FILTER)


class Tracing:
    """A process's (or an in-process server's) tracer plus the gRPC interceptors that use it.

    Build it with :meth:`from_env` (or :meth:`disabled`); pass :meth:`server_interceptors` to the
    gRPC server and :meth:`client_interceptors` to channels; wrap phases in :meth:`span`.
    """

    def __init__(self, config: TracingConfig, provider: Any | None) -> None:
        self.config = config
        self._provider = provider
        self.tracer: trace.Tracer = (provider.get_tracer(TRACER_NAME) if provider is not None
                                     else trace.NoOpTracer())
        self._export_stalled_logged = False
        if provider is not None and config.exporters:
            _quiet_exporter_retries()

    @classmethod
    def from_env(cls, service_name: str, env: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the ``OTEL_*`` variables in `env` (default ``os.environ``) ask for.

        `service_name` is the ``service.name`` used unless ``OTEL_SERVICE_NAME`` is set.
        """
        config = tracing_config_from_env(os.environ if env is None else env, service_name)
        return cls(config, _build_provider(config) if config.enabled else None)

    @classmethod
    def disabled(cls) -> Tracing:
        """No spans recorded; interceptors still pass incoming trace context through."""
        return cls(TracingConfig(), None)

    @property
    def enabled(self) -> bool:
        """True when spans are recorded and exported."""
        return self._provider is not None

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        """Interceptors for a step's gRPC server: a SERVER span per StepService call."""
        return [ServerTracingInterceptor(self.tracer)]

    def client_interceptors(self) -> list[grpc.UnaryUnaryClientInterceptor]:
        """Interceptors for channels to steps: a CLIENT span per call, ``traceparent`` injected."""
        return [ClientTracingInterceptor(self.tracer)]

    def intercept_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """`channel` with :meth:`client_interceptors` applied."""
        return grpc.intercept_channel(channel, *self.client_interceptors())

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None,
             kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
        """A child span of the current one around a block (a step phase, a client's root span).

        An exception leaving the block marks the span ERROR with its message. With tracing off
        this costs one branch and leaves the current context alone.
        """
        if self._provider is None:
            yield trace.INVALID_SPAN
            return
        with self.tracer.start_as_current_span(
                name, kind=kind, attributes=dict(attributes or {}),
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                mark_error(span, exc)
                raise

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Exports every finished span now, waiting at most `timeout_s`; False when the export
        did not finish in time (it goes on in the background)."""
        if self._provider is None:
            return True
        return self._bounded("flush", self._provider.force_flush, timeout_s)

    def shutdown(self, timeout_s: float = EXPORT_SHUTDOWN_TIMEOUT_S) -> bool:
        """Flushes and stops the exporters, waiting at most `timeout_s` (a process about to exit
        calls this); the tracer records nothing afterwards. False when spans were left behind,
        which is logged once, naming where they were going."""
        if self._provider is None:
            return True
        provider, self._provider = self._provider, None
        self.tracer = trace.NoOpTracer()
        return self._bounded("shutdown", provider.shutdown, timeout_s)

    def _bounded(self, what: str, call: Any, timeout_s: float) -> bool:
        # The SDK's flush and shutdown wait for the exporter, which retries an unreachable
        # collector for OTEL_EXPORTER_OTLP_TIMEOUT (10 s): run them on a daemon thread and stop
        # waiting after timeout_s. A daemon thread does not keep the process alive.
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(call()),
                                  name=f"stepchain-tracing-{what}", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if not worker.is_alive() and result and result[0] is not False:
            return True
        if not self._export_stalled_logged:
            self._export_stalled_logged = True
            where = self.config.otlp_endpoint or ", ".join(self.config.exporters) or "exporter"
            log.warning("tracing: spans not exported to %s within %.1f s (%s); they are dropped. "
                        "Is the collector reachable? (OTEL_EXPORTER_OTLP_ENDPOINT)",
                        where, timeout_s, what)
        return False

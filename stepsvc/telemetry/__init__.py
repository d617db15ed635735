"""Tracing for steps and clients, configured only by the standard ``OTEL_*`` variables.

One module per job, as opentelemetry-python-contrib's gRPC instrumentation is laid out:

- :mod:`~stepsvc.telemetry.config` — what to trace, read from ``OTEL_*`` (pure).
- :mod:`~stepsvc.telemetry.tracing` — :class:`Tracing`: the SDK provider, spans, bounded shutdown.
- :mod:`~stepsvc.telemetry.file_exporter` — the OTLP-JSON lines file (``STEPCHAIN_TRACE_FILE``).
- :mod:`~stepsvc.telemetry.server` / :mod:`~stepsvc.telemetry.client` — the gRPC interceptors.
- :mod:`~stepsvc.telemetry.filters` — which calls are traced and metered, and their status code
  (shared with :mod:`~stepsvc.telemetry.metrics`).
- :mod:`~stepsvc.telemetry.spans` — attribute keys and span helpers.
- :mod:`~stepsvc.telemetry.metrics` — a step's Prometheus metrics, recorded by an interceptor.
- :mod:`~stepsvc.telemetry.observer` — a step's spans and metrics hooked into its servicer.

With no variable set, tracing is off: no SDK provider, no exporter thread, and the gRPC
interceptors only carry the caller's W3C ``traceparent`` through to the next step, so a step
without tracing does not cut a trace of steps around it in two.

The names below are the public API; import them from here (the file exporter is imported
only when ``STEPCHAIN_TRACE_FILE`` asks for it; ``metrics`` and ``observer`` by the step
server's wiring only). Imports ``step`` (the observer hooks, config and admission it reports
on) and the loose stepsvc modules; the step server never imports this room.
"""

from stepsvc.telemetry.client import ClientTracingInterceptor
from stepsvc.telemetry.config import (
    TRACE_FILE_ENV,
    TelemetryConfigError,
    TracingConfig,
    step_service_name,
    tracing_config_from_env,
)
from stepsvc.telemetry.server import ServerTracingInterceptor
from stepsvc.telemetry.spans import (
    ATTR_MEGAPIXELS_PER_SECOND,
    ATTR_PIPELINE_ID,
    ATTR_PIXELS,
    ATTR_REQUEST_ID,
    ATTR_STEP_ID,
    ATTR_STEP_TYPE,
    ATTR_THREADS,
    TRACER_NAME,
    annotate_current_span,
    current_trace_id,
    mark_error,
    step_attributes,
)
from stepsvc.telemetry.tracing import EXPORT_SHUTDOWN_TIMEOUT_S, Tracing

__all__ = [
    "ATTR_MEGAPIXELS_PER_SECOND",
    "ATTR_PIPELINE_ID",
    "ATTR_PIXELS",
    "ATTR_REQUEST_ID",
    "ATTR_STEP_ID",
    "ATTR_STEP_TYPE",
    "ATTR_THREADS",
    "EXPORT_SHUTDOWN_TIMEOUT_S",
    "TRACER_NAME",
    "TRACE_FILE_ENV",
    "ClientTracingInterceptor",
    "ServerTracingInterceptor",
    "TelemetryConfigError",
    "Tracing",
    "TracingConfig",
    "annotate_current_span",
    "current_trace_id",
    "mark_error",
    "step_attributes",
    "step_service_name",
    "tracing_config_from_env",
]

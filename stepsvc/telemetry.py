"""Tracing setup: the one place that reads ``OTEL_*`` and builds tracers, exporters, interceptors.

Configuration comes only from the standard OpenTelemetry environment variables plus one
stepchain knob for the local mode:

- ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none``. When unset, ``otlp``
  is used if ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, else nothing.
- ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``
  (``grpc``, the default, or ``http/protobuf``); headers, TLS and timeouts are read by the
  OTLP exporters themselves from their usual variables.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``; ``OTEL_SERVICE_NAME``;
  ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED``; ``OTEL_BSP_*`` (batching).
- ``STEPCHAIN_TRACE_FILE=PATH``: also append every span to PATH as OTLP JSON lines (one
  ``ExportTraceServiceRequest`` per line), what ``stepchain trace show FILE`` reads.

With none of them set, tracing is off: no SDK provider, no exporter thread, and the gRPC
interceptors only carry the caller's W3C ``traceparent`` through to the next step, so a step
without tracing does not cut a trace of steps around it in two.

The interceptors are our own small ones instead of opentelemetry-instrumentation-grpc's: the
step's :class:`stepsvc.forward.Forwarder` takes standard ``grpc.UnaryUnaryClientInterceptor``
objects (the contrib client interceptor is a ``grpcext`` one that ``grpc.intercept_channel``
cannot use), the contrib server interceptor names spans with a leading ``/`` (the RPC semantic
conventions say ``package.Service/Method``) and leaves the status unset when a handler raises.
Propagation uses the globally configured propagator (``OTEL_PROPAGATORS``, W3C tracecontext and
baggage by default), injected and extracted once, here.
"""

from __future__ import annotations

import base64
import collections
import fcntl
import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

#: Environment variable naming the local OTLP JSON lines file.
TRACE_FILE_ENV = "STEPCHAIN_TRACE_FILE"
#: gRPC methods that get spans; health probes and reflection stay out of traces.
TRACED_SERVICE_PREFIX = "/stepchain.v1."
#: Instrumentation scope of every stepchain span.
TRACER_NAME = "stepchain"

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")

#: Span attribute keys stepchain sets (documented in the README's tracing section).
ATTR_PIPELINE_ID = "stepchain.pipeline_id"
ATTR_STEP_ID = "stepchain.step_id"
ATTR_STEP_TYPE = "stepchain.step_type"
ATTR_THREADS = "stepchain.threads"
ATTR_PIXELS = "stepchain.pixels"
ATTR_MEGAPIXELS_PER_SECOND = "stepchain.megapixels_per_second"
ATTR_REQUEST_ID = "stepchain.request_id"


class TelemetryConfigError(ValueError):
    """An ``OTEL_*``/``STEPCHAIN_*`` variable has a value stepchain cannot use."""


# --------------------------------------------------------------------------------------------
# Configuration (pure: a function of the environment mapping)


@dataclass(frozen=True)
class TracingConfig:
    """What tracing a process does, decided from its environment."""

    exporters: tuple[str, ...] = ()
    otlp_protocol: str = "grpc"
    otlp_endpoint: str | None = None
    trace_file: Path | None = None
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when spans go somewhere (an exporter or the trace file)."""
        return bool(self.exporters) or self.trace_file is not None


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-encoded) as a dict."""
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(
                f"OTEL_RESOURCE_ATTRIBUTES: {item!r} is not key=value; expected e.g. "
                "'deployment.environment=dev,team=imaging'")
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _resolve_otlp_endpoint(env: Mapping[str, str], protocol: str) -> str | None:
    """The traces endpoint per the OTLP exporter spec (signal-specific wins; http appends path)."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not generic:
        return None
    if protocol == "http/protobuf":
        return generic.rstrip("/") + "/v1/traces"
    return generic


def tracing_config_from_env(env: Mapping[str, str], default_service_name: str) -> TracingConfig:
    """Reads the tracing configuration from `env` (normally ``os.environ``).

    Raises TelemetryConfigError naming the variable and the allowed values on bad input.
    """
    resource = {"service.name": default_service_name}
    resource.update(_parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        resource["service.name"] = service_name

    if _env_flag(env.get("OTEL_SDK_DISABLED")):
        return TracingConfig(resource_attributes=resource)

    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; allowed: "
            f"{', '.join(PROTOCOLS)}")
    endpoint = _resolve_otlp_endpoint(env, protocol)

    raw_exporters = env.get("OTEL_TRACES_EXPORTER")
    if raw_exporters is None or not raw_exporters.strip():
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip().lower() for n in raw_exporters.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; allowed: "
                f"{', '.join(EXPORTERS)} (set {TRACE_FILE_ENV}=PATH for a local JSON file)")
    exporters = tuple(dict.fromkeys(n for n in names if n != "none"))

    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise TelemetryConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; allowed: {', '.join(SAMPLERS)}")
    sampler_arg: float | None = None
    if sampler.endswith("traceidratio"):
        raw_arg = (env.get("OTEL_TRACES_SAMPLER_ARG") or "1.0").strip()
        try:
            sampler_arg = float(raw_arg)
        except ValueError:
            sampler_arg = -1.0
        if not 0.0 <= sampler_arg <= 1.0:
            raise TelemetryConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={raw_arg!r} is not a ratio; allowed: a number "
                "from 0.0 to 1.0")

    trace_file_raw = env.get(TRACE_FILE_ENV, "").strip()
    return TracingConfig(
        exporters=exporters,
        otlp_protocol=protocol,
        otlp_endpoint=endpoint,
        trace_file=Path(trace_file_raw) if trace_file_raw else None,
        sampler=sampler,
        sampler_arg=sampler_arg,
        resource_attributes=resource,
    )


def step_service_name(pipeline_id: str, step_id: int) -> str:
    """Default ``service.name`` of a step (``OTEL_SERVICE_NAME`` overrides it)."""
    return f"{pipeline_id}-step-{step_id}"


# --------------------------------------------------------------------------------------------
# OTLP JSON lines (local mode)


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def otlp_json_line(spans: Sequence[Any]) -> str:
    """Encodes SDK spans as one OTLP/JSON ``ExportTraceServiceRequest`` (no newline).

    Follows the OTLP/JSON mapping: camelCase fields, integer enums, and trace/span ids as hex
    (protobuf's JSON mapping would give base64), so the collector's file exporter and ours agree.
    """
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in doc.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = _b64_to_hex(span[key])
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if link.get(key):
                            link[key] = _b64_to_hex(link[key])
    return json.dumps(doc, separators=(",", ":"))


def _make_file_exporter(path: Path) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class OtlpJsonFileExporter(SpanExporter):
        """Appends each exported batch to `path` as one OTLP JSON line.

        Several step processes of a local pipeline share one file: each batch is a single
        ``write`` under an exclusive ``flock`` on an ``O_APPEND`` descriptor, so lines never
        interleave.
        """

        def __init__(self) -> None:
            self._lock = threading.Lock()
            path.parent.mkdir(parents=True, exist_ok=True)

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            if not spans:
                return SpanExportResult.SUCCESS
            data = (otlp_json_line(spans) + "\n").encode()
            with self._lock:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)  # closing releases the flock
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return OtlpJsonFileExporter()


# --------------------------------------------------------------------------------------------
# SDK wiring


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

    provider = TracerProvider(resource=Resource.create(dict(config.resource_attributes)),
                              sampler=_build_sampler(config))
    exporters = [_build_exporter(name, config) for name in config.exporters]
    if config.trace_file is not None:
        exporters.append(_make_file_exporter(config.trace_file))
    for exporter in exporters:
        # Batching on a background thread: a slow or absent collector never delays a request;
        # when the queue is full spans are dropped, not waited for.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


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
        """Exports every finished span now (a CLI about to exit calls this)."""
        if self._provider is None:
            return True
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Flushes and stops the exporter threads; the tracer records nothing afterwards."""
        if self._provider is not None:
            self._provider.shutdown()


# --------------------------------------------------------------------------------------------
# Span helpers used by the servicer and the client


def mark_error(span: Span, exc: BaseException | None = None, message: str | None = None) -> None:
    """Sets ERROR status on `span` with a readable description, recording `exc` when real.

    gRPC's ``context.abort`` raises a bare ``Exception`` after it has set the status; that one
    is not worth an exception event (the server span carries the code and details).
    """
    if exc is not None and type(exc) is not Exception:
        span.record_exception(exc)
    if message is None and exc is not None:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    span.set_status(Status(StatusCode.ERROR, message))


def step_attributes(*, pipeline_id: str, step_id: int, step_type: str, threads: int,
                    pixels: int, kernel_seconds: float, request_id: str) -> dict[str, Any]:
    """The ``stepchain.*`` attributes of a step's server span."""
    attributes: dict[str, Any] = {
        ATTR_PIPELINE_ID: pipeline_id,
        ATTR_STEP_ID: step_id,
        ATTR_STEP_TYPE: step_type,
        ATTR_THREADS: threads,
        ATTR_PIXELS: pixels,
    }
    if request_id:  # a request refused before the step generated its id has none
        attributes[ATTR_REQUEST_ID] = request_id
    if kernel_seconds > 0:
        attributes[ATTR_MEGAPIXELS_PER_SECOND] = round(pixels / 1e6 / kernel_seconds, 3)
    return attributes


def annotate_current_span(attributes: Mapping[str, Any]) -> None:
    """Sets `attributes` on the current span (a no-op when it is not recording)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(dict(attributes))


def current_trace_id() -> str:
    """The current W3C trace id as 32 hex digits, or "" when the trace is not being recorded."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid and span_context.trace_flags.sampled:
        return trace.format_trace_id(span_context.trace_id)
    return ""


# --------------------------------------------------------------------------------------------
# gRPC interceptors


def _rpc_attributes(method: str) -> dict[str, Any]:
    service, _, rpc_method = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}


def _set_rpc_status(span: Span, code: grpc.StatusCode, details: str | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))


class ServerTracingInterceptor(grpc.ServerInterceptor):
    """Extracts the caller's trace context and runs each StepService call in a SERVER span.

    The span is named ``stepchain.v1.StepService/Process`` and gets the gRPC status: an abort or
    ``set_code`` with a non-OK code, or an exception, makes it ERROR with the details.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if (handler is None or not method.startswith(TRACED_SERVICE_PREFIX)
                or handler.request_streaming or handler.response_streaming):
            return handler
        behavior = handler.unary_unary
        tracer = self._tracer
        name = method.lstrip("/")
        attributes = _rpc_attributes(method)

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            carrier = dict(context.invocation_metadata() or ())
            token = otel_context.attach(propagate.extract(carrier))
            try:
                with tracer.start_as_current_span(
                        name, kind=SpanKind.SERVER, attributes=attributes,
                        record_exception=False, set_status_on_exception=False) as span:
                    try:
                        response = behavior(request, context)
                    except BaseException as exc:
                        code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        if type(exc) is not Exception:  # bare Exception = context.abort
                            span.record_exception(exc)
                        _set_rpc_status(span, code, _context_details(context) or str(exc))
                        raise
                    code = _context_code(context) or grpc.StatusCode.OK
                    _set_rpc_status(span, code, _context_details(context))
                    return response
            finally:
                otel_context.detach(token)

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    code = getattr(context, "code", None)
    return code() if callable(code) else None


def _context_details(context: grpc.ServicerContext) -> str | None:
    details = getattr(context, "details", None)
    value = details() if callable(details) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    """ClientCallDetails with our metadata (grpc's own class is private)."""


class ClientTracingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """A CLIENT span per unary call to a step, with its context injected as ``traceparent``.

    The span ends when the call completes (also for ``.future()`` calls) and is ERROR with the
    status code and details when the call fails, so a failover attempt shows in the trace.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any],
                              client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        span = self._tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT,
                                       attributes=_rpc_attributes(method))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = [*(client_call_details.metadata or ()), *carrier.items()]
        details = _CallDetails(
            client_call_details.method, client_call_details.timeout, metadata,
            client_call_details.credentials,
            getattr(client_call_details, "wait_for_ready", None),
            getattr(client_call_details, "compression", None))
        try:
            call = continuation(details, request)
        except BaseException as exc:
            mark_error(span, exc)
            span.end()
            raise

        def finish(done: Any) -> None:
            try:
                code = done.code()
                _set_rpc_status(span, code, done.details())
            finally:
                span.end()

        call.add_done_callback(finish)
        return call

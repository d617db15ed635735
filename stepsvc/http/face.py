"""The step's HTTP face: ``POST /process`` for clients of the Flask-era HTTP pipeline.

The REST half of the REST + gRPC pair (as KServe and Triton offer them). There is one request
path: :class:`HttpFace` sends each HTTP request to the step's own ``StepService/Process`` over
a loopback channel (with the HTTP request's trace context, W3C ``traceparent``, propagated), so
admission, limits, metrics and the trace are exactly those of a gRPC call. The translation is
:mod:`stepsvc.http.translate` (pure); the HTTP/1.1 server around it is
:mod:`stepsvc.http.server`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.http.translate import (
    HttpError,
    build_request,
    error_from_rpc,
    extract_image,
    parse_options,
    request_id_header,
    success_headers,
)
from stepsvc.routing.channels import transport_options
from stepsvc.routing.throttle import AdaptiveThrottle, ThrottlingInterceptor

#: Status, headers and body of one HTTP answer.
Reply = tuple[int, list[tuple[str, str]], bytes]


class HttpFace:
    """Answers HTTP requests with the gRPC step at `grpc_target` (see the module docstring).

    `tracing` is the step's :class:`~stepsvc.telemetry.Tracing` (a SERVER span per HTTP
    request, its context sent on to the gRPC call).
    """

    def __init__(self, grpc_target: str, step_id: int, *, max_body_bytes: int,
                 timeout_s: float, tracing: Any | None = None,
                 client_interceptors: list[grpc.UnaryUnaryClientInterceptor] | None = None,
                 ) -> None:
        self.step_id = step_id
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.tracing = tracing
        self._channel = grpc.insecure_channel(grpc_target,
                                              options=transport_options(max_body_bytes))
        # Client-side adaptive throttling of the loopback call: a step that refuses most of
        # what it gets is not handed every HTTP body to refuse (stepsvc.routing.throttle).
        throttle = ThrottlingInterceptor(AdaptiveThrottle(), f"step {step_id}")
        channel = grpc.intercept_channel(self._channel, throttle, *(client_interceptors or ()))
        self._stub = step_pb2_grpc.StepServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        """Closes the loopback channel."""
        self._channel.close()

    def health(self) -> tuple[int, bytes]:
        """``GET /healthz``: the step's own grpc.health.v1 status (200 SERVING, else 503), for
        HTTP load balancers and Ingress health checks."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            status = f"UNREACHABLE ({err.code().name if hasattr(err, 'code') else 'error'})"
        code = 200 if status == "SERVING" else 503
        return code, json.dumps({"status": status, "step": self.step_id}).encode()

    def process(self, headers: Mapping[str, str], query: str, body: bytes) -> Reply:
        """The answer to one ``POST /process`` (`headers` with lower-case names)."""
        try:
            request_id = request_id_header(headers.get("x-request-id")) or uuid.uuid4().hex
        except HttpError as exc:
            return self.error(exc, uuid.uuid4().hex, "")
        try:
            options = parse_options(query)
            data, encoding = extract_image(headers.get("content-type", ""), body)
            request = build_request(data, encoding, options, request_id)
        except HttpError as exc:
            return self.error(exc, request_id, "")
        del data, body  # the request holds the image now
        token = otel_context.attach(propagate.extract(dict(headers)))
        try:
            return self._call(request, request_id)
        finally:
            otel_context.detach(token)

    def _call(self, request: step_pb2.ProcessRequest, request_id: str) -> Reply:
        span_cm = (self.tracing.span("POST /process", {"http.request.method": "POST",
                                                       "http.route": "/process"},
                                     kind=SpanKind.SERVER)
                   if self.tracing is not None else _NoSpan())
        with span_cm as span:
            trace_id = _trace_id(span)
            try:
                response = self._stub.Process(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                error = error_from_rpc(err, self.step_id)
                if span.is_recording():
                    span.set_attribute("http.response.status_code", error.status)
                return self.error(error, request_id, trace_id)
            if span.is_recording():
                span.set_attribute("http.response.status_code", 200)
        return 200, success_headers(response, trace_id), response.image.data

    def error(self, error: HttpError, request_id: str = "", trace_id: str = "") -> Reply:
        """The JSON answer for `error` (429 and 503 say when to retry)."""
        headers = [("Content-Type", "application/json")]
        if request_id:
            headers += [("X-Request-Id", request_id), ("X-Trace-Id", trace_id)]
        if error.status in (429, 503):
            headers.append(("Retry-After", "1"))
        return error.status, headers, error.body(self.step_id)


class _NoSpan:
    """What `with` gets when the face has no tracing: a span that records nothing."""

    def __enter__(self) -> Any:
        return trace.get_current_span()

    def __exit__(self, *_: Any) -> None:
        return None


def _trace_id(span: Any) -> str:
    """The trace id of `span`, else of the caller's ``traceparent`` (tracing off), else ""."""
    for ctx in (span.get_span_context(), trace.get_current_span().get_span_context()):
        if ctx.is_valid:
            return trace.format_trace_id(ctx.trace_id)
    return ""

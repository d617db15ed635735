"""The client interceptor: a CLIENT span per call to a step, its context sent as ``traceparent``.

A standard ``grpc.UnaryUnaryClientInterceptor``, so :class:`stepsvc.routing.forward.Forwarder` and
``grpc.intercept_channel`` take it (the contrib client interceptor is a ``grpcext`` one they
cannot use). Propagation uses the globally configured propagator, injected here once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from stepsvc.telemetry.spans import mark_error, rpc_attributes, set_rpc_status


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
                                       attributes=rpc_attributes(method))
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
                set_rpc_status(span, code, done.details())
            finally:
                span.end()

        call.add_done_callback(finish)
        return call

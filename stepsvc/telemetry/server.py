"""The server interceptor: a SERVER span per StepService call, in the caller's trace.

Our own instead of opentelemetry-instrumentation-grpc's: the contrib server interceptor names
spans with a leading ``/`` (the RPC semantic conventions say ``package.Service/Method``) and
leaves the status unset when a handler raises. Propagation uses the globally configured
propagator (``OTEL_PROPAGATORS``, W3C tracecontext and baggage by default), extracted here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from stepsvc.telemetry.filters import behavior_of, call_code, call_details, is_step_call, rewrap
from stepsvc.telemetry.spans import rpc_attributes, set_rpc_status


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
        if not is_step_call(method, handler):
            return handler
        behavior = behavior_of(handler)
        tracer = self._tracer
        name = method.lstrip("/")
        attributes = rpc_attributes(method)

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
                        if type(exc) is not Exception:  # bare Exception = context.abort
                            span.record_exception(exc)
                        set_rpc_status(span, call_code(context, raised=True),
                                       call_details(context) or str(exc))
                        raise
                    set_rpc_status(span, call_code(context, raised=False),
                                   call_details(context))
                    return response
            finally:
                otel_context.detach(token)

        return rewrap(handler, traced)

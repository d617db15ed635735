"""Which gRPC calls telemetry looks at, and how a finished call's status is read.

Shared by the tracing interceptor (:mod:`stepsvc.telemetry.server`) and the metrics interceptor
(:mod:`stepsvc.telemetry.metrics`), so a call that has a span is exactly a call that is counted, and both
report the same status code for it.
"""

from __future__ import annotations

from typing import Any

import grpc

from stepsvc.protocol import DESCRIBE_METHOD, SERVICE_PREFIX

#: StepService calls that process no image (a client asking what the pipeline is): not counted.
UNMETERED_METHODS = frozenset({DESCRIBE_METHOD})


def is_step_call(method: str, handler: Any) -> bool:
    """Whether a call to `method`, handled by `handler` (an ``RpcMethodHandler`` or None), is
    a StepService call (health probes and reflection are not requests) with one response: the only kind telemetry wraps. Process is served as
    client-streaming (one message, read after admission: see stepsvc.step.server), so its
    behavior takes a request iterator; wrappers keep the handler's kind (:func:`rewrap`)."""
    return (handler is not None and method.startswith(SERVICE_PREFIX)
            and method not in UNMETERED_METHODS and not handler.response_streaming)


def behavior_of(handler: Any) -> Any:
    """The handler's behavior: ``(request or request iterator, context) -> response``."""
    return handler.stream_unary if handler.request_streaming else handler.unary_unary


def rewrap(handler: Any, behavior: Any) -> Any:
    """A handler of the same kind and (de)serializers as `handler` running `behavior`."""
    make = (grpc.stream_unary_rpc_method_handler if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler)
    return make(behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def call_code(context: grpc.ServicerContext, *, raised: bool) -> grpc.StatusCode:
    """The status a server call ended with, as its caller saw it.

    The code the handler set or aborted with; else, for a call no longer active (its caller
    cancelled, or its deadline passed, before the answer), CANCELLED or DEADLINE_EXCEEDED —
    a caller that goes away is not a server error, whatever reading its request raised;
    else OK for a call that returned and UNKNOWN for one that raised (what gRPC sends then).
    """
    code = getattr(context, "code", None)
    value = code() if callable(code) else None
    if value is not None:
        return value  # type: ignore[no-any-return]
    gone = _caller_gone(context)
    if gone is not None:
        return gone
    return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK


def _caller_gone(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    is_active = getattr(context, "is_active", None)
    if not callable(is_active) or is_active():
        return None
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def call_details(context: grpc.ServicerContext) -> str | None:
    """The status details the handler set or aborted with, as text (None when none)."""
    details = getattr(context, "details", None)
    value = details() if callable(details) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value  # type: ignore[no-any-return]

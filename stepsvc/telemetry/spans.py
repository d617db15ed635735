"""What stepchain's spans say: attribute keys, step attributes, error and gRPC status marking.

Used by the interceptors, the step's telemetry observer and the CLI's root span; no SDK needed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from stepsvc.limits import MAX_REQUEST_ID_BYTES

#: Instrumentation scope of every stepchain span.
TRACER_NAME = "stepchain"

#: Span attribute keys stepchain sets (documented in docs/tracing-metrics.md).
ATTR_PIPELINE_ID = "stepchain.pipeline_id"
ATTR_STEP_ID = "stepchain.step_id"
ATTR_STEP_TYPE = "stepchain.step_type"
ATTR_THREADS = "stepchain.threads"
ATTR_PIXELS = "stepchain.pixels"
ATTR_MEGAPIXELS_PER_SECOND = "stepchain.megapixels_per_second"
ATTR_REQUEST_ID = "stepchain.request_id"
#: Which code computed the step: the kernel's canonical name, its package and version
#: (``stepchain`` for a built-in, the plugin's distribution otherwise).
ATTR_KERNEL = "stepchain.kernel"
ATTR_KERNEL_PACKAGE = "stepchain.kernel.package"
ATTR_KERNEL_VERSION = "stepchain.kernel.version"


@functools.lru_cache(maxsize=64)
def kernel_identity(step_type: str) -> dict[str, str] | None:
    """``{"kernel", "package", "version"}`` of a step's kernel (built-in or plugin), or None
    for a type this process does not know (a step's config refuses those before it serves)."""
    from native.registry import entry

    try:
        e = entry(step_type)
    except ValueError:
        return None
    return {"kernel": e.spec.name, "package": e.package, "version": e.version}


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
    kernel = kernel_identity(step_type)
    if kernel is not None:
        attributes.update({ATTR_KERNEL: kernel["kernel"], ATTR_KERNEL_PACKAGE: kernel["package"],
                           ATTR_KERNEL_VERSION: kernel["version"]})
    if request_id:  # a request refused before the step generated its id has none
        # bounded: a request refused for an oversized request_id still gets a span
        attributes[ATTR_REQUEST_ID] = bounded(request_id, MAX_REQUEST_ID_BYTES)
    if kernel_seconds > 0:
        attributes[ATTR_MEGAPIXELS_PER_SECOND] = round(pixels / 1e6 / kernel_seconds, 3)
    return attributes


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (never inside a character), "…" marking a
    cut: what a span or log may carry of a value a client chose."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + "…"


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



def rpc_attributes(method: str) -> dict[str, Any]:
    """The RPC semantic-convention attributes of a call to `method` (``/pkg.Service/Method``)."""
    service, _, rpc_method = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}


#: Codes that are not an error of the step that answered them: OK, and a caller's own cancel
#: (OpenTelemetry's RPC conventions leave a server span's status unset for it as well).
NOT_ERRORS = frozenset({grpc.StatusCode.OK, grpc.StatusCode.CANCELLED})


def set_rpc_status(span: Span, code: grpc.StatusCode, details: str | None) -> None:
    """Records a call's gRPC status on `span`: the code attribute, and ERROR with the details
    unless the code is OK or CANCELLED (the caller went away: an event says so instead)."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code == grpc.StatusCode.CANCELLED:
        span.add_event("cancelled by the caller", {"rpc.grpc.status_code": code.value[0]})
    if code not in NOT_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))

"""A request's header checked against the step's limits, before a pixel is decoded.

Pure functions of the header and the step's facts; each raises a
:class:`~stepsvc.step.refusals.StepAbort` whose message says what was wrong and what is
allowed (the flag to change, where there is one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from stepchain.v1 import step_pb2

from native.registry import MAX_THREADS, default_threads, parse_schedule
from stepsvc.frames import codec
from stepsvc.limits import (
    MAX_LABEL_KEY_BYTES,
    MAX_LABEL_VALUE_BYTES,
    MAX_LABELS,
    MAX_REQUEST_ID_BYTES,
    MIB,
)
from stepsvc.protocol import OVERRIDE_FIELDS
from stepsvc.step.refusals import StepAbort

#: Room left in the last step's response for the timings every step appends on the way back
#: (~150 bytes each).
RESPONSE_HEADROOM = 4096
#: Upper bound of an Image field's wire bytes besides its data: two tags with 5-byte lengths,
#: four varint fields (<= 11 bytes each with its tag).
IMAGE_FIELD_OVERHEAD = 64
#: Upper bound of what a measuring kernel (classify) adds to a message: its labels, and its
#: measures in the last step's response.
MEASURES_HEADROOM = 512
#: Route ids a routing-loop message shows at each end; the rest is counted, not echoed (the
#: message travels in a header, which gRPC caps at 16 KiB by default).
ROUTE_SHOWN = 4


@dataclass(frozen=True)
class ExecSettings:
    """How the kernel runs for one request: the step's own settings, or the overrides."""

    #: 0 in a step's own settings: OMP_NUM_THREADS or all cores (native.default_threads).
    threads: int
    passes: int
    schedule: str
    #: Rows per OpenMP chunk; 0: the kernel's own (no override replaces the step's).
    chunk: int = 0


def exec_settings(overrides: step_pb2.Overrides, own: ExecSettings,
                  max_passes: int) -> ExecSettings:
    """The request's overrides checked, over the step's `own` settings (0 or "" = keep)."""
    unknown = unknown_field_numbers(overrides)
    if unknown:
        known = ", ".join(f"{name} ({number})" for name, number in OVERRIDE_FIELDS)
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"overrides has field number(s) {unknown} this step does not know; "
                        f"known: {known}")
    if overrides.threads and not 1 <= overrides.threads <= MAX_THREADS:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"overrides.threads must be 1..{MAX_THREADS} (0 = the step's own "
                        f"setting), got {overrides.threads}")
    if overrides.passes and not 1 <= overrides.passes <= max_passes:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"overrides.passes must be 1..{max_passes} (this step's "
                        f"--max-passes {max_passes}; 0 = the step's own setting), "
                        f"got {overrides.passes}")
    if overrides.schedule:
        try:
            parse_schedule(overrides.schedule, where="overrides.schedule")
        except ValueError as exc:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{exc} (empty = the step's own setting)") from None
    return ExecSettings(threads=overrides.threads or own.threads or default_threads(),
                        passes=overrides.passes or own.passes,
                        schedule=overrides.schedule or own.schedule, chunk=own.chunk)


def check_output_request(request: step_pb2.ProcessRequest) -> None:
    """The encoding and quality the caller asks for are ones this step can produce."""
    if request.output_encoding not in codec.ENCODING_NAMES:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"output_encoding {request.output_encoding} is unknown; use "
                        "IMAGE_ENCODING_RAW, IMAGE_ENCODING_PNG or IMAGE_ENCODING_JPEG")
    if request.jpeg_quality > 100:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"jpeg_quality must be 1..100 (0 = {codec.DEFAULT_JPEG_QUALITY}), "
                        f"got {request.jpeg_quality}")


def check_no_loop(step_id: int, route: Sequence[int]) -> None:
    """A step that already ran for this request refuses it (a cycle in next_step)."""
    if step_id in route:
        raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"routing loop: step {step_id} already ran for this request "
                        f"(route {describe_route(route)}); check next_step in the pipeline")


def check_header_bounds(request_id: str, labels: Mapping[str, str], *,
                        from_a_step: bool) -> None:
    """The request_id and labels a client chose are within the bounds step.proto states
    (every step carries them and echoes them; request_id goes into traces): INVALID_ARGUMENT
    naming the field and the bound, never echoing the value. A request from a step (its route
    is not empty) may carry twice MAX_LABELS: the labels classify steps added on the way."""
    size = len(request_id.encode("utf-8", "replace"))
    if size > MAX_REQUEST_ID_BYTES:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"request_id is {size} bytes; at most {MAX_REQUEST_ID_BYTES} (UTF-8) are "
                        "allowed (an idempotency key such as a UUID; empty = one is generated)")
    if _has_control_characters(request_id):
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        "request_id has control characters; use printable characters")
    most = 2 * MAX_LABELS if from_a_step else MAX_LABELS
    if len(labels) > most:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"labels has {len(labels)} entries; at most {most} are allowed")
    for key, value in labels.items():
        key_size = len(key.encode("utf-8", "replace"))
        value_size = len(value.encode("utf-8", "replace"))
        if not 1 <= key_size <= MAX_LABEL_KEY_BYTES:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"labels: a key is {key_size} bytes; keys are 1..{MAX_LABEL_KEY_BYTES} "
                            "bytes (UTF-8)")
        shown = f"labels[{key[:32]!r}{'...' if len(key) > 32 else ''}]"
        if value_size > MAX_LABEL_VALUE_BYTES:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{shown} is {value_size} bytes; values are at most "
                            f"{MAX_LABEL_VALUE_BYTES} bytes (UTF-8)")
        if _has_control_characters(key) or _has_control_characters(value):
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{shown}: a key or value has control characters; use printable "
                            "characters")


def _has_control_characters(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def describe_route(route: Sequence[int]) -> str:
    """A route for a message, bounded: short ones whole, long ones by their ends and length."""
    if len(route) <= 2 * ROUTE_SHOWN:
        return str(list(route))
    head = ", ".join(str(i) for i in route[:ROUTE_SHOWN])
    tail = ", ".join(str(i) for i in route[-ROUTE_SHOWN:])
    return f"[{head}, ... {tail}] ({len(route)} steps)"


def check_message_size(shape: tuple[int, int, int], encoding: int, size: int, what: str,
                       max_message_bytes: int, headroom: int = 0) -> None:
    """Refuses (RESOURCE_EXHAUSTED) a message gRPC would not send.

    Without this the transport fails instead, and the error names the step that would have
    received the message rather than the one whose output is too large. `size` is the message
    without its image plus the image bytes; IMAGE_FIELD_OVERHEAD covers the image's own tags,
    lengths and dimensions, so the message is never serialized here.
    """
    size += IMAGE_FIELD_OVERHEAD
    if size + headroom <= max_message_bytes:
        return
    h, w, c = shape
    raise StepAbort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"its output image {w}x{h}x{c} ({codec.encoding_name(encoding)}) makes a {size}-byte "
        f"{what}; the largest gRPC message is {max_message_bytes} bytes (--max-message-mb "
        f"{max_message_bytes // MIB}); make the output smaller or raise --max-message-mb on "
        "every step")


def unknown_field_numbers(msg: Any) -> list[int]:
    """Field numbers `msg` carries that this build's proto does not know (a newer client's)."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # older protobuf: unknown fields cannot be inspected
        return []
    return sorted({field.field_number for field in UnknownFieldSet(msg)})

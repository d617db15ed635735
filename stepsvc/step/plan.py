"""A request's plan, made once from its header before a pixel is decoded: how the kernel runs,
the output's shape, the memory it needs, whether its output fits a message, and where it may
go next -- from one snapshot of discovery.

:class:`StepFacts` is what a step knows of itself before any request (its kernel, parameters,
exec settings and limits), computed once when the servicer starts; :func:`plan_request` is a
pure function of those facts, the request's header and the active steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from stepchain.v1 import step_pb2

import native
from native.registry import EXEC_PARAM_NAMES
from native.spec import KernelSpec
from stepsvc.frames import codec, wire
from stepsvc.routing.forward import Candidate
from stepsvc.routing.router import choose_next_step, is_last_step
from stepsvc.step import memory_budget
from stepsvc.step.checks import (
    MEASURES_HEADROOM,
    RESPONSE_HEADROOM,
    ExecSettings,
    check_header_bounds,
    check_message_size,
    check_no_loop,
    check_output_request,
    exec_settings,
)
from stepsvc.step.config import PipelineConfig, StepSpec
from stepsvc.step.refusals import StepAbort, refusal


@dataclass(frozen=True)
class StepFacts:
    """What one step is, independent of any request."""

    step: StepSpec
    #: How messages name the step: ``step 1 (gaussian_blur)``.
    where: str
    #: Step id -> type, for naming candidates in messages.
    types: Mapping[int, str]
    #: The kernel's parameters, without the exec settings (native.registry.EXEC_PARAMS).
    params: Mapping[str, Any]
    #: The step's own exec settings, which per-request overrides replace.
    own: ExecSettings
    #: A measuring kernel (classify) passes its input through and adds labels.
    measures: bool
    last: bool
    #: The kernel's specification (built-in or plugin) and its parameters validated once,
    #: defaults filled in: they size the output before a pixel is decoded.
    spec: KernelSpec
    checked: Mapping[str, Any]
    max_pixels: int
    max_passes: int
    max_message_bytes: int

    @classmethod
    def of(cls, config: PipelineConfig, *, max_pixels: int, max_passes: int,
           max_message_bytes: int) -> StepFacts:
        step = config.this_step()
        params = {k: v for k, v in step.params.items() if k not in EXEC_PARAM_NAMES}
        own = ExecSettings(threads=int(step.params.get("threads") or 0),
                           passes=int(step.params.get("passes", 1)),
                           schedule=str(step.params.get("schedule", "static")),
                           chunk=int(step.params.get("chunk") or 0))
        return cls(step=step, where=f"step {step.id} ({step.type})",
                   types={s.id: s.type for s in config.steps}, params=params, own=own,
                   measures=native.output_kind(step.type) == "measure",
                   last=is_last_step(step),
                   spec=native.registry.entry(step.type).spec,
                   checked=native.validate_params(step.type, params, allow_exec=False),
                   max_pixels=max_pixels, max_passes=max_passes,
                   max_message_bytes=max_message_bytes)

    @property
    def bounded(self) -> bool:
        """The kernel declares only a bound on its output: it cannot write into a frame sized
        beforehand, so the step sizes the next frame from the result instead."""
        return self.spec.output_bound and not self.measures

    def output_shape(self, h: int, w: int, c: int) -> tuple[int, int, int]:
        """The kernel's output shape (or its bound) for an `h` x `w` x `c` input, from its
        specification; ValueError past the size any kernel may produce."""
        out = self.spec.shape_for((h, w, c), self.checked)
        native.check_size(out[0], out[1], name=f"{self.spec.name} output")
        return out

    def candidates(self, active: Mapping[int, str],
                   labels: Mapping[str, str]) -> list[Candidate]:
        """The next steps to try, in the router's order, from one snapshot of discovery."""
        return [Candidate(i, self.types.get(i, "?"), active[i])
                for i in choose_next_step(self.step, active.keys(), labels)]


@dataclass(frozen=True)
class RequestPlan:
    """Everything about one request that its header decides (see the module docstring)."""

    request_id: str
    settings: ExecSettings
    #: The input's and the output's shape (h, w, c); None when the header cannot be read: the
    #: decode phase refuses the request with the same check (and the trace shows it there).
    in_shape: tuple[int, int, int] | None
    out_shape: tuple[int, int, int] | None
    #: Bytes the request holds at its peak (memory budget).
    need: int
    #: The active steps when the request arrived: its route is chosen from these alone.
    active: Mapping[int, str]

    def next_header(self, facts: StepFacts, request: step_pb2.ProcessRequest,
                    labels: Mapping[str, str]) -> step_pb2.ProcessRequest:
        """The request for the next step, without its image."""
        header = step_pb2.ProcessRequest(
            request_id=self.request_id, output_encoding=request.output_encoding,
            jpeg_quality=request.jpeg_quality, route=[*request.route, facts.step.id],
            labels=labels)
        header.overrides.CopyFrom(request.overrides)
        return header


def plan_request(facts: StepFacts, view: wire.RequestView,
                 active: Mapping[int, str]) -> RequestPlan:
    """The plan of one request; StepAbort for a request the step refuses from its header."""
    request = view.header
    check_header_bounds(request.request_id, request.labels, from_a_step=bool(request.route))
    check_no_loop(facts.step.id, request.route)
    settings = exec_settings(request.overrides, facts.own, facts.max_passes)
    check_output_request(request)
    request_id = request.request_id or uuid.uuid4().hex
    header = _input_header(facts, view)
    if header is None:
        return RequestPlan(request_id, settings, None, None, 0, active)
    h, w, c = in_shape = header.height, header.width, header.channels
    out_shape = _output_shape(facts, h, w, c)
    oh, ow, oc = out_shape
    pixels_out = oh * ow * oc
    plan = RequestPlan(request_id, settings, in_shape, out_shape, 0, active)
    if not facts.last:  # forwarded as RAW pixels
        next_header = plan.next_header(facts, request, request.labels)
        check_message_size(out_shape, codec.RAW,
                           next_header.ByteSize() + pixels_out
                           + (MEASURES_HEADROOM if facts.measures else 0),
                           "request for the next step", facts.max_message_bytes)
    elif request.output_encoding == codec.RAW:  # encoded answers are checked once encoded
        head = step_pb2.ProcessResponse(request_id=request_id, labels=request.labels)
        check_message_size(out_shape, codec.RAW,
                           head.ByteSize() + pixels_out
                           + (MEASURES_HEADROOM if facts.measures else 0),
                           "response", facts.max_message_bytes, RESPONSE_HEADROOM)
    need = memory_budget.request_bytes(
        wire=len(view.raw), width=w, height=h, channels=c,
        encoded=bool(request.image.encoding), out_shape=out_shape,
        kernel=native.canonical_name(facts.step.type),
        answers_encoded=facts.last and request.output_encoding != codec.RAW,
        forwards=not facts.last) + header.decode_bytes
    return RequestPlan(request_id, settings, in_shape, out_shape, need, active)


def _input_header(facts: StepFacts, view: wire.RequestView) -> codec.ImageHeader | None:
    """The decoded shape and what decoding costs, or None for a header decode refuses."""
    image = view.header.image
    try:
        if image.HasField("shm"):  # RAW pixels in a shared segment, opened at decode
            codec.check_pixels(image.width, image.height, facts.max_pixels)
            return codec.ImageHeader(image.height, image.width, max(image.channels, 1), 0)
        return codec.read_header(image, max_pixels=facts.max_pixels, data=view.data)
    except codec.ImageError:
        return None


def _output_shape(facts: StepFacts, h: int, w: int, c: int) -> tuple[int, int, int]:
    """The output shape, refused (RESOURCE_EXHAUSTED) before the kernel allocates an output
    over --max-pixels (a kernel that declares an output shape may make it larger than its
    input; the input itself is already checked)."""
    try:
        out = facts.output_shape(h, w, c)
    except ValueError as exc:  # beyond what any kernel may produce
        raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{exc}; this step produces at most {facts.max_pixels} pixels "
                        "(--max-pixels)") from None
    if facts.spec.output_shape is not None:
        try:
            codec.check_pixels(out[1], out[0], facts.max_pixels,
                               where=f"{facts.where}: the output for a {w}x{h} input")
        except codec.PixelLimitError as exc:
            raise refusal(exc) from None
    return out

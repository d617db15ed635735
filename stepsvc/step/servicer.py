"""The StepService servicer: one request's path through a step, in the order it happens.

1. **Admission** (:meth:`StepServicer.admitted`): a slot is taken when the call starts, before
   its request message is read, and given back when the answer is built -- one context for
   the gRPC method and the protobuf API alike. A refusal answers at once, naming the step.
2. **Plan** (:func:`~stepsvc.step.plan.plan_request`): from the header alone, once -- exec
   settings, output shape, memory need, message size, and the active next steps (one
   snapshot of discovery).
3. **Decode**, **kernel** (:func:`~stepsvc.step.kernel.run_kernel`), then **encode** (last
   step) or **forward** to the first candidate that takes it (:mod:`stepsvc.routing.forward`).
4. **Answer** (:mod:`~stepsvc.step.answer`): this step's timing put before the downstream
   response's bytes, never parsed and re-serialized.

Every phase is timed in one place (:meth:`StepServicer._phase`) and reported to a
:class:`~stepsvc.step.hooks.StepObserver`; every failure is a
:class:`~stepsvc.step.refusals.StepAbort` answered by :func:`~stepsvc.step.refusals.abort`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.frames import codec, wire
from stepsvc.frames.outgoing import OutgoingFrame
from stepsvc.frames.shm import FrameStore
from stepsvc.limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PASSES,
    DEFAULT_MAX_PIXELS,
    MIB,
)
from stepsvc.protocol import DOMAIN_KEY, PROCESS_METHOD
from stepsvc.routing.forward import Candidate, Forwarder, ForwardError
from stepsvc.step import memory_budget
from stepsvc.step.admission import Admission, Draining, QueueFull, QueueTimeout
from stepsvc.step.answer import Answer, response_bytes
from stepsvc.step.checks import RESPONSE_HEADROOM, check_message_size
from stepsvc.step.config import PipelineConfig
from stepsvc.step.hooks import ActiveSteps, StepObserver
from stepsvc.step.kernel import run_kernel
from stepsvc.step.memory_budget import MemoryBudget, MemoryExhausted
from stepsvc.step.plan import RequestPlan, StepFacts, plan_request
from stepsvc.step.refusals import StepAbort, abort, forward_refusal, internal, refusal
from stepsvc.step.segments import input_pixels, reply_area

log = logging.getLogger("stepchain.step")

#: Deadline given to the next hop when the caller set none, so a stuck step never hangs us.
DEFAULT_FORWARD_TIMEOUT_S = 60.0
_NO_DEADLINE = 1e8  # grpc reports a huge remaining time when the caller set no deadline


@dataclass(frozen=True)
class Ticket:
    """An admitted call: the seconds it waited for its slot, and when its deadline passes
    (``time.perf_counter()`` time; None: the caller set none)."""

    waited: float
    expires: float | None


def host_name() -> str:
    """The pod name in Kubernetes (POD_NAME), the host name otherwise."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class StepServicer(step_pb2_grpc.StepServiceServicer):
    """Runs one pipeline step; forwards to the next step found through `discovery`."""

    def __init__(self, config: PipelineConfig, discovery: ActiveSteps, admission: Admission,
                 forwarder: Forwarder, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_passes: int = DEFAULT_MAX_PASSES,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 forward_timeout: float = DEFAULT_FORWARD_TIMEOUT_S,
                 observer: StepObserver | None = None,
                 frames: FrameStore | None = None,
                 memory: MemoryBudget | None = None) -> None:
        self.config = config
        self.facts = StepFacts.of(config, max_pixels=max_pixels, max_passes=max_passes,
                                  max_message_bytes=max_message_bytes)
        self.step = self.facts.step
        #: Shared memory with co-located steps; None = pixels always travel as bytes.
        self.frames = frames
        #: What running requests may hold (decoded input, output, buffers), in bytes.
        self.memory = memory or MemoryBudget(memory_budget.default_memory_mb() * MIB)
        self.discovery = discovery
        self.admission = admission
        self.forwarder = forwarder
        self.max_pixels = max_pixels
        self.max_passes = max_passes
        self.max_message_bytes = max_message_bytes
        self.forward_timeout = forward_timeout
        self.observer = observer or StepObserver()
        self.host = host_name()

    # -- the RPCs ------------------------------------------------------------------------------

    def Describe(self, request: step_pb2.DescribeRequest,
                 context: grpc.ServicerContext) -> step_pb2.DescribeResponse:
        """This step's pipeline graph and limits (what a tiling client needs to pad tiles)."""
        return step_pb2.DescribeResponse(
            pipeline_id=self.config.pipeline_id, step_id=self.step.id,
            config_json=self.config.model_dump_json(), max_pixels=self.max_pixels,
            max_message_bytes=self.max_message_bytes)

    def Process(self, request: step_pb2.ProcessRequest,
                context: grpc.ServicerContext) -> step_pb2.ProcessResponse:
        """The protobuf-message API (in-process callers); the same path as the gRPC method."""
        view = wire.parse_request(request.SerializeToString())
        return wire.parse_response(self.process_call(iter((view,)), context).payload)

    def process_call(self, requests: Iterator[wire.RequestView],
                     context: grpc.ServicerContext) -> wire.ResponseBytes:
        """``StepService/Process`` as served: admitted when the call starts, so admission
        decides before the request's bytes are read (refusing at once, by name) and calls
        reading their bytes count against the step's limits, not gRPC's thread pool."""
        with self.admitted(context) as ticket:
            view = next(requests, None)
            if view is None:
                view = wire.RequestView(b"", error="the call carried no request message")
            return self._answer(view, context, ticket)

    # -- admission -----------------------------------------------------------------------------

    @contextmanager
    def admitted(self, context: grpc.ServicerContext) -> Iterator[Ticket]:
        """Holds an admission slot for the body of a ``with``; yields its :class:`Ticket`. A
        call admission refuses (draining, queue full, expected wait longer than its deadline)
        is answered at once, naming the step and its limits. The caller's deadline is read
        here, once: the memory wait and the forward get what is left of it."""
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > _NO_DEADLINE else remaining
        started = time.perf_counter()
        expires = None if deadline is None else started + deadline
        with ExitStack() as slot:
            try:
                with self.observer.phase("queue"):
                    waited = slot.enter_context(self.admission.slot(deadline))
            except (Draining, QueueFull, QueueTimeout) as exc:
                failure = refusal(exc)
                waited_ms = _ms(time.perf_counter() - started)
                timing = self._timing(queue_wait_ms=waited_ms, total_ms=waited_ms)
                # refused before the request was read: its header is not known
                self._finished(failure.code, timing, step_pb2.ProcessRequest(), "")
                abort(context, failure, self.facts.where, self.step.id)
            yield Ticket(waited, expires)

    # -- one admitted request ------------------------------------------------------------------

    def _answer(self, view: wire.RequestView, context: grpc.ServicerContext,
                ticket: Ticket) -> wire.ResponseBytes:
        if self.frames is not None:  # where this step reads shared memory (senders cache it)
            send = getattr(context, "send_initial_metadata", None)
            if send is not None:
                send(((DOMAIN_KEY, self.frames.domain),))
        started = time.perf_counter()
        timing = self._timing(queue_wait_ms=_ms(ticket.waited))
        header = view.header
        request_id = header.request_id
        with ExitStack() as cleanup:  # shared-memory segments live until the answer is built
            try:
                if view.error:
                    raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{PROCESS_METHOD.lstrip('/')}: {view.error}")
                plan = plan_request(self.facts, view, self.discovery.active())
                request_id = plan.request_id
                timing.threads = plan.settings.threads
                with self._memory(plan, ticket):
                    answer = self._run(view, plan, context, ticket, timing, cleanup)
                failure = None
            except StepAbort as exc:
                failure = exc
            except Exception as exc:  # never crash the server; report and keep serving
                log.exception("%s: unexpected error", self.facts.where)
                failure = internal(exc)
            timing.total_ms = _ms(time.perf_counter() - started)
            trace_id = self._finished(failure.code if failure else grpc.StatusCode.OK, timing,
                                      header, request_id)
            if failure is not None:
                abort(context, failure, self.facts.where, self.step.id)
            # The caller's trace id is the entry step's (one trace per request): steps
            # further down add none, so the response carries it once.
            try:
                return wire.ResponseBytes(
                    response_bytes(answer, timing, trace_id if not header.route else ""))
            except StepAbort as exc:
                abort(context, exc, self.facts.where, self.step.id)

    @contextmanager
    def _memory(self, plan: RequestPlan, ticket: Ticket) -> Iterator[None]:
        """The request's bytes in the memory budget: what does not fit waits as long as the
        deadline allows."""
        try:
            self.memory.reserve(plan.need, self._time_left(ticket))
        except MemoryExhausted as exc:
            raise refusal(exc) from None
        try:
            yield
        finally:
            self.memory.release(plan.need)

    def _run(self, view: wire.RequestView, plan: RequestPlan, context: grpc.ServicerContext,
             ticket: Ticket, timing: step_pb2.StepTiming, cleanup: ExitStack) -> Answer:
        request, facts = view.header, self.facts
        with self._phase("decode", timing, "decode_ms" if request.image.encoding else None):
            data = input_pixels(view, self.frames, facts.max_pixels, cleanup, facts.where)
            try:
                img = codec.decode_image(request.image, max_pixels=facts.max_pixels, data=data)
            except codec.ImageError as exc:
                raise refusal(exc) from None
        if request.image.encoding:  # the header says what the server found (telemetry)
            request.image.height, request.image.width = img.shape[0], img.shape[1]
        if img.shape != plan.in_shape:
            raise StepAbort(grpc.StatusCode.INTERNAL,
                            f"the image decoded as {img.shape}, its header said "
                            f"{plan.in_shape}")
        assert plan.out_shape is not None  # a header that could not be read failed to decode
        labels = dict(request.labels)
        candidates: list[Candidate] = []
        forward: OutgoingFrame | None = None
        reply: np.ndarray | None = None
        target: np.ndarray | None = None  # where the kernel writes, if not a new array
        if facts.last and not facts.bounded:
            reply = reply_area(request, plan.out_shape, self.frames, cleanup)
            target = None if facts.measures else reply  # into the caller's reply segment
        elif not facts.last and not facts.measures and not facts.bounded:
            # The kernel writes straight into the frame for the next step: a shared-memory
            # segment when the first candidate reads ours, else the outgoing request's bytes.
            candidates = facts.candidates(plan.active, labels)
            forward = self._frame(request, plan, labels, candidates, cleanup)
            target = forward.pixels
        with self._phase("kernel", timing, "kernel_ms"):
            result = run_kernel(facts, img, plan.settings, context, self.admission, target)
        measures: dict[str, float] = {}
        if facts.measures:
            labels.update(result["labels"])
            measures.update(result["measures"])
            out = img
        else:
            out = result
        if facts.last:
            return self._final(request, plan, labels, measures, out, reply, timing)

        source_pixels = None
        if forward is None:
            # classify: the image passes through unchanged, routed by labels; a kernel with
            # only a bound on its output: the frame takes the result's own shape
            candidates = facts.candidates(plan.active, labels)
            passed = facts.measures and request.image.HasField("shm")
            forward = self._frame(request, plan, labels, candidates, cleanup,
                                  request.image.shm if passed else None, out.shape)
            source_pixels = out
            if forward.pixels.size:
                forward.pixels[...] = out
        frame = forward

        def payload(cand: Candidate) -> bytes:
            return frame.payload(self._shares_memory([cand]), source_pixels)

        with self._phase("forward", timing, "forward_ms"):
            downstream = self._forward(payload, candidates, plan, ticket, timing)
        return Answer(downstream=downstream, measures=measures, reply=frame.own_reply)

    def _frame(self, request: step_pb2.ProcessRequest, plan: RequestPlan,
               labels: Mapping[str, str], candidates: list[Candidate], cleanup: ExitStack,
               source: step_pb2.SharedFrame | None = None,
               shape: tuple[int, ...] | None = None) -> OutgoingFrame:
        """The frame for the next step (`shape`, else the plan's output shape): in shared
        memory when the first candidate reads ours (a pass-through step forwards the `source`
        segment it got as is), else as bytes."""
        shape = shape if shape is not None else plan.out_shape
        assert shape is not None
        shared = self._shares_memory(candidates)
        return OutgoingFrame(plan.next_header(self.facts, request, labels),
                             (shape[0], shape[1], shape[2]),
                             frames=self.frames, shared=shared, cleanup=cleanup,
                             source=source if shared else None,
                             reply=request.reply if request.HasField("reply") else None)

    def _final(self, request: step_pb2.ProcessRequest, plan: RequestPlan,
               labels: dict[str, str], measures: dict[str, float], out: np.ndarray,
               reply: np.ndarray | None, timing: step_pb2.StepTiming) -> Answer:
        """The last step's answer: the image in the caller's reply segment, or encoded."""
        head = step_pb2.ProcessResponse(request_id=plan.request_id, labels=labels,
                                        measures=measures)
        if reply is not None:
            if self.facts.measures:
                reply[...] = out
            h, w, c = reply.shape
            return Answer(head=head, image=step_pb2.Image(width=w, height=h, channels=c,
                                                          shm=request.reply))
        h, w, c = out.shape
        with self._phase("encode", timing, "encode_ms" if request.output_encoding else None):
            if request.output_encoding == codec.RAW:  # size checked in the plan
                body: memoryview | bytes = np.ascontiguousarray(out).data.cast("B")
                return Answer(head=head, image=step_pb2.Image(width=w, height=h, channels=c),
                              data=body)
            body, c = codec.encode_data(out, request.output_encoding,
                                        jpeg_quality=request.jpeg_quality)
        image = step_pb2.Image(width=w, height=h, channels=c, encoding=request.output_encoding)
        check_message_size((h, w, c), request.output_encoding, head.ByteSize() + len(body),
                           "response", self.max_message_bytes, RESPONSE_HEADROOM)
        return Answer(head=head, image=image, data=body)

    def _forward(self, payload: Callable[[Candidate], bytes], candidates: list[Candidate],
                 plan: RequestPlan, ticket: Ticket, timing: step_pb2.StepTiming) -> bytes:
        if not candidates:
            raise StepAbort(
                grpc.StatusCode.UNAVAILABLE,
                f"no active next step; candidates {self.step.next_step} are not in discovery "
                f"(active: {sorted(plan.active) or 'none'})")
        try:
            result = self.forwarder.forward(payload, candidates,
                                            timeout=self._time_left(ticket))
        except ForwardError as exc:
            timing.forward_attempts = exc.attempts
            raise forward_refusal(exc) from None
        timing.next_step = result.step_id
        timing.forward_attempts = result.attempts
        return result.response

    # -- helpers -------------------------------------------------------------------------------

    def _shares_memory(self, candidates: list[Candidate]) -> bool:
        """Whether the first of `candidates` reads this step's shared memory."""
        return (self.frames is not None and bool(candidates)
                and self.forwarder.domain(candidates[0].address) == self.frames.domain)

    def _timing(self, queue_wait_ms: float, total_ms: float = 0.0) -> step_pb2.StepTiming:
        return step_pb2.StepTiming(pipeline_id=self.config.pipeline_id, step_id=self.step.id,
                                   step_type=self.step.type, host=self.host,
                                   queue_wait_ms=queue_wait_ms, total_ms=total_ms)

    def _finished(self, code: grpc.StatusCode, timing: step_pb2.StepTiming,
                  request: step_pb2.ProcessRequest, request_id: str) -> str:
        """Tells the observer; returns the trace id it gives for the response."""
        try:
            return self.observer.finished(code=code, timing=timing, request=request,
                                          request_id=request_id) or ""
        except Exception:  # telemetry must never turn an answer into a failure
            log.exception("%s: observer.finished failed", self.facts.where)
            return ""

    @contextmanager
    def _phase(self, name: str, timing: step_pb2.StepTiming, field: str | None) -> Iterator[None]:
        """Times one phase into `timing.<field>` and lets the observer wrap it."""
        start = time.perf_counter()
        try:
            with self.observer.phase(name):
                yield
        finally:
            if field:
                setattr(timing, field, _ms(time.perf_counter() - start))

    def _time_left(self, ticket: Ticket) -> float:
        """Seconds left of the caller's deadline (the forward timeout when it set none)."""
        if ticket.expires is None:
            return self.forward_timeout
        remaining = ticket.expires - time.perf_counter()
        if remaining <= 0:
            raise StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "the request's deadline passed before the step could finish")
        return remaining


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


"""The StepService servicer: admit, decode, run the kernel, forward (or encode), time it all.

Requests and responses travel as bytes (:mod:`stepsvc.frames.wire`): the pixels are read as a view of
the received message, the kernel writes into the outgoing forward request, and the downstream
response goes back with this step's timing added as bytes, never parsed and re-serialized.
``Process`` keeps the protobuf-message API for in-process callers.

Every phase is measured in one place (:meth:`StepServicer._phase`) and reported to a
:class:`StepObserver`, which is where tracing and metrics hook in. Each failure maps to one gRPC
status code with a message that says what was wrong and what is allowed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
from stepchain.v1 import step_pb2, step_pb2_grpc

import native
from native.registry import MAX_THREADS, default_threads, parse_schedule
from stepsvc.frames import codec, wire
from stepsvc.frames.outgoing import OutgoingFrame
from stepsvc.frames.shm import DOMAIN_KEY, UNSHARED_KEY, BadHandle, FrameStore, NotShared, Segment
from stepsvc.limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PASSES,
    DEFAULT_MAX_PIXELS,
    MIB,
)
from stepsvc.routing.forward import (
    DRAINING_KEY,
    FAILED_STEP_KEY,
    Candidate,
    Forwarder,
    ForwardError,
    Payload,
)
from stepsvc.routing.router import choose_next_step, is_last_step
from stepsvc.step import memory_budget
from stepsvc.step.admission import Admission, Draining, QueueFull, QueueTimeout
from stepsvc.step.config import PipelineConfig
from stepsvc.step.memory_budget import MemoryBudget, MemoryExhausted

log = logging.getLogger("stepchain.step")

#: Deadline given to the next hop when the caller set none, so a stuck step never hangs us.
DEFAULT_FORWARD_TIMEOUT_S = 60.0
_NO_DEADLINE = 1e8  # grpc reports a huge remaining time when the caller set no deadline
#: Room left in the last step's response for the timings every step appends on the way back
#: (~150 bytes each).
RESPONSE_HEADROOM = 4096
#: Upper bound of an Image field's wire bytes besides its data: two tags with 5-byte lengths,
#: four varint fields (<= 11 bytes each with its tag).
IMAGE_FIELD_OVERHEAD = 64


class ActiveSteps(Protocol):
    """What the servicer needs from discovery: step id -> "host:port" of active steps."""

    def active(self) -> dict[int, str]: ...


class StepObserver:
    """Telemetry hooks; this default does nothing. Subclass to add spans and metrics."""

    def phase(self, name: str) -> AbstractContextManager[Any]:
        """Wraps one phase of a request: "queue", "decode", "kernel", "forward", "encode"."""
        return nullcontext()

    def finished(self, *, code: grpc.StatusCode, timing: step_pb2.StepTiming,
                 request: step_pb2.ProcessRequest,
                 response: step_pb2.ProcessResponse | None) -> None:
        """Called once per request with its final status and this step's timing."""


class StepAbort(Exception):
    """Ends a request with `code` and `message` (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = tuple(trailers)


@dataclass
class _Answer:
    """What a request produced, serialized once its timing is final (see :meth:`_respond`).

    The last step has `head` (request_id, labels, measures) and the image (`image` for its
    dimensions, `data` the pixels or encoded file); any other step has the downstream
    response's bytes (`downstream`) and its own `measures`, which go before them.
    """

    request_id: str
    head: step_pb2.ProcessResponse | None = None
    image: step_pb2.Image | None = None
    data: memoryview | bytes = b""
    downstream: bytes = b""
    measures: dict[str, float] | None = None
    #: This step's reply segment, passed down: a final image that came back in it is put
    #: inline here (the caller did not give a reply segment of its own).
    reply: Segment | None = None


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
        #: Shared memory with co-located steps; None = pixels always travel as bytes.
        self.frames = frames
        #: What running requests may hold (decoded input, output, buffers), in bytes.
        self.memory = memory or MemoryBudget(memory_budget.default_memory_mb() * MIB)
        self.step = config.this_step()
        self.discovery = discovery
        self.admission = admission
        self.forwarder = forwarder
        self.max_pixels = max_pixels
        self.max_passes = max_passes
        self.max_message_bytes = max_message_bytes
        self.forward_timeout = forward_timeout
        self.observer = observer or StepObserver()
        self.host = host_name()
        self._types = {s.id: s.type for s in config.steps}
        # the step's own exec settings are defaults that per-request overrides replace, so they
        # are split from the kernel's parameters once, here
        params = dict(self.step.params)
        self._step_threads: int | None = params.pop("threads", None)
        self._step_passes = int(params.pop("passes", 1))
        self._step_schedule = str(params.pop("schedule", "static"))
        self._kernel_params = params
        # resize is the one kernel whose output is larger than its input: its parameters are
        # fixed per step, so they are validated once for sizing outputs before allocating them
        self._resize_params = (native.validate_params("resize", params)
                               if self.step.type == "resize" else None)

    # -- the RPC -------------------------------------------------------------------------------

    def Describe(self, request: step_pb2.DescribeRequest,
                 context: grpc.ServicerContext) -> step_pb2.DescribeResponse:
        """This step's pipeline graph and limits (what a tiling client needs to pad tiles)."""
        return step_pb2.DescribeResponse(
            pipeline_id=self.config.pipeline_id, step_id=self.step.id,
            config_json=self.config.model_dump_json(), max_pixels=self.max_pixels,
            max_message_bytes=self.max_message_bytes)

    def admit(self, context: grpc.ServicerContext) -> float:
        """Takes an admission slot at the start of a call, before its request message is read;
        returns the seconds waited for it. A call admission refuses (draining, queue full,
        expected wait longer than its deadline) is aborted at once, naming the step and its
        limits: the answer does not wait for megabytes still on the wire, and calls reading
        their bytes are bounded by the step's own limits, not gRPC's. The caller gives the
        slot back with ``admission.release``."""
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > _NO_DEADLINE else remaining
        where = f"step {self.step.id} ({self.step.type})"
        started = time.perf_counter()
        try:
            with self.observer.phase("queue"):
                return self.admission.acquire(deadline)
        except Draining as exc:
            refusal = StepAbort(grpc.StatusCode.FAILED_PRECONDITION, f"{where}: {exc}",
                                ((DRAINING_KEY, "1"),))
        except QueueFull as exc:
            refusal = StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{where}: {exc}")
        except QueueTimeout as exc:
            refusal = StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{where}: {exc}")
        timing = step_pb2.StepTiming(
            pipeline_id=self.config.pipeline_id, step_id=self.step.id,
            step_type=self.step.type, host=self.host,
            queue_wait_ms=_ms(time.perf_counter() - started),
            total_ms=_ms(time.perf_counter() - started))
        try:  # refused before the request was read: its header is not known
            self.observer.finished(code=refusal.code, timing=timing,
                                   request=step_pb2.ProcessRequest(), response=None)
        except Exception:  # telemetry must never turn an answer into a failure
            log.exception("step %s: observer.finished failed", self.step.id)
        context.set_trailing_metadata((*refusal.trailers, (FAILED_STEP_KEY, str(self.step.id))))
        context.abort(refusal.code, refusal.message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    def Process(self, request: step_pb2.ProcessRequest,
                context: grpc.ServicerContext) -> step_pb2.ProcessResponse:
        """The protobuf-message API (in-process callers); the same path as the gRPC method."""
        raw = self.process_bytes(wire.parse_request(request.SerializeToString()), context)
        return wire.parse_response(raw.payload)

    def process_bytes(self, request: wire.RequestView, context: grpc.ServicerContext,
                      admitted: float | None = None) -> wire.ResponseBytes:
        """The gRPC method: a parsed request view in, the serialized response out.

        `admitted`: the seconds the call waited for the admission slot it already holds
        (:meth:`admit`); None = take one here."""
        if self.frames is not None:  # where this step reads shared memory (senders cache it)
            send = getattr(context, "send_initial_metadata", None)
            if send is not None:
                send(((DOMAIN_KEY, self.frames.domain),))
        with ExitStack() as cleanup:  # shared-memory segments live until the answer is built
            return self._process_bytes(request, context, cleanup, admitted)

    def _process_bytes(self, request: wire.RequestView, context: grpc.ServicerContext,
                       cleanup: ExitStack, admitted: float | None) -> wire.ResponseBytes:
        started = time.perf_counter()
        timing = step_pb2.StepTiming(
            pipeline_id=self.config.pipeline_id, step_id=self.step.id,
            step_type=self.step.type, host=self.host)
        answer: _Answer | None = None
        failure: StepAbort | None = None
        header = request.header
        probe: step_pb2.ProcessResponse | None = None
        try:
            if request.error:
                raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"step {self.step.id} ({self.step.type}): {PROCESS_METHOD}: "
                                f"{request.error}")
            answer = self._process(request, context, timing, cleanup, admitted)
            probe = step_pb2.ProcessResponse(request_id=answer.request_id)
        except StepAbort as abort:
            failure = abort
        except Exception as exc:  # never crash the server; report and keep serving
            log.exception("step %s (%s): unexpected error", self.step.id, self.step.type)
            failure = StepAbort(grpc.StatusCode.INTERNAL,
                                f"step {self.step.id} ({self.step.type}): unexpected error "
                                f"{type(exc).__name__}: {exc}")
        timing.total_ms = _ms(time.perf_counter() - started)
        code = failure.code if failure else grpc.StatusCode.OK
        try:
            self.observer.finished(code=code, timing=timing, request=header, response=probe)
        except Exception:  # telemetry must never turn an answer into a failure
            log.exception("step %s: observer.finished failed", self.step.id)
        if failure is not None:
            trailers, message = failure.trailers, failure.message
            if not any(key == FAILED_STEP_KEY for key, _ in trailers):
                # This step's own failure: the message names it, and the trailer tells
                # upstream steps to pass it back unchanged.
                name = f"step {self.step.id} ({self.step.type})"
                if not message.startswith(name):
                    message = f"{name}: {message}"
                trailers = (*trailers, (FAILED_STEP_KEY, str(self.step.id)))
            context.set_trailing_metadata(trailers)
            context.abort(failure.code, message)
        assert answer is not None and probe is not None
        # The caller's trace id is the entry step's (one trace per request): steps further
        # down add none, so the response carries it once.
        trace_id = probe.trace_id if not header.route else ""
        return wire.ResponseBytes(self._respond(answer, timing, trace_id))

    @staticmethod
    def _respond(answer: _Answer, timing: step_pb2.StepTiming, trace_id: str) -> bytes:
        """The serialized response: this step's timing goes first (timings are in execution
        order), the trace id last."""
        if answer.head is not None and answer.image is not None:
            answer.head.timings.append(timing)
            if trace_id:
                answer.head.trace_id = trace_id
            img = answer.image
            if img.HasField("shm"):  # the final image is in the caller's reply segment
                answer.head.image.CopyFrom(img)
                return answer.head.SerializeToString()
            return wire.response_bytes(answer.head, img.width, img.height, img.channels,
                                       img.encoding, answer.data)
        before = wire.response_fields(timing, answer.measures or {})
        after = wire.trace_id_field(trace_id)
        reply = answer.reply
        if reply is not None and wire.response_image(answer.downstream).HasField("shm"):
            image, payload = wire.inline_image(before, answer.downstream, after,
                                               reply.pixels.data.cast("B"))
            if (image.shm.name != reply.name or image.shm.token != reply.token
                    or image.width * image.height * image.channels != reply.size):
                raise StepAbort(grpc.StatusCode.INTERNAL,
                                f"the next step answered with a shared-memory image "
                                f"{image.shm.name!r} that is not this step's reply segment")
            return payload
        return wire.join_response(before, answer.downstream, after)

    def _process(self, view: wire.RequestView, context: grpc.ServicerContext,
                 timing: step_pb2.StepTiming, cleanup: ExitStack,
                 admitted: float | None) -> _Answer:
        request = view.header
        if self.admission.closed and admitted is None:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"step {self.step.id} ({self.step.type}) is draining (shutting down) "
                            "and takes no new requests; retry on another replica",
                            ((DRAINING_KEY, "1"),))
        if self.step.id in request.route:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"routing loop: step {self.step.id} already ran for this request "
                            f"(route {describe_route(request.route)}); check next_step in the "
                            "pipeline")
        # Cheap checks before taking a slot: a malformed request never waits in the queue.
        threads, passes, schedule = self._exec_settings(request)
        self._check_output(request)
        timing.threads = threads
        request_id = request.request_id or uuid.uuid4().hex
        # What the request will hold, from its header: refused here, before a pixel is decoded,
        # when its output cannot be sent or it could never fit the memory budget.
        need = self._memory_need(view)
        try:
            self.memory.check(need)
        except MemoryExhausted as exc:
            raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"step {self.step.id} ({self.step.type}): {exc}") from None
        deadline = self._remaining(context)

        if admitted is not None:  # the gRPC method took the slot before reading the request
            waited = admitted
            timing.queue_wait_ms = _ms(admitted)
        else:
            with self._phase("queue", timing, "queue_wait_ms"):
                waited = self._acquire(deadline)
        held = time.perf_counter()
        try:
            try:  # the slot's memory: what does not fit waits as long as the deadline allows
                self.memory.reserve(need, max(0.0, deadline - waited))
            except MemoryExhausted as exc:
                raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"step {self.step.id} ({self.step.type}): {exc}") from None
            try:
                return self._run(view, context, timing, cleanup, request_id, threads, passes,
                                 schedule)
            finally:
                self.memory.release(need)
        finally:
            if admitted is None:
                self.admission.release(time.perf_counter() - held)

    def _acquire(self, deadline: float) -> float:
        """An admission slot, or StepAbort naming the step (queue full, deadline, draining)."""
        try:
            return self.admission.acquire(deadline)
        except QueueFull as exc:
            raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"step {self.step.id} ({self.step.type}): {exc}") from None
        except QueueTimeout as exc:
            raise StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"step {self.step.id} ({self.step.type}): {exc}") from None
        except Draining as exc:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"step {self.step.id} ({self.step.type}): {exc}",
                            ((DRAINING_KEY, "1"),)) from None

    def _memory_need(self, view: wire.RequestView) -> int:
        """Bytes the request will hold at its peak, from its header (see memory_budget);
        refuses what cannot be decoded or whose output no message could carry."""
        request = view.header
        image = request.image
        try:
            if image.HasField("shm"):  # RAW pixels in a shared segment, checked in _pixels
                codec.check_pixels(image.width, image.height, self.max_pixels)
                header = codec.ImageHeader(image.height, image.width, max(image.channels, 1), 0)
            else:
                header = codec.read_header(image, max_pixels=self.max_pixels, data=view.data)
        except codec.ImageError:
            # A bad or oversized header costs nothing to hold: the decode phase refuses it with
            # the same check (and the trace shows it failing there).
            return 0
        h, w, c = header.height, header.width, header.channels
        self._check_output_size(h, w)
        last = is_last_step(self.step)
        measure_kind = native.output_kind(self.step.type) == "measure"
        out_shape = (h, w, c) if measure_kind else self._output_shape((h, w, c))
        oh, ow, oc = out_shape
        if not last:  # forwarded as RAW pixels
            self._check_message_size(step_pb2.Image(width=ow, height=oh, channels=oc),
                                     request.ByteSize() + oh * ow * oc,
                                     "request for the next step", 0)
        elif request.output_encoding == codec.RAW:
            self._check_message_size(step_pb2.Image(width=ow, height=oh, channels=oc),
                                     oh * ow * oc, "response", RESPONSE_HEADROOM)
        return memory_budget.request_bytes(
            wire=len(view.raw), width=w, height=h, channels=c,
            encoded=bool(request.image.encoding), out_shape=out_shape,
            kernel=native.canonical_name(self.step.type),
            answers_encoded=last and request.output_encoding != codec.RAW,
            forwards=not last) + header.decode_bytes

    def _run(self, view: wire.RequestView, context: grpc.ServicerContext,
             timing: step_pb2.StepTiming, cleanup: ExitStack, request_id: str, threads: int,
             passes: int, schedule: str) -> _Answer:
        request = view.header
        with self._phase("decode", timing, "decode_ms" if request.image.encoding else None):
            data = self._pixels(view, cleanup)
            try:
                img = codec.decode_image(request.image, max_pixels=self.max_pixels, data=data)
            except codec.PixelLimitError as exc:
                raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            except codec.ImageError as exc:
                raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if request.image.encoding:  # the header says what the server found (telemetry)
            request.image.height, request.image.width = img.shape[0], img.shape[1]

        labels = dict(request.labels)
        measures: dict[str, float] = {}
        last = is_last_step(self.step)
        measure_kind = native.output_kind(self.step.type) == "measure"
        forward: OutgoingFrame | None = None
        target: np.ndarray | None = None  # where the kernel writes, if not a new array
        reply = self._reply_area(request, self._output_shape(img.shape), cleanup) if last else None
        if not last and not measure_kind:
            # The kernel writes straight into the frame for the next step: a shared-memory
            # segment when the first candidate reads ours, else the outgoing request's bytes.
            forward = self._outgoing(request, request_id, labels, self._output_shape(img.shape),
                                     cleanup, self._shares_memory(self._first_address(labels)))
            target = forward.pixels
        elif reply is not None and not measure_kind:
            target = reply  # the last step writes into the caller's reply segment
        with self._phase("kernel", timing, "kernel_ms"):
            result = self._run_kernel(img, context, threads, passes, schedule, target)
        if measure_kind:
            labels.update(result["labels"])
            measures.update(result["measures"])
            out = img
        else:
            out = result

        if last and reply is not None:
            if measure_kind:
                reply[...] = img
            head = step_pb2.ProcessResponse(request_id=request_id, labels=labels,
                                            measures=measures)
            h, w, c = reply.shape
            image = step_pb2.Image(width=w, height=h, channels=c, shm=request.reply)
            return _Answer(request_id, head=head, image=image)
        if last:
            head = step_pb2.ProcessResponse(request_id=request_id, labels=labels,
                                            measures=measures)
            base = head.ByteSize()  # before the image: cheap
            h, w, c = out.shape
            with self._phase("encode", timing, "encode_ms" if request.output_encoding else None):
                if request.output_encoding == codec.RAW:
                    body: memoryview | bytes = np.ascontiguousarray(out).data.cast("B")
                    image = step_pb2.Image(width=w, height=h, channels=c)
                else:
                    body, c = codec.encode_data(out, request.output_encoding,
                                                jpeg_quality=request.jpeg_quality)
                    image = step_pb2.Image(width=w, height=h, channels=c,
                                           encoding=request.output_encoding)
            self._check_message_size(image, base + len(body), "response", RESPONSE_HEADROOM)
            return _Answer(request_id, head=head, image=image, data=body)

        source_pixels = None
        if forward is None:  # classify: the image passes through unchanged
            first = self._first_address(labels)
            source = (request.image.shm if request.image.HasField("shm")
                      and self._shares_memory(first) else None)
            forward = self._outgoing(request, request_id, labels, out.shape, cleanup,
                                     self._shares_memory(first), source=source)
            source_pixels = out
            if forward.pixels.size:
                forward.pixels[...] = out
        frame = forward

        def payload(cand: Candidate) -> bytes:
            return frame.payload(self._shares_memory(cand.address), source_pixels)

        with self._phase("forward", timing, "forward_ms"):
            downstream = self._forward(payload, context, timing, labels)
        return _Answer(request_id, downstream=downstream, measures=measures,
                       reply=frame.own_reply)

    def _reply_area(self, request: step_pb2.ProcessRequest, shape: tuple[int, int, int],
                    cleanup: ExitStack) -> np.ndarray | None:
        """The caller's reply segment as an array of the final image's shape, when the caller
        gave one this step can use (RAW output of exactly its size, same domain)."""
        if (not request.HasField("reply") or self.frames is None
                or request.output_encoding != codec.RAW
                or shape[0] * shape[1] * shape[2] != request.reply.size):
            return None
        try:
            mapped = self.frames.open(request.reply, writable=True)
        except NotShared:
            return None  # the image goes back as bytes
        except BadHandle as exc:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"step {self.step.id} ({self.step.type}): reply: {exc}") from None
        cleanup.callback(mapped.close)
        return mapped.pixels(shape)

    def _pixels(self, view: wire.RequestView, cleanup: ExitStack) -> memoryview:
        """The request's pixel bytes: a view of the message, or of a mapped shared segment."""
        image = view.header.image
        if not image.HasField("shm"):
            return view.data
        where = f"step {self.step.id} ({self.step.type})"
        if len(view.data) or image.encoding != codec.RAW:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{where}: image.shm carries RAW pixels only and replaces "
                            "image.data; send one of them")
        if self.frames is None:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{where} does not read shared memory; send image.data",
                            ((UNSHARED_KEY, "1"),))
        try:  # the pixel limit first, so an oversized frame is RESOURCE_EXHAUSTED either way
            codec.check_pixels(image.width, image.height, self.max_pixels)
        except codec.PixelLimitError as exc:
            raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        try:
            mapped = self.frames.open(image.shm)
        except NotShared as exc:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION, f"{where}: {exc}",
                            ((UNSHARED_KEY, "1"),)) from None
        except BadHandle as exc:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {exc}") from None
        cleanup.callback(mapped.close)
        return mapped.data

    def _first_address(self, labels: Mapping[str, str]) -> str | None:
        """The address the router would try first, or None (the forward reports why)."""
        active = self.discovery.active()
        order = choose_next_step(self.step, active.keys(), labels)
        return active[order[0]] if order else None

    def _shares_memory(self, address: str | None) -> bool:
        return (self.frames is not None and address is not None
                and self.forwarder.domain(address) == self.frames.domain)

    def _output_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The kernel's output shape for an input of `shape` (checked again by the kernel)."""
        h, w, c = shape[0], shape[1], shape[2]
        if self._resize_params is not None:
            h, w = native.resize_shape(h, w, self._resize_params)
        elif native.canonical_name(self.step.type) == "grayscale":
            c = 1
        return h, w, c

    def _outgoing(self, request: step_pb2.ProcessRequest, request_id: str,
                  labels: Mapping[str, str], shape: tuple[int, ...], cleanup: ExitStack,
                  shared: bool = False,
                  source: step_pb2.SharedFrame | None = None) -> OutgoingFrame:
        """The frame for the next step with room for a `shape` image, size-checked first."""
        header = step_pb2.ProcessRequest(
            request_id=request_id, output_encoding=request.output_encoding,
            jpeg_quality=request.jpeg_quality, route=[*request.route, self.step.id],
            labels=labels)
        header.overrides.CopyFrom(request.overrides)
        h, w, c = shape[0], shape[1], shape[2]
        self._check_message_size(step_pb2.Image(width=w, height=h, channels=c),
                                 header.ByteSize() + h * w * c, "request for the next step", 0)
        return OutgoingFrame(header, (h, w, c), frames=self.frames, shared=shared,
                             cleanup=cleanup, source=source,
                             reply=request.reply if request.HasField("reply") else None)

    def _run_kernel(self, img: Any, context: grpc.ServicerContext, threads: int, passes: int,
                    schedule: str, out: Any = None) -> Any:
        """Runs the kernel `passes` times, one native call per pass.

        A native call cannot be interrupted, so passes are looped here: when the caller gave up
        (deadline passed, cancelled, or the server stopped after its drain grace) the request
        ends between two passes instead of burning CPU and an in-flight slot to the end.
        Every pass computes the same result from the same input.
        """
        result: Any = None
        for done in range(passes):
            if done:
                self._check_still_wanted(context, done, passes)
            try:
                extra = {} if out is None else {"out": out}
                result = native.run(self.step.type, img, threads=threads, passes=1,
                                    schedule=schedule, **self._kernel_params, **extra)
            except ValueError as exc:
                raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"step {self.step.id} ({self.step.type}): {exc}") from None
        return result

    def _check_still_wanted(self, context: grpc.ServicerContext, done: int, passes: int) -> None:
        where = f"step {self.step.id} ({self.step.type})"
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"{where}: the request's deadline passed after kernel pass {done} of "
                            f"{passes}; stopped there")
        if self.admission.cut or (not context.is_active() and self.admission.closed):
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{where} is draining (shutting down) and its grace period ran out "
                            f"after kernel pass {done} of {passes}; retry on another replica",
                            ((DRAINING_KEY, "1"),))
        if not context.is_active():
            raise StepAbort(grpc.StatusCode.CANCELLED,
                            f"{where}: the request was cancelled (caller gone or server "
                            f"stopping) after kernel pass {done} of {passes}; stopped there")

    def _forward(self, forward: Payload, context: grpc.ServicerContext,
                 timing: step_pb2.StepTiming, labels: Mapping[str, str]) -> bytes:
        active = self.discovery.active()
        order = choose_next_step(self.step, active.keys(), labels)
        if not order:
            raise StepAbort(
                grpc.StatusCode.UNAVAILABLE,
                f"step {self.step.id} ({self.step.type}): no active next step; candidates "
                f"{self.step.next_step} are not in discovery (active: {sorted(active) or 'none'})")
        candidates = [Candidate(i, self._types.get(i, "?"), active[i]) for i in order]
        try:
            result = self.forwarder.forward(forward, candidates, timeout=self._remaining(context))
        except ForwardError as exc:
            timing.forward_attempts = exc.attempts
            trailers = ((FAILED_STEP_KEY, str(exc.failed_step)),) if exc.failed_step else ()
            message = exc.message
            if exc.failed_step is None:
                message = f"step {self.step.id} ({self.step.type}): {message}"
            raise StepAbort(exc.code, message, trailers) from None
        timing.next_step = result.step_id
        timing.forward_attempts = result.attempts
        return result.response

    # -- helpers -------------------------------------------------------------------------------

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

    def _remaining(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE:
            return self.forward_timeout
        if remaining <= 0:
            raise StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"step {self.step.id} ({self.step.type}): the request's deadline "
                            "passed before the step could finish")
        return remaining

    def _exec_settings(self, request: step_pb2.ProcessRequest) -> tuple[int, int, str]:
        ov = request.overrides
        unknown = _unknown_field_numbers(ov)
        if unknown:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"overrides has field number(s) {unknown} this step does not know; "
                            "known: threads (1), passes (2), schedule (3)")
        if ov.threads and not 1 <= ov.threads <= MAX_THREADS:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"overrides.threads must be 1..{MAX_THREADS} (0 = the step's own "
                            f"setting), got {ov.threads}")
        if ov.passes and not 1 <= ov.passes <= self.max_passes:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"overrides.passes must be 1..{self.max_passes} (this step's "
                            f"--max-passes {self.max_passes}; 0 = the step's own setting), "
                            f"got {ov.passes}")
        if ov.schedule:
            try:
                parse_schedule(ov.schedule, where="overrides.schedule")
            except ValueError as exc:
                raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{exc} (empty = the step's own setting)") from None
        threads = ov.threads or self._step_threads or default_threads()
        passes = ov.passes or self._step_passes
        schedule = ov.schedule or self._step_schedule
        return threads, passes, schedule

    def _check_message_size(self, img: step_pb2.Image, size: int, what: str,
                            headroom: int) -> None:
        """Refuses (RESOURCE_EXHAUSTED, naming this step) a message gRPC would not send.

        Without this the transport fails instead, and the error names the step that would
        have received the message rather than the one whose output is too large. `size` is
        the message without its image plus the image bytes; IMAGE_FIELD_OVERHEAD covers the
        image's own tags, lengths and dimensions, so the message is never serialized here.
        """
        size += IMAGE_FIELD_OVERHEAD
        if size + headroom <= self.max_message_bytes:
            return
        raise StepAbort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"step {self.step.id} ({self.step.type}): its output image "
            f"{img.width}x{img.height}x{img.channels} ({codec.encoding_name(img.encoding)}) makes "
            f"a {size}-byte {what}; the largest gRPC message is {self.max_message_bytes} bytes "
            f"(--max-message-mb {self.max_message_bytes // MIB}); make the output smaller or "
            "raise --max-message-mb on every step")

    def _check_output_size(self, height: int, width: int) -> None:
        """Refuses (RESOURCE_EXHAUSTED) before the kernel allocates an output over --max-pixels."""
        if self._resize_params is None:
            return  # every other kernel's output is the size of its input, already checked
        where = f"step {self.step.id} ({self.step.type})"
        try:
            out_h, out_w = native.resize_shape(height, width, self._resize_params)
        except ValueError as exc:  # beyond what any kernel may produce
            raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{where}: {exc}; this step produces at most {self.max_pixels} "
                            "pixels (--max-pixels)") from None
        try:
            codec.check_pixels(out_w, out_h, self.max_pixels,
                               where=f"{where}: the output for a {width}x{height} input")
        except codec.PixelLimitError as exc:
            raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    def _check_output(self, request: step_pb2.ProcessRequest) -> None:
        if request.output_encoding not in codec.ENCODING_NAMES:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"output_encoding {request.output_encoding} is unknown; use "
                            "IMAGE_ENCODING_RAW, IMAGE_ENCODING_PNG or IMAGE_ENCODING_JPEG")
        if request.jpeg_quality > 100:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"jpeg_quality must be 1..100 (0 = {codec.DEFAULT_JPEG_QUALITY}), "
                            f"got {request.jpeg_quality}")


#: The gRPC method, as messages name it.
PROCESS_METHOD = "stepchain.v1.StepService/Process"
#: Route ids a routing-loop message shows at each end; the rest is counted, not echoed (the
#: message travels in a header, which gRPC caps at 16 KiB by default).
ROUTE_SHOWN = 4


def describe_route(route: Sequence[int]) -> str:
    """A route for a message, bounded: short ones whole, long ones by their ends and length."""
    if len(route) <= 2 * ROUTE_SHOWN:
        return str(list(route))
    head = ", ".join(str(i) for i in route[:ROUTE_SHOWN])
    tail = ", ".join(str(i) for i in route[-ROUTE_SHOWN:])
    return f"[{head}, ... {tail}] ({len(route)} steps)"


def _unknown_field_numbers(msg: Any) -> list[int]:
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # older protobuf: unknown fields cannot be inspected
        return []
    return sorted({field.field_number for field in UnknownFieldSet(msg)})


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)

"""The StepService servicer: admit, decode, run the kernel, forward (or encode), time it all.

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
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import grpc
from stepchain.v1 import step_pb2, step_pb2_grpc

import native
from native.registry import MAX_THREADS, SCHEDULES, default_threads
from stepsvc import codec
from stepsvc.admission import Admission, Draining, QueueFull, QueueTimeout
from stepsvc.cli_args import DEFAULT_MAX_PASSES, DEFAULT_MAX_PIXELS
from stepsvc.config import PipelineConfig
from stepsvc.forward import (
    DRAINING_KEY,
    FAILED_STEP_KEY,
    Candidate,
    Forwarder,
    ForwardError,
)
from stepsvc.router import choose_next_step, is_last_step

log = logging.getLogger("stepchain.step")

#: Deadline given to the next hop when the caller set none, so a stuck step never hangs us.
DEFAULT_FORWARD_TIMEOUT_S = 60.0
_NO_DEADLINE = 1e8  # grpc reports a huge remaining time when the caller set no deadline
MIB = 1024 * 1024
#: Largest gRPC message by default (`--max-message-mb 64`), both ways.
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
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
                 observer: StepObserver | None = None) -> None:
        self.config = config
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

    def Process(self, request: step_pb2.ProcessRequest,
                context: grpc.ServicerContext) -> step_pb2.ProcessResponse:
        started = time.perf_counter()
        timing = step_pb2.StepTiming(
            pipeline_id=self.config.pipeline_id, step_id=self.step.id,
            step_type=self.step.type, host=self.host)
        response: step_pb2.ProcessResponse | None = None
        failure: StepAbort | None = None
        try:
            response = self._process(request, context, timing)
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
            self.observer.finished(code=code, timing=timing, request=request, response=response)
        except Exception:  # telemetry must never turn an answer into a failure
            log.exception("step %s: observer.finished failed", self.step.id)
        if failure is not None:
            if failure.trailers:
                context.set_trailing_metadata(failure.trailers)
            context.abort(failure.code, failure.message)
        assert response is not None
        # This step's timing goes first: timings are in execution order.
        downstream = list(response.timings)
        del response.timings[:]
        response.timings.append(timing)
        response.timings.extend(downstream)
        return response

    def _process(self, request: step_pb2.ProcessRequest, context: grpc.ServicerContext,
                 timing: step_pb2.StepTiming) -> step_pb2.ProcessResponse:
        if self.admission.closed:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"step {self.step.id} ({self.step.type}) is draining (shutting down) "
                            "and takes no new requests; retry on another replica",
                            ((DRAINING_KEY, "1"),))
        if self.step.id in request.route:
            raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"routing loop: step {self.step.id} already ran for this request "
                            f"(route {list(request.route)}); check next_step in the pipeline")
        # Cheap checks before taking a slot: a malformed request never waits in the queue.
        threads, passes, schedule = self._exec_settings(request)
        self._check_output(request)
        timing.threads = threads
        request_id = request.request_id or uuid.uuid4().hex
        deadline = self._remaining(context)

        with self._phase("queue", timing, "queue_wait_ms"):
            try:
                self.admission.acquire(deadline)
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
        try:
            return self._run(request, context, timing, request_id, threads, passes, schedule)
        finally:
            self.admission.release()

    def _run(self, request: step_pb2.ProcessRequest, context: grpc.ServicerContext,
             timing: step_pb2.StepTiming, request_id: str, threads: int, passes: int,
             schedule: str) -> step_pb2.ProcessResponse:
        with self._phase("decode", timing, "decode_ms" if request.image.encoding else None):
            try:
                img = codec.decode_image(request.image, max_pixels=self.max_pixels)
            except codec.PixelLimitError as exc:
                raise StepAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            except codec.ImageError as exc:
                raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

        self._check_output_size(img.shape[0], img.shape[1])
        labels = dict(request.labels)
        measures: dict[str, float] = {}
        with self._phase("kernel", timing, "kernel_ms"):
            result = self._run_kernel(img, context, threads, passes, schedule)
        if native.output_kind(self.step.type) == "measure":
            labels.update(result["labels"])
            measures.update(result["measures"])
            out = img
        else:
            out = result

        if is_last_step(self.step):
            response = step_pb2.ProcessResponse(request_id=request_id, labels=labels,
                                                measures=measures)
            base = response.ByteSize()  # before the image: cheap
            with self._phase("encode", timing, "encode_ms" if request.output_encoding else None):
                data = codec.write_image(response.image, out, request.output_encoding,
                                         jpeg_quality=request.jpeg_quality)
            self._check_message_size(response.image, base + data, "response", RESPONSE_HEADROOM)
            return response

        # Fields are filled in place: an image passed as a keyword argument is copied twice.
        forward = step_pb2.ProcessRequest(
            request_id=request_id, output_encoding=request.output_encoding,
            jpeg_quality=request.jpeg_quality, route=[*request.route, self.step.id],
            labels=labels)
        forward.overrides.CopyFrom(request.overrides)
        base = forward.ByteSize()  # before the image: cheap
        data = codec.write_image(forward.image, out, codec.RAW)
        self._check_message_size(forward.image, base + data, "request for the next step", 0)
        with self._phase("forward", timing, "forward_ms"):
            response = self._forward(forward, context, timing, labels)
        for key, value in measures.items():
            if key not in response.measures:  # a later classify step's measures win
                response.measures[key] = value
        return response

    def _run_kernel(self, img: Any, context: grpc.ServicerContext, threads: int, passes: int,
                    schedule: str) -> Any:
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
                result = native.run(self.step.type, img, threads=threads, passes=1,
                                    schedule=schedule, **self._kernel_params)
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
        if not context.is_active():
            raise StepAbort(grpc.StatusCode.CANCELLED,
                            f"{where}: the request was cancelled (caller gone or server "
                            f"stopping) after kernel pass {done} of {passes}; stopped there")

    def _forward(self, forward: step_pb2.ProcessRequest, context: grpc.ServicerContext,
                 timing: step_pb2.StepTiming, labels: Mapping[str, str]) -> step_pb2.ProcessResponse:
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
        if ov.schedule and ov.schedule not in SCHEDULES:
            raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"overrides.schedule must be one of {', '.join(SCHEDULES)} "
                            f"(empty = the step's own setting), got {ov.schedule!r}")
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


def _unknown_field_numbers(msg: Any) -> list[int]:
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # older protobuf: unknown fields cannot be inspected
        return []
    return sorted({field.field_number for field in UnknownFieldSet(msg)})


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)

"""The step's gRPC server: StepService plus reflection and grpc.health.v1, and graceful drain.

:func:`build_server` is the one place a step server is assembled (tests start it in-process on
port 0; ``stepchain step serve`` wraps it with signal handling). Extra server and client
interceptors (tracing) and a :class:`~stepsvc.step.hooks.StepObserver` (spans, metrics) plug in
here without touching the servicer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from stepchain.v1 import step_pb2

from stepsvc.frames import codec, wire
from stepsvc.frames.shm import DEFAULT_DIR as DEFAULT_SHM_DIR
from stepsvc.frames.shm import FrameStore
from stepsvc.limits import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_PASSES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_NEXT_STEP_WAIT_S,
    MIB,
)
from stepsvc.protocol import DOMAIN_KEY, HEALTH_CHECK_METHOD, SERVICE_NAME
from stepsvc.routing.channels import server_keepalive_options, transport_options
from stepsvc.routing.forward import Forwarder
from stepsvc.step.admission import Admission
from stepsvc.step.config import PipelineConfig
from stepsvc.step.hooks import ActiveSteps, StepObserver
from stepsvc.step.memory_budget import MemoryBudget, default_memory_mb
from stepsvc.step.servicer import DEFAULT_FORWARD_TIMEOUT_S, StepServicer

log = logging.getLogger("stepchain.step")

#: Threads beyond the admitted requests: health checks, reflection and the step's own refusals
#: answer at once under load instead of waiting for a thread behind queued requests.
SPARE_THREADS = 32
#: Seconds the last responses get to be written after drain saw every request finish.
RESPONSE_FLUSH_S = 5.0
#: Seconds requests cut off by the end of the grace get to answer (draining) before the stop.
CUT_OFF_ANSWER_S = 1.0
#: Seconds a client connection lives before the server asks the client to reconnect (GOAWAY).
#: Reconnecting re-resolves `dns:///` names, so upstream steps find replicas that started
#: after they connected (gRPC's answer to "new pods get no traffic" behind a headless Service).
DEFAULT_MAX_CONNECTION_AGE_S = 30.0


@dataclass
class ServerSettings:
    """Knobs of one step server (the `stepchain step serve` flags)."""

    host: str = "0.0.0.0"
    port: int = 50051
    max_inflight: int = 16
    max_queue: int = 64
    #: Refuse at once when the expected wait for a slot is longer (0 = one average request's
    #: time in the step; -1 = only the deadline and --max-queue bound the queue).
    max_queue_wait_ms: int = 0
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    #: Memory budget for running requests, MiB; 0 = from the container's limit, else
    #: memory_budget.DEFAULT_MAX_MEMORY_MB.
    max_memory_mb: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_passes: int = DEFAULT_MAX_PASSES
    grace: float = 30.0
    forward_timeout: float = DEFAULT_FORWARD_TIMEOUT_S
    #: Prometheus port; 0 = off. `step serve` starts the endpoint (stepsvc.telemetry.metrics).
    metrics_port: int = 0
    #: Connection lifetime before GOAWAY (0 = unlimited); see DEFAULT_MAX_CONNECTION_AGE_S.
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE_S
    #: Time RPCs still running on an aged connection get to finish; None = forward_timeout,
    #: the longest a request waits on its next hop.
    max_connection_age_grace: float | None = None
    #: Frame directory for shared memory with co-located steps; "" = off (stepsvc.frames.shm).
    shm_dir: str = DEFAULT_SHM_DIR
    #: Keepalive period and ping timeout towards next steps, seconds (stepsvc.routing.forward).
    keepalive: float = DEFAULT_KEEPALIVE_S
    #: Longest wait for a next step to come back when none answered (within the deadline).
    next_step_wait: float = DEFAULT_NEXT_STEP_WAIT_S

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MIB

    def connection_options(self) -> list[tuple[str, int]]:
        """gRPC server options that bound a client connection's age (none when 0)."""
        if self.max_connection_age <= 0:
            return []
        grace = (self.forward_timeout if self.max_connection_age_grace is None
                 else self.max_connection_age_grace)
        return [("grpc.max_connection_age_ms", max(1, round(self.max_connection_age * 1000))),
                ("grpc.max_connection_age_grace_ms", max(0, round(grace * 1000)))]


class StepServer:
    """A built (not yet started) step server and the parts it drains on shutdown."""

    def __init__(self, server: grpc.Server, port: int, servicer: StepServicer,
                 health_servicer: health.HealthServicer, discovery: ActiveSteps,
                 settings: ServerSettings) -> None:
        self.server = server
        self.port = port
        self.servicer = servicer
        self.health = health_servicer
        self.discovery = discovery
        self.settings = settings
        self._stopped = threading.Event()
        #: Requests still running or queued when the last drain's grace period ran out.
        self.cut_off = 0

    @property
    def address(self) -> str:
        """host:port clients on this machine can dial."""
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Starts serving and reports SERVING on the health service."""
        self.server.start()
        if self.servicer.frames is not None:
            self.servicer.frames.start_sweeping()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def drain(self, grace: float | None = None) -> bool:
        """Graceful shutdown: NOT_SERVING, refuse new requests, let in-flight ones finish.

        Waits at most `grace` seconds (default: settings.grace) for in-flight and queued
        requests, then stops the server. Returns True if everything finished in time.
        """
        grace = self.settings.grace if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so
        self.servicer.admission.close()
        finished = self.servicer.admission.wait_idle(grace)
        if not finished:
            self.cut_off = self.servicer.admission.inflight + self.servicer.admission.queued
            log.warning("drain: %d request(s) still running or queued after %.1f s grace; "
                        "cutting them off", self.cut_off, grace)
            # Queued requests are answered FAILED_PRECONDITION (draining) now; running ones
            # between two kernel passes: give them a moment to say so before the server stops
            # (a call cancelled by the stop would reach its caller as a bare CANCELLED).
            self.servicer.admission.cut_off()
            answered = self.servicer.admission.wait_idle(CUT_OFF_ANSWER_S)
        else:
            answered = True
        # A request leaves admission just before its response is written: give the last
        # responses time to go out (stop returns as soon as no RPC is active). A kernel that
        # cannot be interrupted is not waited for.
        self.stop(max(RESPONSE_FLUSH_S, deadline - time.monotonic()) if answered else 0.0)
        return finished

    def stop(self, grace: float | None = 0.0) -> None:
        """Stops the server at once (in-flight RPCs get `grace` seconds) and frees resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop(grace).wait()
        self.servicer.forwarder.close()
        if self.servicer.frames is not None:
            self.servicer.frames.close()
        close = getattr(self.discovery, "close", None)
        if callable(close):
            close()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server stopped."""
        return self.server.wait_for_termination(timeout)


class AdvertiseDomain(grpc.ServerInterceptor):
    """Health checks answer with this step's shared-memory domain in their initial metadata,
    so an upstream step knows before its first request whether frames can go by handle."""

    def __init__(self, domain: str) -> None:
        self._metadata = ((DOMAIN_KEY, domain),)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if (handler is None or handler_call_details.method != HEALTH_CHECK_METHOD
                or handler.unary_unary is None):
            return handler
        behavior, metadata = handler.unary_unary, self._metadata

        def check(request: Any, context: grpc.ServicerContext) -> Any:
            context.send_initial_metadata(metadata)
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def process_handler(servicer: StepServicer) -> grpc.GenericRpcHandler:
    """StepService/Process with the step's own codec (and the small Describe): the request is
    parsed by :func:`stepsvc.frames.wire.parse_request` (pixels stay a view of the received
    bytes) and the response goes out as the bytes the servicer built. Same wire format as the
    generated code, so reflection, grpcurl and every other client see no difference.

    Process is registered as client-streaming (the wire is the same as unary's: one message
    each way), so the servicer runs when the call starts and admits it before its request's
    megabytes are read (:meth:`~stepsvc.step.servicer.StepServicer.process_call`)."""
    method = grpc.stream_unary_rpc_method_handler(
        servicer.process_call, request_deserializer=wire.parse_request, response_serializer=_payload)
    describe = grpc.unary_unary_rpc_method_handler(
        servicer.Describe, request_deserializer=step_pb2.DescribeRequest.FromString,
        response_serializer=step_pb2.DescribeResponse.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Process": method,
                                                               "Describe": describe})


def _payload(response: wire.ResponseBytes) -> bytes:
    return response.payload


def queue_wait_bound(max_queue_wait_ms: int) -> float | None:
    """Admission's queue-wait bound for --max-queue-wait-ms: 0 = one average request (None),
    negative = none (inf), else the milliseconds as seconds."""
    if max_queue_wait_ms == 0:
        return None
    return float("inf") if max_queue_wait_ms < 0 else max_queue_wait_ms / 1000


def build_server(config: PipelineConfig, discovery: ActiveSteps,
                 settings: ServerSettings | None = None, *,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 client_interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
                 observer: StepObserver | None = None) -> StepServer:
    """Assembles a step server for `config` bound to settings.host:settings.port (0 = any).

    `interceptors` wrap incoming RPCs, `client_interceptors` the forwarding calls, `observer`
    sees every request's phases and outcome. The server is returned bound but not started.
    """
    settings = settings or ServerSettings()
    codec.keep_large_buffers()
    admission = Admission(settings.max_inflight, settings.max_queue,
                          queue_wait_bound(settings.max_queue_wait_ms))
    forwarder = Forwarder(settings.max_message_bytes, interceptors=client_interceptors,
                          keepalive_s=settings.keepalive,
                          next_step_wait=settings.next_step_wait)
    frames = (FrameStore.open_dir(settings.shm_dir, config.pipeline_id,
                                  max_bytes=settings.max_pixels * 4)
              if settings.shm_dir else None)
    servicer = StepServicer(config, discovery, admission, forwarder,
                            max_pixels=settings.max_pixels, max_passes=settings.max_passes,
                            max_message_bytes=settings.max_message_bytes,
                            forward_timeout=settings.forward_timeout, observer=observer,
                            frames=frames,
                            memory=MemoryBudget(
                                (settings.max_memory_mb or default_memory_mb()) * MIB))
    # Queued requests hold a thread while they wait, so the pool covers in-flight + queue; the
    # spare threads answer health checks and the step's own refusals at once.
    workers = settings.max_inflight + settings.max_queue + SPARE_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step"),
        interceptors=[*interceptors,
                      *([AdvertiseDomain(frames.domain)] if frames is not None else [])],
        # no SO_REUSEPORT: a second server on a taken port must fail, not share it silently
        options=[*transport_options(settings.max_message_bytes), ("grpc.so_reuseport", 0),
                 *settings.connection_options(), *server_keepalive_options()],
        # A last resort only: admission holds a thread per admitted call (in flight or queued)
        # and refuses the rest at once, by name, on the spare threads; gRPC's own cap (its
        # generic "Concurrent RPC limit exceeded!") leaves room for those refusals and for
        # answers still being written.
        maximum_concurrent_rpcs=workers + SPARE_THREADS,
    )
    server.add_generic_rpc_handlers((process_handler(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bind = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = server.add_insecure_port(f"{bind}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port} (port in use?)")
    return StepServer(server, port, servicer, health_servicer, discovery, settings)

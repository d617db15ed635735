"""Forwarding a request to the next step: one cached channel per address, failover in order.

An address names every replica of a step: ``dns:///<svc>.<ns>.svc.cluster.local:50051`` (a
headless Service: one A record per ready pod) in Kubernetes, ``ipv4:127.0.0.1:p1,127.0.0.1:p2``
for local replicas. Every channel uses the ``round_robin`` policy, so one channel keeps a
connection to each replica and spreads requests over them.

Candidates are tried in the order the router chose. A candidate answering UNAVAILABLE (down,
unreachable, or with no active successor of its own) or refusing because it drains is tried
again first (round_robin picks the step's next replica), up to :func:`replica_tries` times, and
then skipped for the next step; any other error ends the attempt and reaches the caller naming
the step.

Requests and responses are serialized messages (bytes) both ways: the step builds the request
around its output pixels and adds its timing to the response bytes (:mod:`stepsvc.frames.wire`), so
nothing here parses or serializes 6 MB of pixels.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from stepchain.v1 import step_pb2

#: Trailing metadata a step sets when it refuses because it is draining: worth failing over.
DRAINING_KEY = "stepchain-draining"
#: Trailing metadata on an error that already names the step where it happened.
FAILED_STEP_KEY = "stepchain-failed-step"
#: Tries per step behind a `dns:///` name, whose replica count the client does not know: a
#: failed try moves round_robin to the next replica before failover moves to the next step.
DNS_REPLICA_TRIES = 3
#: Every channel balances over all addresses its target resolves to (gRPC's default,
#: pick_first, would send everything to the first replica).
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
#: Shortest pause between two DNS re-resolutions of one channel (gRPC's default is 30 s): pods
#: that come and go are seen within seconds of a connection closing.
DNS_MIN_RERESOLUTION_MS = 5000


def replica_tries(address: str) -> int:
    """How many times a step at `address` is tried before failing over to another step: one
    per listed address (``ipv4:a:1,b:2``), DNS_REPLICA_TRIES behind a ``dns:`` name, else 1."""
    scheme, sep, rest = address.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return max(1, len([a for a in rest.split(",") if a]))
    if sep and scheme == "dns":
        return DNS_REPLICA_TRIES
    return 1

#: Initial metadata with which a step advertises its shared-memory domain (stepsvc.frames.shm).
DOMAIN_KEY = "stepchain-shm-domain"
#: Trailing metadata on a refused shared-memory handle from another domain: resend as bytes.
UNSHARED_KEY = "stepchain-shm-unshared"
#: Asked once per new address for its shared-memory domain (the answer's initial metadata).
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Candidate:
    """A step the request may go to next."""

    step_id: int
    step_type: str
    address: str

    def describe(self) -> str:
        return f"step {self.step_id} ({self.step_type}) at {self.address}"


class ForwardError(Exception):
    """Forwarding failed; `code` and `message` are what the caller should see."""

    def __init__(self, code: grpc.StatusCode, message: str, attempts: int,
                 failed_step: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.attempts = attempts
        self.failed_step = failed_step


#: The full method name of StepService.Process.
PROCESS_METHOD = "/" + step_pb2.DESCRIPTOR.services_by_name["StepService"].full_name + "/Process"
#: A serialized ProcessRequest, or a function giving the one to send to a candidate.
Payload = bytes | Callable[[Candidate], bytes]


@dataclass
class ForwardResult:
    #: The serialized ProcessResponse of the step that took the request.
    response: bytes
    step_id: int
    attempts: int


def transport_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """HTTP/2 settings for image-sized messages, shared by step servers and every channel."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # A large initial HTTP/2 window: a 6 MB frame then streams without waiting for
        # window updates (about halved loopback transfer time for 1080p frames here).
        ("grpc.http2.lookahead_bytes", min(max_message_bytes, 16 * 1024 * 1024)),
        # The largest HTTP/2 frame (2^24 - 1) instead of 16 KiB: a 1080p image crosses in one
        # frame rather than ~400, another ~25 % off the loopback hop here.
        ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
    ]


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """gRPC channel options shared by steps and clients (transport, fast reconnect, round_robin
    over every replica the target names)."""
    return [
        *transport_options(max_message_bytes),
        ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RERESOLUTION_MS),
        # A restarted step should be reachable again within a second or two, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30_000),
    ]


class Forwarder:
    """Sends ProcessRequests to other steps over cached insecure channels."""

    def __init__(self, max_message_bytes: int, *,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()) -> None:
        self._options = channel_options(max_message_bytes)
        self._interceptors = tuple(interceptors)
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._channels: list[grpc.Channel] = []
        self._domains: dict[str, str] = {}
        self._probed: set[str] = set()
        self._raw_channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def domain(self, address: str) -> str | None:
        """The shared-memory domain `address` advertised in its last answer; for an address
        not called yet, asked once with a health check (its answer carries the domain too).
        None: unknown or none, so the frame goes as bytes."""
        known = self._domains.get(address)
        if known is not None or address in self._probed:
            return known
        self._probed.add(address)
        self.stub(address)  # the channel, created once
        with self._lock:
            channel = self._raw_channels.get(address)
        if channel is None:
            return None
        try:
            _, call = channel.unary_unary(HEALTH_CHECK_METHOD, None, None).with_call(
                b"", timeout=PROBE_TIMEOUT_S)
            self._learn_domain(address, call)
        except grpc.RpcError as err:  # down or busy: the first Process answer tells instead
            self._learn_domain(address, err)
        return self._domains.get(address)

    def _learn_domain(self, address: str, call: Any) -> None:
        try:
            pairs = call.initial_metadata() or ()
        except Exception:  # no metadata on a call that never reached the server
            return
        for key, value in pairs:
            if key == DOMAIN_KEY:
                self._domains[address] = str(value)
                return
        self._domains.pop(address, None)

    def stub(self, address: str) -> grpc.UnaryUnaryMultiCallable:
        """The cached Process callable for `address` (created on first use): bytes in, bytes
        out (no serializers: the request is already serialized, the response is passed on)."""
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel: grpc.Channel = grpc.insecure_channel(address, options=self._options)
                self._channels.append(channel)
                self._raw_channels[address] = channel
                if self._interceptors:
                    channel = grpc.intercept_channel(channel, *self._interceptors)
                stub = channel.unary_unary(PROCESS_METHOD, None, None)
                self._stubs[address] = stub
            return stub

    def forward(self, request: Payload | Message, candidates: Sequence[Candidate], *,
                timeout: float | None,
                metadata: Sequence[tuple[str, str]] = ()) -> ForwardResult:
        """Sends `request` to the first candidate that takes it.

        `request` is a serialized ProcessRequest, a function of the candidate returning one
        (so a co-located candidate can get a shared-memory handle), or a message.

        `timeout` is the caller's remaining deadline in seconds; failover attempts share it, so
        a candidate that failed slowly leaves the next one only what is left. Raises
        ForwardError with the code the caller should get and a message naming the failed
        step(s).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failures: list[str] = []
        attempts = 0
        for cand in candidates:
            for _ in range(replica_tries(cand.address)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ForwardError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the request's deadline passed during failover before "
                        f"{cand.describe()} could be tried (after: {'; '.join(failures)})",
                        attempts, None)
                attempts += 1
                if isinstance(request, Message):
                    request = request.SerializeToString()
                try:
                    response = self._call(cand, request, remaining, metadata)
                    return ForwardResult(response, cand.step_id, attempts)
                except grpc.RpcError as err:
                    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                    details = (err.details() if hasattr(err, "details") else None) or str(code)
                    trailers = _trailers(err)
                    named = FAILED_STEP_KEY in trailers
                    message = details if named else f"{cand.describe()}: {details}"
                    failed = int(trailers[FAILED_STEP_KEY]) if named else cand.step_id
                    draining = (code == grpc.StatusCode.FAILED_PRECONDITION
                                and DRAINING_KEY in trailers)
                    if code == grpc.StatusCode.UNAVAILABLE or draining:
                        failures.append(message)
                        continue  # another replica of this step, then the next step
                    if failures:
                        message += f" (after failover from: {'; '.join(failures)})"
                    raise ForwardError(code, message, attempts, failed) from None
        tried = "; ".join(failures)
        raise ForwardError(
            grpc.StatusCode.UNAVAILABLE,
            f"no next step took the request; tried {attempts}: {tried}",
            attempts, None)

    def _call(self, cand: Candidate, request: Payload, timeout: float | None,
              metadata: Sequence[tuple[str, str]]) -> bytes:
        """One attempt at `cand`; a handle refused as from another domain (the address now
        answers from another host or pod) is resent once with the pixels as bytes."""
        stub = self.stub(cand.address)
        for resend in (False, True):
            payload = request if isinstance(request, bytes) else request(cand)
            try:
                response, call = stub.with_call(payload, timeout=timeout,
                                                metadata=tuple(metadata) or None)
                self._learn_domain(cand.address, call)
                return bytes(response)
            except grpc.RpcError as err:
                self._learn_domain(cand.address, err)
                unshared = UNSHARED_KEY in _trailers(err)
                if resend or not unshared or isinstance(request, bytes):
                    raise
                self._domains.pop(cand.address, None)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes every cached channel."""
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._raw_channels.clear()
            self._stubs.clear()


def _trailers(err: grpc.RpcError) -> dict[str, str]:
    """The error's trailing metadata as a dict (empty for errors without any)."""
    pairs: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    return {str(key): str(value) for key, value in (pairs or ())}

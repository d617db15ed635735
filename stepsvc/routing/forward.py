"""Forwarding a request to the next step: one cached channel per address, failover in order.

An address names every replica of a step: ``dns:///<svc>.<ns>.svc.cluster.local:50051`` (a
headless Service: one A record per ready pod) in Kubernetes, ``ipv4:127.0.0.1:p1,127.0.0.1:p2``
for local replicas; its channel (:mod:`stepsvc.routing.channels`) spreads requests over them.

Candidates are tried in the order the router chose. A candidate answering UNAVAILABLE (down,
unreachable, or with no active successor of its own) or refusing because it drains is tried
again first (round_robin picks the step's next replica), up to :func:`replica_tries` times, and
then skipped for the next step; any other error ends the attempt and reaches the caller naming
the step.

A next step that vanished without a reset (a node gone, a partition, a frozen process) is found
by HTTP/2 keepalive: every connection is pinged each KEEPALIVE_S and dropped when a ping is not
answered within KEEPALIVE_S more, which fails the calls on it as UNAVAILABLE and so fails them
over; a dead hop costs a request at most about 2 x KEEPALIVE_S. When every candidate failed
without answering (no connection, the channels in reconnect back-off after a restart), the
request waits for one of them to come back (:class:`ChannelStates`) within its deadline, less
the time this step keeps to answer by name (:func:`answer_margin`), instead of failing at once.

A next step that has been refusing (RESOURCE_EXHAUSTED) is sent only about twice what it
accepted lately; the rest is refused here, by name, before its megabytes are queued
(client-side adaptive throttling, :mod:`stepsvc.routing.throttle`).

Requests and responses are serialized messages (bytes) both ways: the step builds the request
around its output pixels and adds its timing to the response bytes (:mod:`stepsvc.frames.wire`), so
nothing here parses or serializes 6 MB of pixels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from stepsvc.limits import DEFAULT_NEXT_STEP_WAIT_S
from stepsvc.protocol import (
    DOMAIN_KEY,
    DRAINING_KEY,
    FAILED_STEP_KEY,
    HEALTH_CHECK_METHOD,
    PROCESS_METHOD,
    UNSHARED_KEY,
)
from stepsvc.routing.channels import KEEPALIVE_S, ChannelStates, channel_options
from stepsvc.routing.reachability import HopOutcomes
from stepsvc.routing.throttle import REFUSAL, AdaptiveThrottle

#: Tries per step behind a `dns:///` name, whose replica count the client does not know: a
#: failed try moves round_robin to the next replica before failover moves to the next step.
DNS_REPLICA_TRIES = 3
#: The share of the remaining deadline a step keeps to answer its caller by name when its next
#: hop does not answer, between ANSWER_MARGIN_MIN_S and ANSWER_MARGIN_MAX_S.
ANSWER_MARGIN_SHARE = 0.1
ANSWER_MARGIN_MIN_S = 0.02
ANSWER_MARGIN_MAX_S = 0.25
#: Longest a request waits for a next step to come back when none answered (within its
#: deadline): a step restarting in place, a channel in reconnect back-off.
NEXT_STEP_WAIT_S = DEFAULT_NEXT_STEP_WAIT_S
#: Pause before trying the candidates again when one is READY but the last pass failed on it.
RETRY_PAUSE_S = 0.05
#: Failures a message lists (the rest are counted), so a long wait does not grow the message.
FAILURES_SHOWN = 4


def replica_tries(address: str) -> int:
    """How many times a step at `address` is tried before failing over to another step: one
    per listed address (``ipv4:a:1,b:2``), DNS_REPLICA_TRIES behind a ``dns:`` name, else 1."""
    scheme, sep, rest = address.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return max(1, len([a for a in rest.split(",") if a]))
    if sep and scheme == "dns":
        return DNS_REPLICA_TRIES
    return 1

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


#: A serialized ProcessRequest, or a function giving the one to send to a candidate.
Payload = bytes | Callable[[Candidate], bytes]


@dataclass
class ForwardResult:
    #: The serialized ProcessResponse of the step that took the request.
    response: bytes
    step_id: int
    attempts: int


def answer_margin(remaining: float) -> float:
    """Seconds of a request's `remaining` deadline a step keeps for itself when it forwards:
    a next hop that does not answer times out that much earlier, so this step still answers
    its caller, naming the hop, before the caller's own deadline turns it into a bare
    DEADLINE_EXCEEDED."""
    return min(ANSWER_MARGIN_MAX_S, max(ANSWER_MARGIN_MIN_S, remaining * ANSWER_MARGIN_SHARE))


class Forwarder:
    """Sends ProcessRequests to other steps over cached insecure channels."""

    def __init__(self, max_message_bytes: int, *,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
                 keepalive_s: float = KEEPALIVE_S,
                 next_step_wait: float = NEXT_STEP_WAIT_S) -> None:
        self._options = channel_options(max_message_bytes, keepalive_s)
        #: Longest wait for a next step to come back when none answered (within the deadline).
        self.next_step_wait = next_step_wait
        self._interceptors = tuple(interceptors)
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._channels: list[grpc.Channel] = []
        self._domains: dict[str, str] = {}
        self._probed: set[str] = set()
        self._raw_channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        #: Each next step's channel state (watched from the channel's creation on).
        self.states = ChannelStates()
        #: How the last attempt at each next step ended (stepsvc.routing.reachability).
        self.outcomes = HopOutcomes()
        #: Client-side adaptive throttling per next step (stepsvc.routing.throttle).
        self._throttles: dict[str, AdaptiveThrottle] = {}

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

    def channel_state(self, address: str) -> grpc.ChannelConnectivity | None:
        """The connectivity state of the channel to `address` (None: no channel yet)."""
        return self.states.state(address)

    def throttle(self, address: str) -> AdaptiveThrottle:
        """The adaptive throttle of the next step at `address` (created on first use)."""
        with self._lock:
            return self._throttles.setdefault(address, AdaptiveThrottle())

    def stub(self, address: str) -> grpc.UnaryUnaryMultiCallable:
        """The cached Process callable for `address` (created on first use): bytes in, bytes
        out (no serializers: the request is already serialized, the response is passed on)."""
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel: grpc.Channel = grpc.insecure_channel(address, options=self._options)
                self._channels.append(channel)
                self._raw_channels[address] = channel
                self.states.watch(address, channel)
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

        `timeout` is the caller's remaining deadline in seconds, less :func:`answer_margin`;
        failover attempts share it, so a candidate that failed slowly leaves the next one only
        what is left. When no candidate answered at all (each UNAVAILABLE from the transport:
        down, unreachable, or its channel in reconnect back-off), the request waits up to
        `next_step_wait` seconds (within that deadline) for one to be connected again and then
        tries them again in order. Raises ForwardError with the code the caller should get and
        a message naming the failed step(s).
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout - answer_margin(timeout)
        wait_until = started + self.next_step_wait if deadline is None else min(
            deadline, started + self.next_step_wait)
        failures: list[str] = []
        attempts = 0
        if isinstance(request, Message):
            request = request.SerializeToString()
        while True:
            answered = False  # some candidate (or a step behind it) answered: waiting won't help
            for cand in candidates:
                for _ in range(replica_tries(cand.address)):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ForwardError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the request's deadline passed during failover before "
                            f"{cand.describe()} could be tried (after: {_listed(failures)})",
                            attempts, None)
                    attempts += 1
                    throttle = self.throttle(cand.address)
                    if not throttle.allow():  # overloaded lately: do not send it what it refuses
                        raise ForwardError(
                            REFUSAL, f"{cand.describe()}: "
                            f"{throttle.describe(f'step {cand.step_id}')}", attempts, None)
                    try:
                        response = self._call(cand, request, remaining, metadata)
                        throttle.record(grpc.StatusCode.OK)
                        self.outcomes.record(cand.address, answered=True, code="OK")
                        return ForwardResult(response, cand.step_id, attempts)
                    except grpc.RpcError as err:
                        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                        throttle.record(code)
                        details = (err.details() if hasattr(err, "details") else None) or str(code)
                        trailers = _trailers(err)
                        named = FAILED_STEP_KEY in trailers
                        message = details if named else f"{cand.describe()}: {details}"
                        failed = int(trailers[FAILED_STEP_KEY]) if named else cand.step_id
                        draining = (code == grpc.StatusCode.FAILED_PRECONDITION
                                    and DRAINING_KEY in trailers)
                        # Did the candidate take it? An error it (or a step behind it) named
                        # says yes; the transport's UNAVAILABLE, no answer, draining say no.
                        took = named or not (draining or code in (
                            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
                        self.outcomes.record(cand.address, answered=took, code=code.name,
                                             detail=details)
                        if code == grpc.StatusCode.UNAVAILABLE or draining:
                            failures.append(message)
                            answered = answered or named or draining
                            continue  # another replica of this step, then the next step
                        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not named:
                            # this step's own deadline for the hop: the candidate said nothing
                            message = (f"{cand.describe()} did not answer within "
                                       f"{remaining or 0:.2f} s (the request's deadline, less "
                                       f"{answer_margin(timeout or 0):.2f} s kept to answer "
                                       "the caller)")
                        if failures:
                            message += f" (after failover from: {_listed(failures)})"
                        raise ForwardError(code, message, attempts, failed) from None
            now = time.monotonic()
            if answered or now + RETRY_PAUSE_S >= wait_until:
                raise self._none_took(attempts, failures, waited=now - started,
                                      out_of_time=not answered and wait_until == deadline)
            # Nobody answered: wait (within the deadline) for a candidate to be connected
            # again, e.g. a restarted step whose channel is in reconnect back-off.
            time.sleep(RETRY_PAUSE_S)
            if not self.states.wait_ready([c.address for c in candidates],
                                          max(0.0, wait_until - time.monotonic())):
                raise self._none_took(attempts, failures, waited=time.monotonic() - started,
                                      out_of_time=wait_until == deadline)

    @staticmethod
    def _none_took(attempts: int, failures: Sequence[str], *, waited: float,
                   out_of_time: bool) -> ForwardError:
        """The error when no candidate took the request: DEADLINE_EXCEEDED when the deadline
        ended the wait for one to come back, else UNAVAILABLE."""
        if out_of_time:
            return ForwardError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no next step answered within the request's deadline (waited {waited:.1f} s "
                f"for one to come back); tried {attempts}: {_listed(failures)}", attempts, None)
        after = f" in {waited:.1f} s (--next-step-wait)" if waited >= 0.1 else ""
        return ForwardError(
            grpc.StatusCode.UNAVAILABLE,
            f"no next step took the request{after}; tried {attempts}: {_listed(failures)}",
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


def _listed(failures: Sequence[str]) -> str:
    """The failures for a message: the first FAILURES_SHOWN, then how many more."""
    shown = "; ".join(failures[:FAILURES_SHOWN])
    more = len(failures) - FAILURES_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown


def _trailers(err: grpc.RpcError) -> dict[str, str]:
    """The error's trailing metadata as a dict (empty for errors without any)."""
    pairs: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    return {str(key): str(value) for key, value in (pairs or ())}

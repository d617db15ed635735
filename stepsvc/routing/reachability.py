"""Whether this step can reach each of its next steps: what a request would meet at the next hop.

A step is "ready" when it serves, but a request also needs the hop after it. Two facts per next
step tell whether that hop works, both kept where the forwarding happens:

- the connectivity state of the channel to it (:class:`stepsvc.routing.channels.ChannelStates`,
  updated by gRPC; the channel is opened as soon as the step is known, so the state is there
  before the first request);
- the outcome of the last forward attempt to it (:class:`HopOutcomes`): the candidate answered
  (OK, or an error that it or a step behind it named), or it did not take the request
  (UNAVAILABLE from the transport, no answer within the deadline, draining).

:func:`next_step_health` (pure) combines them with discovery into one :class:`NextStepHealth`
per next step; :class:`NextStepWatch` reads the live facts for the step's metrics
(``stepchain_step_next_step_reachable``, :mod:`stepsvc.telemetry.metrics`), which the topology
service, its console and ``stepchain top`` read to draw a broken hop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

#: Channel states in which a call would not reach the step now.
DOWN_STATES = frozenset({grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                         grpc.ChannelConnectivity.SHUTDOWN})
#: Longest failure text carried in a reason (a metric label).
REASON_CHARS = 200


@dataclass(frozen=True)
class HopOutcome:
    """How the last forward attempt to one next-step address ended."""

    #: The candidate took the request (its answer, or an error it or a step behind it named).
    answered: bool
    #: The attempt's gRPC status code name ("OK" when it answered with a result).
    code: str
    #: The failure as the forwarder described it ("" when answered).
    detail: str
    #: Unix time of the attempt.
    at: float


class HopOutcomes:
    """The last forward attempt's outcome per next-step address (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._last: dict[str, HopOutcome] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, address: str, *, answered: bool, code: str, detail: str = "") -> None:
        """Records an attempt at `address` (the forwarder calls this after each one)."""
        with self._lock:
            self._last[address] = HopOutcome(answered, code, detail, self._clock())

    def last(self, address: str) -> HopOutcome | None:
        with self._lock:
            return self._last.get(address)


@dataclass(frozen=True)
class NextStepHealth:
    """Whether a request can go from this step to one next step now, and if not, why."""

    step_id: int
    #: Its address in discovery (None: not in discovery, so not a candidate at all).
    address: str | None
    reachable: bool
    #: The channel's connectivity state ("READY", "TRANSIENT_FAILURE", ...; "-" without one).
    channel: str
    #: Why it cannot be reached ("" when it can).
    reason: str


def next_step_health(next_steps: Sequence[int], active: Mapping[int, str],
                     channel_state: Callable[[str], grpc.ChannelConnectivity | None],
                     last: Callable[[str], HopOutcome | None], now: float
                     ) -> list[NextStepHealth]:
    """One :class:`NextStepHealth` per id in `next_steps`, in that order.

    Unreachable: a next step missing from discovery; a channel that is down
    (TRANSIENT_FAILURE, SHUTDOWN); or a last attempt the candidate did not take, unless its
    channel is READY again since. A channel still connecting with no failure behind it, or idle,
    counts as reachable: nothing says otherwise yet.
    """
    out = []
    for step_id in next_steps:
        address = active.get(step_id)
        if address is None:
            out.append(NextStepHealth(step_id, None, False, "-",
                                      f"step {step_id} is not in discovery (not active)"))
            continue
        state = channel_state(address)
        channel = state.name if state is not None else "-"
        outcome = last(address)
        failed = outcome is not None and not outcome.answered
        reasons = []
        if state in DOWN_STATES:
            reasons.append(f"channel {channel}")
        if failed and state != grpc.ChannelConnectivity.READY:
            assert outcome is not None
            ago = max(0.0, now - outcome.at)
            reasons.append(f"last forward {ago:.0f} s ago: {outcome.code}: {outcome.detail}")
        reason = "; ".join(reasons)
        if len(reason) > REASON_CHARS:
            reason = reason[:REASON_CHARS - 1] + "…"
        out.append(NextStepHealth(step_id, address, not reasons, channel, reason))
    return out


class _Discovery(Protocol):
    def active(self) -> dict[int, str]: ...


class _Forwarding(Protocol):
    outcomes: HopOutcomes

    def stub(self, address: str) -> object: ...

    def channel_state(self, address: str) -> grpc.ChannelConnectivity | None: ...


class NextStepWatch:
    """The live :func:`next_step_health` of one step, read at each metrics scrape."""

    def __init__(self, next_steps: Sequence[int], discovery: _Discovery,
                 forwarder: _Forwarding) -> None:
        self.next_steps = tuple(next_steps)
        self._discovery = discovery
        self._forwarder = forwarder

    def health(self) -> list[NextStepHealth]:
        """Each next step's health now; opens the channel to a next step not called yet, so its
        connectivity is known (and kept connecting) before the first request."""
        active = self._discovery.active()
        for step_id in self.next_steps:
            if step_id in active:
                self._forwarder.stub(active[step_id])
        return next_step_health(self.next_steps, active, self._forwarder.channel_state,
                                self._forwarder.outcomes.last, time.time())

"""A step knows whether it can reach each next step (discovery, channel state, last forward's
outcome) and says so in its metrics, so "ready" is not all the step tells."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from step_fixtures import MutableDiscovery, in_process, noisy_image, raw_request
from stepchain.v1 import step_pb2_grpc

from stepsvc.ports import free_port
from stepsvc.routing.forward import Candidate, Forwarder, ForwardError
from stepsvc.routing.reachability import HopOutcome, NextStepWatch, next_step_health
from stepsvc.telemetry.metrics import StepMetrics

READY, DOWN = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE
CONNECTING = grpc.ChannelConnectivity.CONNECTING
NOW = 1000.0


@pytest.mark.parametrize(("active", "state", "last", "reachable", "reason"), [
    ({2: "a:1"}, READY, HopOutcome(True, "OK", "", NOW - 1), True, ""),
    ({2: "a:1"}, None, None, True, ""),  # no channel yet, nothing against it
    ({2: "a:1"}, CONNECTING, None, True, ""),
    ({}, None, None, False, "step 2 is not in discovery (not active)"),
    ({2: "a:1"}, DOWN, None, False, "channel TRANSIENT_FAILURE"),
    ({2: "a:1"}, DOWN, HopOutcome(False, "UNAVAILABLE", "connection refused", NOW - 3), False,
     "channel TRANSIENT_FAILURE; last forward 3 s ago: UNAVAILABLE: connection refused"),
    ({2: "a:1"}, CONNECTING, HopOutcome(False, "UNAVAILABLE", "refused", NOW), False,
     "last forward 0 s ago: UNAVAILABLE: refused"),
    # the channel is READY again since the failure: the hop works now
    ({2: "a:1"}, READY, HopOutcome(False, "UNAVAILABLE", "refused", NOW - 5), True, ""),
    # the next step answered, with an error of its own: the hop itself works
    ({2: "a:1"}, READY, HopOutcome(True, "INVALID_ARGUMENT", "", NOW), True, ""),
])
def test_next_step_health_from_discovery_channel_and_last_forward(
        active: dict[int, str], state: grpc.ChannelConnectivity | None,
        last: HopOutcome | None, reachable: bool, reason: str) -> None:
    [hop] = next_step_health([2], active, lambda _: state, lambda _: last, NOW)
    assert (hop.step_id, hop.reachable, hop.reason) == (2, reachable, reason)


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_step_reports_an_unreachable_next_step_in_its_metrics_and_recovers() -> None:
    steps = [{"id": 1, "type": "identity", "next_step": 2}, {"id": 2, "type": "grayscale"}]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    discovery = MutableDiscovery({2: dead})
    forwarder = Forwarder(64 << 20)
    watch = NextStepWatch([2], discovery, forwarder)
    metrics = StepMetrics("p1", 1, "identity", registry=CollectorRegistry())
    metrics.watch_next_steps(watch.health)
    try:
        # Before any request: the channel is opened and found down.
        wait_for(lambda: not watch.health()[0].reachable)
        [hop] = watch.health()
        assert hop.address == dead and "channel TRANSIENT_FAILURE" in hop.reason
        exposition = generate_latest(metrics.registry).decode()
        assert ('stepchain_step_next_step_reachable{channel="TRANSIENT_FAILURE",next_address="'
                + dead + '",next_step="2",pipeline_id="p1"') in exposition
        assert exposition.count("stepchain_step_next_step_reachable{") == 1
        with in_process() as pipe:
            live = pipe.add(2, steps)
            discovery.mapping[2] = live.address  # e.g. the duplicate gone, the right port back
            wait_for(lambda: watch.health()[0].reachable)
            entry = pipe.add(1, steps)
            with grpc.insecure_channel(entry.address) as channel:
                step_pb2_grpc.StepServiceStub(channel).Process(raw_request(noisy_image()),
                                                               timeout=20)
            assert [h.reachable for h in watch.health()] == [True]
            assert 'channel="READY"' in generate_latest(metrics.registry).decode()
    finally:
        forwarder.close()


def test_a_failed_forward_marks_the_hop_until_its_channel_is_ready_again() -> None:
    forwarder = Forwarder(64 << 20, next_step_wait=0.0)
    dead = f"127.0.0.1:{free_port()}"
    discovery = MutableDiscovery({2: dead})
    try:
        with pytest.raises(ForwardError):
            forwarder.forward(b"", [Candidate(2, "grayscale", dead)], timeout=5)
        outcome = forwarder.outcomes.last(dead)
        assert outcome is not None and not outcome.answered and outcome.code == "UNAVAILABLE"
        [hop] = NextStepWatch([2], discovery, forwarder).health()
        assert not hop.reachable and "last forward" in hop.reason and "UNAVAILABLE" in hop.reason
    finally:
        forwarder.close()

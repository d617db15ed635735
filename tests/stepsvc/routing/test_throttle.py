"""Client-side adaptive throttling as a pure function of the recent accept ratio: nothing refused
while the backend accepts half or more, the SRE book's formula beyond, a sliding window, and the
interceptor's local refusal naming the backend."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from stepsvc.routing.throttle import (
    AdaptiveThrottle,
    LocallyRefused,
    ThrottlingInterceptor,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _feed(throttle: AdaptiveThrottle, requests: int, refused_every: int) -> int:
    """`requests` requests, every `refused_every`-th one sent refused by the backend (0:
    none); returns how many were sent."""
    sent = 0
    for _ in range(requests):
        if throttle.allow():
            sent += 1
            refused = refused_every and sent % refused_every == 0
            throttle.record(grpc.StatusCode.RESOURCE_EXHAUSTED if refused
                            else grpc.StatusCode.OK)
    return sent


def test_nothing_is_refused_while_the_backend_accepts_at_least_half() -> None:
    throttle = AdaptiveThrottle(clock=_Clock(), draw=lambda: 0.0)  # refuses at any p > 0
    assert _feed(throttle, 100, refused_every=2) == 100  # half refused by the backend
    assert throttle.counts() == (100, 50)
    assert throttle.refusal_probability() == 0.0
    assert throttle.allow()


@pytest.mark.parametrize(("requests", "accepts", "probability"),
                         [(10, 0, 10 / 11), (30, 10, 10 / 31), (100, 50, 0.0), (0, 0, 0.0)])
def test_refusal_probability_is_the_sre_formula(requests: int, accepts: int,
                                                probability: float) -> None:
    throttle = AdaptiveThrottle(clock=_Clock(), draw=lambda: 1.0)
    for i in range(requests):
        throttle.allow()
        throttle.record(grpc.StatusCode.OK if i < accepts else grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert throttle.refusal_probability() == pytest.approx(probability)


def test_requests_in_flight_are_not_mistaken_for_refusals() -> None:
    throttle = AdaptiveThrottle(clock=_Clock(), draw=lambda: 0.0)
    assert all(throttle.allow() for _ in range(16))  # a burst, no answer yet
    assert throttle.counts() == (0, 0)


def test_only_resource_exhausted_counts_as_a_refusal() -> None:
    throttle = AdaptiveThrottle(clock=_Clock())
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.INVALID_ARGUMENT, None):
        throttle.allow()
        throttle.record(code)
    assert throttle.counts() == (4, 4)


def test_the_window_forgets_what_is_older_than_it() -> None:
    clock = _Clock()
    throttle = AdaptiveThrottle(clock=clock, window_s=10.0, draw=lambda: 1.0)
    _feed(throttle, 50, refused_every=1)  # all refused: one sent, then refused locally
    assert throttle.counts() == (50, 0) and throttle.refusal_probability() > 0.9
    clock.now += 10.0
    assert throttle.counts() == (0, 0) and throttle.refusal_probability() == 0.0


def test_at_three_times_capacity_the_backend_gets_about_twice_what_it_accepts() -> None:
    rng = random.Random(1)
    throttle = AdaptiveThrottle(clock=_Clock(), draw=rng.random)
    sent = 0
    for _tick in range(1000):  # each tick the caller wants 3 requests, the backend takes 1
        capacity = 1
        for _ in range(3):
            if throttle.allow():
                sent += 1
                accepted = capacity > 0
                capacity -= accepted
                throttle.record(grpc.StatusCode.OK if accepted
                                else grpc.StatusCode.RESOURCE_EXHAUSTED)
    requests, accepts = throttle.counts()
    assert requests == 3000 and accepts > 900
    assert 1.8 < sent / accepts < 2.2  # a third of the requests never left the caller


def test_a_local_refusal_is_resource_exhausted_naming_the_backend_and_its_ratio() -> None:
    throttle = AdaptiveThrottle(clock=_Clock(), draw=lambda: 0.0)
    _feed(throttle, 20, refused_every=1)
    interceptor = ThrottlingInterceptor(throttle, "the pipeline at 10.0.0.1:50051")
    sent: list[Any] = []
    outcome = interceptor.intercept_unary_unary(lambda details, request: sent.append(request),
                                                None, b"request")
    assert sent == []
    assert isinstance(outcome, LocallyRefused) and isinstance(outcome, grpc.RpcError)
    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcome.details().startswith("not sent: the pipeline at 10.0.0.1:50051 accepted 0 of "
                                        "the last 21 requests in 10 s")
    with pytest.raises(LocallyRefused):
        outcome.result()

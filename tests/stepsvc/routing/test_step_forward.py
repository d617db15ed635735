"""Forwarding with failover: candidates share the caller's deadline instead of each restarting it;
when none answered, the request waits within its deadline for one to come back; a hop that does
not answer is named before the caller's own deadline."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from stepchain.v1 import step_pb2

from stepsvc.protocol import FAILED_STEP_KEY
from stepsvc.routing.forward import (
    ANSWER_MARGIN_MAX_S,
    Candidate,
    Forwarder,
    ForwardError,
    answer_margin,
)


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class _SlowDownStub:
    """A step that takes `delay` seconds and then answers UNAVAILABLE; records its timeouts."""

    def __init__(self, delay: float, seen: list[float | None]) -> None:
        self.delay, self.seen = delay, seen

    def Process(self, request: Any, *, timeout: float | None, metadata: Any) -> Any:
        self.seen.append(timeout)
        time.sleep(self.delay)
        raise _Unavailable()

    __call__ = with_call = Process  # the forwarder's stub is the Process callable itself


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(i, "identity", f"127.0.0.1:{50050 + i}") for i in range(1, n + 1)]


def test_failover_attempts_share_the_callers_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []
    forwarder = Forwarder(1 << 20, next_step_wait=0)
    monkeypatch.setattr(forwarder, "stub", lambda address: _SlowDownStub(0.2, seen))
    with pytest.raises(ForwardError) as info:
        forwarder.forward(step_pb2.ProcessRequest(), _candidates(2), timeout=1.0)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 2
    first, second = seen
    assert first is not None and second is not None
    assert second <= first - 0.2


def test_failover_stops_with_deadline_exceeded_once_the_deadline_is_spent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", lambda address: _SlowDownStub(0.3, seen))
    with pytest.raises(ForwardError) as info:
        forwarder.forward(step_pb2.ProcessRequest(), _candidates(3), timeout=0.2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline passed during failover before step 2 (identity)" in info.value.message
    assert len(seen) == 1 and info.value.attempts == 1


def test_without_a_deadline_every_attempt_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []
    forwarder = Forwarder(1 << 20, next_step_wait=0)
    monkeypatch.setattr(forwarder, "stub", lambda address: _SlowDownStub(0.0, seen))
    with pytest.raises(ForwardError):
        forwarder.forward(step_pb2.ProcessRequest(), _candidates(2), timeout=None)
    assert seen == [None, None]


class _Answers:
    """A stub per address answering from a script: an exception to raise or bytes to return."""

    def __init__(self, script: dict[str, list[Any]], seen: list[tuple[str, float | None]]) -> None:
        self.script, self.seen = script, seen

    def stub(self, address: str) -> Any:
        def call(request: Any, *, timeout: float | None, metadata: Any) -> Any:
            self.seen.append((address, timeout))
            outcome = self.script[address].pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome, _Call()
        return type("Stub", (), {"with_call": staticmethod(call)})()


class _Call:
    def initial_metadata(self) -> tuple[()]:
        return ()


class _Named(_Unavailable):
    """UNAVAILABLE answered by a step (its trailer names it): it has no next step of its own."""

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ((FAILED_STEP_KEY, "1"),)

    def details(self) -> str:
        return "step 1 (identity): no active next step"


class _Deadline(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_a_request_waits_for_a_candidate_coming_back_instead_of_failing_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float | None]] = []
    a, b = (c.address for c in _candidates(2))
    answers = _Answers({a: [_Unavailable(), b"ok"], b: [_Unavailable()]}, seen)
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", answers.stub)
    threading.Timer(0.3, forwarder.states.update, (a, grpc.ChannelConnectivity.READY)).start()
    started = time.monotonic()
    result = forwarder.forward(b"request", _candidates(2), timeout=5.0)
    assert (result.step_id, result.attempts, result.response) == (1, 3, b"ok")
    assert 0.25 < time.monotonic() - started < 2.0
    assert [address for address, _ in seen] == [a, b, a]


def test_the_wait_ends_with_deadline_exceeded_naming_every_step_tried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = (c.address for c in _candidates(2))
    answers = _Answers({a: [_Unavailable()], b: [_Unavailable()]}, [])
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", answers.stub)
    started = time.monotonic()
    with pytest.raises(ForwardError) as info:
        forwarder.forward(b"request", _candidates(2), timeout=0.6)
    took = time.monotonic() - started
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no next step answered within the request's deadline (waited" in info.value.message
    assert "step 1 (identity)" in info.value.message and "step 2 (identity)" in info.value.message
    assert 0.6 - answer_margin(0.6) - 0.05 < took < 0.6  # answered before the caller's deadline


def test_next_step_wait_bounds_the_wait_below_a_long_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = _candidates(1)[0].address
    forwarder = Forwarder(1 << 20, next_step_wait=0.3)
    monkeypatch.setattr(forwarder, "stub", _Answers({a: [_Unavailable()]}, []).stub)
    started = time.monotonic()
    with pytest.raises(ForwardError) as info:
        forwarder.forward(b"request", _candidates(1), timeout=30.0)
    assert time.monotonic() - started < 1.5
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "--next-step-wait" in info.value.message


def test_a_step_that_answered_unavailable_is_failed_over_without_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = (c.address for c in _candidates(2))
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub",
                        _Answers({a: [_Named()], b: [_Unavailable()]}, []).stub)
    started = time.monotonic()
    with pytest.raises(ForwardError) as info:
        forwarder.forward(b"request", _candidates(2), timeout=30.0)
    assert time.monotonic() - started < 0.5
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no next step took the request; tried 2" in info.value.message


def test_a_hop_that_does_not_answer_is_named_before_the_callers_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float | None]] = []
    a = _candidates(1)[0].address
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", _Answers({a: [_Deadline()]}, seen).stub)
    with pytest.raises(ForwardError) as info:
        forwarder.forward(b"request", _candidates(1), timeout=3.0)
    (_, hop_timeout), = seen
    assert hop_timeout is not None and hop_timeout <= 3.0 - answer_margin(3.0)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.failed_step == 1
    assert info.value.message.startswith("step 1 (identity) at 127.0.0.1:50051 did not answer "
                                         "within")


@pytest.mark.parametrize(("remaining", "margin"), [(0.05, 0.02), (1.0, 0.1), (60.0,
                                                                             ANSWER_MARGIN_MAX_S)])
def test_the_answer_margin_is_a_tenth_of_the_deadline_within_bounds(remaining: float,
                                                                    margin: float) -> None:
    assert answer_margin(remaining) == pytest.approx(margin)


class _Refused(_Unavailable):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "step 1 (identity): queue full"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ((FAILED_STEP_KEY, "1"),)


def test_a_next_step_that_keeps_refusing_is_not_sent_what_it_would_refuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float | None]] = []
    a = _candidates(1)[0].address
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", _Answers({a: [_Refused()] * 200}, seen).stub)
    messages = []
    for _ in range(100):
        with pytest.raises(ForwardError) as info:
            forwarder.forward(b"request", _candidates(1), timeout=5.0)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        messages.append(info.value.message)
    local = [m for m in messages if "not sent" in m]
    assert len(seen) + len(local) == 100 and len(local) > 80  # most never left this step
    assert local[-1].startswith("step 1 (identity) at 127.0.0.1:50051: not sent: step 1 "
                                "accepted 0 of the last")

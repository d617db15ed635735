"""Forwarding with failover: candidates share the caller's deadline instead of each restarting it."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from stepchain.v1 import step_pb2

from stepsvc.routing.forward import Candidate, Forwarder, ForwardError


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
    forwarder = Forwarder(1 << 20)
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
    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", lambda address: _SlowDownStub(0.0, seen))
    with pytest.raises(ForwardError):
        forwarder.forward(step_pb2.ProcessRequest(), _candidates(2), timeout=None)
    assert seen == [None, None]

"""Replicas of a step share its traffic: one round_robin channel over every replica's address,
and failover tries another replica of the same step before another step."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from step_fixtures import MutableDiscovery, in_process, noisy_image, pipeline, raw_request
from stepchain.v1 import step_pb2

from stepsvc.routing.forward import Candidate, Forwarder, replica_tries
from stepsvc.step.hooks import StepObserver
from stepsvc.step.server import ServerSettings, StepServer, build_server

CHAIN = [{"id": 0, "type": "identity", "next_step": [1, 2], "preferred_next": 1},
         {"id": 1, "type": "identity"},
         {"id": 2, "type": "identity"}]


class CountingObserver(StepObserver):
    """Counts the requests one replica finished, by status code."""

    def __init__(self) -> None:
        self.codes: Counter[grpc.StatusCode] = Counter()
        self._lock = threading.Lock()

    def finished(self, *, code: grpc.StatusCode, **_: Any) -> None:
        with self._lock:
            self.codes[code] += 1


@contextmanager
def replicas(step_id: int, count: int) -> Iterator[list[tuple[StepServer, CountingObserver]]]:
    """`count` in-process replicas of step `step_id` of CHAIN, each counting its requests."""
    started: list[tuple[StepServer, CountingObserver]] = []
    try:
        for _ in range(count):
            observer = CountingObserver()
            server = build_server(pipeline(step_id, CHAIN), MutableDiscovery(),
                                  ServerSettings(host="127.0.0.1", port=0), observer=observer)
            server.start()
            started.append((server, observer))
        yield started
    finally:
        for server, _ in started:
            server.stop(0)


def ipv4_list(servers: list[tuple[StepServer, CountingObserver]]) -> str:
    return "ipv4:" + ",".join(server.address for server, _ in servers)


def test_a_step_is_tried_once_per_listed_replica_and_three_times_behind_a_dns_name() -> None:
    assert replica_tries("127.0.0.1:50051") == 1
    assert replica_tries("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3") == 3
    assert replica_tries("dns:///demo-step-1.prod.svc.cluster.local:50051") == 3


def test_upstream_spreads_requests_over_every_replica_of_the_next_step() -> None:
    with in_process() as pipe, replicas(1, 3) as step1:
        pipe.add(0, CHAIN)
        pipe.discovery.mapping[1] = ipv4_list(step1)
        stub = pipe.stub(0)
        for _ in range(60):
            response = stub.Process(raw_request(noisy_image(8, 8)), timeout=30)
            assert [t.step_id for t in response.timings] == [0, 1]
        per_replica = [observer.codes[grpc.StatusCode.OK] for _, observer in step1]
    assert sum(per_replica) == 60
    # round_robin: every replica gets a share (the first requests may all reach the replica
    # that connected first, so the bound is loose here; the benchmark measures the spread).
    assert min(per_replica) >= 10, per_replica


def test_failover_tries_another_replica_of_the_same_step_before_the_next_step() -> None:
    with in_process() as pipe, replicas(1, 2) as step1:
        pipe.add(0, CHAIN)
        step2 = pipe.add(2, CHAIN)
        pipe.discovery.mapping[1] = ipv4_list(step1)
        stub = pipe.stub(0)
        while min(observer.codes[grpc.StatusCode.OK] for _, observer in step1) == 0:
            stub.Process(raw_request(noisy_image(8, 8)), timeout=30)  # both replicas connected
        draining_server, draining = step1[0]
        draining_server.servicer.admission.close()  # refuses with FAILED_PRECONDITION + draining
        healthy_before = step1[1][1].codes[grpc.StatusCode.OK]
        attempts = []
        for _ in range(20):
            response = stub.Process(raw_request(noisy_image(8, 8)), timeout=30)
            assert [t.step_id for t in response.timings] == [0, 1]
            attempts.append(response.timings[0].forward_attempts)
        assert draining.codes[grpc.StatusCode.FAILED_PRECONDITION] >= 1
        assert step1[1][1].codes[grpc.StatusCode.OK] - healthy_before == 20
        assert 2 in attempts  # a request that met the draining replica went to the other one
        assert step2.servicer.admission.inflight == 0


class _Refusing(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_failover_moves_to_the_next_step_once_every_replica_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Stub:
        """The forwarder's stub is the Process callable itself."""

        def __init__(self, address: str) -> None:
            self.address = address

        def with_call(self, request: Any, **_: Any) -> tuple[bytes, None]:
            calls.append(self.address)
            if self.address.startswith("ipv4:"):
                raise _Refusing()
            return step_pb2.ProcessResponse(request_id="ok").SerializeToString(), None

        __call__ = with_call

    forwarder = Forwarder(1 << 20)
    monkeypatch.setattr(forwarder, "stub", Stub)
    replicas_of_1 = "ipv4:127.0.0.1:1,127.0.0.1:2"
    result = forwarder.forward(step_pb2.ProcessRequest(),
                               [Candidate(1, "identity", replicas_of_1),
                                Candidate(2, "identity", "127.0.0.1:3")], timeout=5)
    assert calls == [replicas_of_1, replicas_of_1, "127.0.0.1:3"]
    assert result.step_id == 2 and result.attempts == 3


def test_a_step_asks_clients_to_reconnect_after_the_maximum_connection_age() -> None:
    # Reconnecting is when a dns:/// channel resolves again and finds replicas added since.
    server = build_server(pipeline(1, CHAIN), MutableDiscovery(),
                          ServerSettings(host="127.0.0.1", port=0, max_connection_age=0.5,
                                         max_connection_age_grace=1.0))
    server.start()
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(server.address)
    try:
        channel.subscribe(states.append, try_to_connect=False)
        from stepchain.v1 import step_pb2_grpc

        step_pb2_grpc.StepServiceStub(channel).Process(raw_request(noisy_image(8, 8)), timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _idle_after_ready(states):
            time.sleep(0.1)
        assert _idle_after_ready(states), states
    finally:
        channel.close()
        server.stop(0)


def _idle_after_ready(states: list[grpc.ChannelConnectivity]) -> bool:
    seen = list(states)  # appended to by gRPC's callback thread
    ready = grpc.ChannelConnectivity.READY
    return ready in seen and grpc.ChannelConnectivity.IDLE in seen[seen.index(ready):]

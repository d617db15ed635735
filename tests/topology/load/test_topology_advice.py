"""Scaling advice from step loads: Little's law sizing, actions, bottleneck, confidence."""

from __future__ import annotations

from dataclasses import replace

import pytest

from topology.load.advice import (
    HOST_LIMIT,
    MAINTAIN,
    SCALE_DOWN,
    SCALE_UP,
    advise,
    advise_step,
    confidence,
)
from topology.load.step_load import StepLoad


def load(step_id: int = 1, *, rate: float = 10.0, service: float | None = 0.05,
         replicas: int = 1, window: float = 10.0, refusals: float = 0.0,
         queued: float = 0.0, queue_wait: float | None = 0.0) -> StepLoad:
    """A step load without CPU figures (sized by wall time, as steps before them were)."""
    requests = rate * window
    return StepLoad(
        pipeline_id="p", step_id=step_id, step_type="blur", window_s=window, replicas=replicas,
        requests=requests, requests_per_s=rate, refusals_per_s=refusals, cancelled_per_s=0.0,
        error_pct=0.0, p50_s=service, p95_s=service, queue_wait_s=queue_wait, kernel_s=service,
        forward_s=0.0, service_s=service,
        utilisation=rate * (service or 0.0) / replicas, cpu_s_per_request=None,
        cpu_cores=None, cpu_source=None, cpu_utilisation=None, slot_utilisation=None,
        host_busy_pct=None, host_cpu_cores=None, in_flight=0.0, busy=0.0,
        queued=queued, max_inflight=16.0, max_queue=64.0, cpu_pct=50.0, rss_bytes=1e8)


def cpu_load(*, rate: float, cpu_per_request: float, cores: float, source: str = "host",
             service: float, host_busy_pct: float, host_cores: float = 2.0,
             replicas: int = 1, max_inflight: float = 16.0, queued: float = 0.0,
             queue_wait: float = 0.0) -> StepLoad:
    """A step load with the CPU figures the steps expose (stepsvc.telemetry.cpu)."""
    cpu_utilisation = rate * cpu_per_request / (cores * replicas)
    slot_utilisation = rate * service / max_inflight
    return replace(load(rate=rate, service=service, replicas=replicas, queued=queued,
                        queue_wait=queue_wait),
                   step_type="deblur", cpu_s_per_request=cpu_per_request, cpu_cores=cores,
                   cpu_source=source, cpu_utilisation=cpu_utilisation,
                   slot_utilisation=slot_utilisation,
                   utilisation=max(cpu_utilisation, slot_utilisation),
                   host_busy_pct=host_busy_pct, host_cpu_cores=host_cores,
                   max_inflight=max_inflight, cpu_pct=rate * cpu_per_request * 100)


def test_a_saturated_two_core_host_is_the_limit_not_a_reason_for_seven_replicas() -> None:
    # What the console showed on a 2-core machine: deblur at 6 req/s, 0.73 s of wall time per
    # request (mostly waiting for a core, 16 at once) = "439 %" -> "scale up 1->7".
    wall = load(rate=6.0, service=0.73)
    assert advise_step(wall).advised_replicas == 7  # Little's law on wall time
    # What a replica consumes: 0.31 CPU-s a request, 1.86 of the host's 2 cores, and the host
    # 98 % busy with every step together.
    saturated = cpu_load(rate=6.0, cpu_per_request=0.31, cores=2.0, service=0.73,
                         host_busy_pct=98.0)
    advice = advise_step(saturated)
    assert advice.action == HOST_LIMIT
    assert advice.advised_replicas == advice.replicas == 1 and advice.kubectl == ""
    assert "its host's 2 cores are 98% busy" in advice.reason
    assert "6.0 req/s x 310.0 ms CPU per request = 1.86 cores busy" in advice.reason
    assert "a replica has 2 core(s) (the host's cores)" in advice.reason
    assert "More replicas on this host add no CPU" in advice.reason


def test_cpu_per_request_sizes_replicas_against_the_cores_a_replica_may_use() -> None:
    # 4 req/s x 0.5 CPU-s = 2 cores; a replica's CPU limit is 1 core; the node has room.
    busy = cpu_load(rate=4.0, cpu_per_request=0.5, cores=1.0, source="limit", service=0.6,
                    host_busy_pct=40.0, host_cores=16.0)
    advice = advise_step(busy)
    assert advice.action == SCALE_UP
    assert advice.needed == pytest.approx(2.0 / 0.7, rel=1e-3)
    assert advice.advised_replicas == 3
    assert ("4.0 req/s x 500.0 ms CPU per request = 2.00 cores busy; a replica has 1 core(s) "
            "(its CPU limit): 2.00 / (1 x 70%) = 2.86 -> 3 replicas") in advice.reason
    assert advice.kubectl.endswith("--replicas=3 -n default")


def test_a_light_cpu_load_on_a_busy_host_is_maintain() -> None:
    # the host is busy, but this step's requests get their CPU (50 of 60 ms): nothing to do
    light = cpu_load(rate=2.0, cpu_per_request=0.05, cores=2.0, service=0.06,
                     host_busy_pct=97.0)
    assert advise_step(light).action == MAINTAIN


def test_requests_waiting_for_a_core_on_a_saturated_host_say_the_host_is_the_limit() -> None:
    # Under target by its own CPU, but 40 ms of CPU take 400 ms: the host's cores are taken.
    starved = cpu_load(rate=3.0, cpu_per_request=0.04, cores=2.0, service=0.4,
                       host_busy_pct=99.0)
    advice = advise_step(starved)
    assert advice.action == HOST_LIMIT and advice.advised_replicas == 1
    assert "a request takes 40.0 ms of CPU but 400.0 ms in the step, waiting for a core" \
        in advice.reason


def test_in_flight_slots_size_a_step_whose_own_work_holds_them() -> None:
    # 40 req/s each holding a slot 0.5 s for little CPU (an I/O-bound kernel): 20 of 16 slots.
    slots = cpu_load(rate=40.0, cpu_per_request=0.01, cores=2.0, service=0.5,
                     host_busy_pct=30.0)
    advice = advise_step(slots)
    assert advice.action == SCALE_UP
    assert advice.advised_replicas == 2
    assert "20.0 of 16 in-flight slots busy" in advice.reason


def test_light_load_within_target_is_maintain() -> None:
    advice = advise_step(load(rate=10, service=0.05))  # 50% busy against 70%
    assert advice.action == MAINTAIN
    assert advice.advised_replicas == 1
    assert advice.kubectl == ""
    assert "50%" in advice.reason


def test_saturated_step_scales_up_to_littles_law_replicas() -> None:
    # 20 req/s x 0.2 s = 4 busy replicas; at 70% that is ceil(5.71) = 6.
    advice = advise_step(load(rate=20, service=0.2, replicas=2), namespace="imaging")
    assert advice.action == SCALE_UP
    assert advice.needed == pytest.approx(4 / 0.7, rel=1e-3)
    assert advice.advised_replicas == 6
    assert advice.kubectl == "kubectl scale deployment/p-step-1 --replicas=6 -n imaging"
    assert advice.hpa["minReplicas"] == 6
    assert "over the 70% target" in advice.reason


def test_refusals_scale_up_even_when_utilisation_looks_low() -> None:
    advice = advise_step(load(rate=5, service=0.01, refusals=3.0))
    assert advice.action == SCALE_UP
    assert advice.advised_replicas == 2
    assert "refusing 3.0 req/s" in advice.reason


def test_waiting_queue_scales_up_by_one() -> None:
    advice = advise_step(load(rate=10, service=0.05, queued=4, queue_wait=0.2))
    assert advice.action == SCALE_UP
    assert advice.advised_replicas == 2


def test_idle_replicas_scale_down_to_what_the_load_needs() -> None:
    advice = advise_step(load(rate=2, service=0.1, replicas=4))  # 0.2 busy -> 1 replica
    assert advice.action == SCALE_DOWN
    assert advice.advised_replicas == 1
    assert "--replicas=1" in advice.kubectl


def test_no_traffic_is_maintain_with_low_confidence() -> None:
    advice = advise_step(load(rate=0, service=None, replicas=3))
    assert advice.action == MAINTAIN
    assert advice.advised_replicas == 3
    assert advice.confidence == "low"


def test_confidence_grows_with_requests_and_window() -> None:
    assert confidence(load(rate=1, window=2))[0] == "low"
    assert confidence(load(rate=5, window=10))[0] == "medium"
    assert confidence(load(rate=50, window=10)) == ("high", 1.0)


def test_bottleneck_is_the_busiest_step_per_replica() -> None:
    loads = [load(0, rate=10, service=0.01), load(1, rate=10, service=0.3, replicas=2),
             load(2, rate=10, service=0.05)]
    advice = advise(loads)
    assert [a.bottleneck for a in advice] == [False, True, False]
    assert advice[1].action == SCALE_UP


def test_target_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="target utilisation"):
        advise_step(load(), target=1.5)


def test_advice_moves_from_maintain_to_scale_up_as_load_grows() -> None:
    quiet = load(rate=2, service=0.1)
    busy = replace(quiet, requests_per_s=30, requests=300, utilisation=3.0)
    assert advise_step(quiet).action == MAINTAIN
    assert advise_step(busy).action == SCALE_UP

"""Scaling advice from step loads: Little's law sizing, actions, bottleneck, confidence."""

from __future__ import annotations

from dataclasses import replace

import pytest

from topology.load.advice import MAINTAIN, SCALE_DOWN, SCALE_UP, advise, advise_step, confidence
from topology.load.step_load import StepLoad


def load(step_id: int = 1, *, rate: float = 10.0, service: float | None = 0.05,
         replicas: int = 1, window: float = 10.0, refusals: float = 0.0,
         queued: float = 0.0, queue_wait: float | None = 0.0) -> StepLoad:
    requests = rate * window
    return StepLoad(
        pipeline_id="p", step_id=step_id, step_type="blur", window_s=window, replicas=replicas,
        requests=requests, requests_per_s=rate, refusals_per_s=refusals, error_pct=0.0,
        p50_s=service, p95_s=service, queue_wait_s=queue_wait, kernel_s=service,
        forward_s=0.0, service_s=service,
        utilisation=rate * (service or 0.0) / replicas, in_flight=0.0, busy=0.0,
        queued=queued, max_inflight=16.0, max_queue=64.0, cpu_pct=50.0, rss_bytes=1e8)


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

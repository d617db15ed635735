"""Reading steps' /metrics: prometheus_client parsing, histograms, rates between scrapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from stepsvc.step.admission import Admission
from stepsvc.step.config import StepSpec
from stepsvc.telemetry.metrics import StepMetrics
from topology.load.scrape import Histogram, ScrapeError, merge_replicas, parse_samples
from topology.load.step_load import step_load
from topology.pipeline.flow import flow_order, layers


def step_metrics() -> tuple[StepMetrics, Admission]:
    metrics = StepMetrics("demo", 2, "deblur", registry=CollectorRegistry())
    admission = Admission(max_inflight=4, max_queue=8)
    metrics.watch_admission(admission)
    return metrics, admission


def observe(metrics: StepMetrics, seconds: float, code: str = "OK") -> None:
    import grpc

    metrics.duration.observe(seconds)
    metrics.observe_phase("queue", 0.0)
    metrics.observe_phase("kernel", seconds * 0.8)
    metrics.observe_phase("forward", 0.0)
    metrics.count_request(getattr(grpc.StatusCode, code))


def test_parses_a_step_exposition_with_prometheus_client() -> None:
    metrics, admission = step_metrics()
    admission.acquire()
    for _ in range(3):
        observe(metrics, 0.04)
    observe(metrics, 0.001, "RESOURCE_EXHAUSTED")
    [sample] = parse_samples(generate_latest(metrics.registry).decode(), at=1.0)
    assert (sample.pipeline_id, sample.step_id, sample.step_type) == ("demo", 2, "deblur")
    assert sample.requests == {"OK": 3.0, "RESOURCE_EXHAUSTED": 1.0}
    assert sample.refused == 1.0
    assert sample.duration.count == 4
    assert (sample.busy, sample.queued, sample.max_inflight, sample.max_queue) == (1, 0, 4, 8)


def test_openmetrics_scrape_carries_trace_id_exemplars() -> None:
    metrics, _ = step_metrics()
    metrics.duration.observe(0.02, {"trace_id": "ab" * 16})
    [sample] = parse_samples(openmetrics_latest(metrics.registry).decode(), at=0.0,
                             openmetrics=True)
    assert [e.trace_id for e in sample.exemplars] == ["ab" * 16]


def test_garbage_is_a_scrape_error_not_a_crash() -> None:
    with pytest.raises(ScrapeError):
        parse_samples("stepchain_step_in_flight{ 1 2 3", at=0.0)


def test_load_between_two_scrapes_gives_rates_latency_and_littles_law_utilisation() -> None:
    metrics, _ = step_metrics()
    observe(metrics, 0.1)
    [before] = parse_samples(generate_latest(metrics.registry).decode(), at=10.0)
    for _ in range(20):
        observe(metrics, 0.1)
    observe(metrics, 0.0, "RESOURCE_EXHAUSTED")
    observe(metrics, 0.0, "INTERNAL")
    [after] = parse_samples(generate_latest(metrics.registry).decode(), at=12.0)
    load = step_load(before, after)
    assert load.requests == 22
    assert load.requests_per_s == pytest.approx(11.0)
    assert load.refusals_per_s == pytest.approx(0.5)
    assert load.error_pct == pytest.approx(100 / 22)
    assert load.service_s == pytest.approx(2.0 / 21)  # 21 admitted shared 2 s of own work
    assert load.utilisation == pytest.approx(11.0 * 2.0 / 21)
    assert 0.05 < (load.p95_s or 0) <= 0.1


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    hist = Histogram(((0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)), 12.0, 100.0)
    assert hist.quantile(0.5) == pytest.approx(0.1)
    assert hist.quantile(0.75) == pytest.approx(0.15)


def test_restarted_step_counts_from_zero_instead_of_negative_rates() -> None:
    metrics, _ = step_metrics()
    for _ in range(10):
        observe(metrics, 0.01)
    [before] = parse_samples(generate_latest(metrics.registry).decode(), at=0.0)
    fresh, _ = step_metrics()
    observe(fresh, 0.01)
    [after] = parse_samples(generate_latest(fresh.registry).decode(), at=1.0)
    assert step_load(before, after).requests == 1


def test_replicas_sum_into_one_step() -> None:
    a, _ = step_metrics()
    b, _ = step_metrics()
    observe(a, 0.01)
    observe(b, 0.01)
    observe(b, 0.01)
    merged = merge_replicas([parse_samples(generate_latest(m.registry).decode(), at=1.0)[0]
                             for m in (a, b)])
    assert merged.replicas == 2
    assert merged.requests["OK"] == 3
    assert merged.max_inflight == 8


def spec(sid: int, nxt: list[int], preferred: int | None = None) -> StepSpec:
    return StepSpec(id=sid, type="identity", next_step=nxt, preferred_next=preferred)


def test_flow_order_follows_preferred_next_from_the_entry() -> None:
    steps = [spec(3, []), spec(0, [1, 2], preferred=2), spec(1, [3]), spec(2, [3]),
             spec(9, [])]
    assert layers(steps, 0) == [[0], [2, 1], [3], [9]]
    assert flow_order(steps, 0) == [0, 2, 1, 3, 9]


def test_live_metrics_forget_endpoints_nobody_watches_any_more() -> None:
    from topology.load.live import STALE_AFTER_S, LiveMetrics

    now = [0.0]
    metrics, _ = step_metrics()
    text = generate_latest(metrics.registry).decode()
    live = LiveMetrics(lambda endpoint, at: parse_samples(text, at), clock=lambda: now[0],
                       sleep=lambda s: now.__setitem__(0, now[0] + s))
    live.report(["a:1"])
    now[0] += STALE_AFTER_S + 1
    report = live.report(["b:2"])
    assert [load.step_id for load in report.loads] == [2]
    assert set(live._history) == {"b:2"}


def test_cancelled_calls_are_counted_apart_from_errors() -> None:
    metrics, _ = step_metrics()
    [before] = parse_samples(generate_latest(metrics.registry).decode(), at=0.0)
    for _ in range(8):
        observe(metrics, 0.05)
    observe(metrics, 0.01, "CANCELLED")  # a caller that went away: not the step's error
    observe(metrics, 0.01, "CANCELLED")
    observe(metrics, 0.01, "INTERNAL")
    [after] = parse_samples(generate_latest(metrics.registry).decode(), at=2.0)
    assert (after.cancelled, after.failed) == (2.0, 1.0)
    load = step_load(before, after)
    assert load.cancelled_per_s == pytest.approx(1.0)
    assert load.error_pct == pytest.approx(100 / 11)  # the INTERNAL one only


def test_cpu_figures_give_cpu_per_request_and_how_busy_the_host_is() -> None:
    metrics, _ = step_metrics()
    [exposed] = parse_samples(generate_latest(metrics.registry).decode(), at=0.0)
    assert exposed.cpu_source in ("limit", "request", "host")
    assert exposed.cpu_cores and exposed.host_cpu_cores and exposed.host_busy_seconds
    for _ in range(10):
        observe(metrics, 0.2)
    [after] = parse_samples(generate_latest(metrics.registry).decode(), at=10.0)
    # The process and host counters move on their own: fix them to what a 10 s window saw.
    before = replace(exposed, cpu_seconds=100.0, cpu_cores=2.0, cpu_source="host",
                     host_cpu_cores=2.0, host_busy_seconds=5000.0)
    after = replace(after, cpu_seconds=103.0, cpu_cores=2.0, cpu_source="host",
                    host_cpu_cores=2.0, host_busy_seconds=5019.0)
    load = step_load(before, after)
    assert load.cpu_s_per_request == pytest.approx(0.3)  # 3 CPU-s over 10 requests
    assert load.cpu_utilisation == pytest.approx(0.15)  # 0.3 cores of 2
    assert load.host_busy_pct == pytest.approx(95.0)  # 19 busy s of 2 cores x 10 s
    assert load.slot_utilisation == pytest.approx(1.0 * 0.2 / 4)  # own work 0.2 s, 4 slots
    assert load.utilisation == pytest.approx(max(0.15, 0.05))
    assert load.cpu_pct == pytest.approx(30.0)
    # A saturated host read a scrape's latency later than the window's end: 100 %, not 105 %.
    late = replace(after, host_busy_seconds=5021.0)
    assert step_load(before, late).host_busy_pct == 100.0

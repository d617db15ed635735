"""Per-step and per-second statistics kept apart from Locust's totals (pure, no Locust)."""

from __future__ import annotations

import csv
import io

import msgpack
import pytest
from stepchain.v1 import step_pb2

from loadtest.interval_stats import IntervalStats
from loadtest.latency import LatencyHistogram, bucket_us
from loadtest.step_format import STEP_HEADER, request_cells, step_cells, step_table

T0 = 1_800_000_000


def timing(step_id: int, kind: str, kernel: float, queue: float = 0.0, forward: float = 0.0,
           total: float = 0.0) -> step_pb2.StepTiming:
    return step_pb2.StepTiming(step_id=step_id, step_type=kind, kernel_ms=kernel,
                               queue_wait_ms=queue, forward_ms=forward, total_ms=total)


def test_histogram_keeps_microseconds_below_a_millisecond_and_three_digits_above() -> None:
    assert [bucket_us(ms) for ms in (0.0, 0.0004, 0.042, 0.9994, 1.2345, 48.76, 1234.5)] == [
        0, 0, 42, 999, 1230, 48800, 1230000]
    assert bucket_us(-1.0) == 0 and bucket_us(float("nan")) == 0


def test_histogram_percentiles_and_mean_are_sub_millisecond() -> None:
    histogram = LatencyHistogram.of([0.010, 0.020, 0.030, 0.040, 0.500] * 20)
    summary = histogram.summary()
    assert summary.count == 100
    assert summary.mean_ms == pytest.approx(0.12)
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (0.03, 0.5, 0.5)
    assert histogram.percentile(0.2) == 0.01 and histogram.percentile(0.21) == 0.02
    assert LatencyHistogram().summary().p50_ms is None


def test_histograms_merge_and_survive_locusts_msgpack_wire() -> None:
    first = LatencyHistogram.of([0.1, 0.2])
    second = LatencyHistogram.of([0.3, 7.5])
    wire = msgpack.unpackb(msgpack.packb(second.to_wire()), strict_map_key=False)
    first.merge(LatencyHistogram.from_wire(wire))
    assert first.count == 4 and first.mean_ms == pytest.approx(2.025)
    assert first.percentiles([1.0, 0.5]) == [7.5, 0.2]
    with pytest.raises(ValueError, match="not a latency histogram"):
        LatencyHistogram.from_wire(["x", [[1, -2]]])


def test_each_second_gets_one_row_per_step_with_its_own_percentiles() -> None:
    stats = IntervalStats()
    for n in range(10):
        stats.record_steps(T0, [timing(1, "identity", 0.05, queue=0.001 * n, total=1.0),
                                timing(2, "grayscale", 0.3, forward=0.0, total=0.4)])
    stats.record_steps(T0 + 1, [timing(1, "identity", 0.5), timing(2, "grayscale", 2.0)])
    _, rows = stats.close_before(T0 + 2)
    assert [(row.second, row.step, row.count) for row in rows] == [
        (T0, "step-1:identity", 10), (T0, "step-2:grayscale", 10),
        (T0 + 1, "step-1:identity", 1), (T0 + 1, "step-2:grayscale", 1)]
    first = rows[0].metrics
    assert first["kernel"].p95_ms == 0.05
    assert first["queue"].p50_ms == 0.004 and first["queue"].p99_ms == 0.009
    assert rows[2].metrics["kernel"].p50_ms == 0.5  # the second's own, not cumulative
    totals = stats.step_totals()
    assert [(row.step, row.count) for row in totals] == [("step-1:identity", 11),
                                                         ("step-2:grayscale", 11)]
    assert totals[1].metrics["kernel"].p99_ms == 2.0


def test_a_second_is_reported_once_and_later_samples_count_in_the_totals_only() -> None:
    stats = IntervalStats()
    stats.record_request(T0, 5.0, failed=False)
    requests, _ = stats.close_before(T0 + 1)
    assert [row.requests for row in requests] == [1]
    stats.record_request(T0, 6.0, failed=True)
    stats.record_steps(T0, [timing(1, "identity", 0.1)])
    assert stats.close_before(T0 + 1) == ([], [])
    assert stats.late_samples == 2
    assert stats.step_totals()[0].count == 1


def test_seconds_without_requests_still_carry_users_and_the_curves_target() -> None:
    stats = IntervalStats()
    stats.note_users(T0, 1, 2)
    stats.record_request(T0 + 1, 4.0, failed=True)
    stats.note_users(T0 + 1, 2, 8)
    rows, _ = stats.close_before()
    assert [(r.second, r.target_users, r.users, r.requests, r.failures) for r in rows] == [
        (T0, 2, 1, 0, 0), (T0 + 1, 8, 2, 1, 1)]
    assert request_cells(rows[0]) == [str(T0), "2", "1", "0", "0", "", "", "", ""]
    assert request_cells(rows[1])[5:] == ["4.000", "4.000", "4.000", "4.000"]


def test_a_master_adds_up_its_workers_seconds_and_totals() -> None:
    workers = [IntervalStats(), IntervalStats()]
    for index, worker in enumerate(workers):
        worker.record_request(T0, 10.0 * (index + 1), failed=index == 1)
        worker.record_steps(T0, [timing(1, "identity", 0.2 * (index + 1))], "shop")
    master = IntervalStats()
    for worker in workers:
        wire = msgpack.unpackb(msgpack.packb(worker.drain()), strict_map_key=False)
        master.merge_wire(wire)
    assert workers[0].drain()["seconds"] == []  # drained: never sent twice
    requests, steps = master.close_before()
    assert (requests[0].requests, requests[0].failures) == (2, 1)
    assert requests[0].latency.mean_ms == pytest.approx(15.0)
    assert [(row.step, row.count) for row in steps] == [("shop/step-1:identity", 2)]
    assert steps[0].metrics["kernel"].mean_ms == pytest.approx(0.3)
    assert master.step_totals()[0].count == 2
    with pytest.raises(ValueError, match="not a step report"):
        master.merge_wire({"v": 99})


def test_step_csv_rows_and_table_show_sub_millisecond_times() -> None:
    stats = IntervalStats()
    stats.record_steps(T0, [timing(2, "edges", 0.0421, queue=0.0007, forward=12.5,
                                   total=12.61)])
    _, rows = stats.close_before()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(STEP_HEADER)
    writer.writerow(step_cells(rows[0]))
    parsed = next(csv.DictReader(io.StringIO(text.getvalue())))
    assert parsed["Step"] == "step-2:edges" and parsed["Count"] == "1"
    assert parsed["Kernel Mean (ms)"] == "0.042" and parsed["Kernel 95% (ms)"] == "0.042"
    assert parsed["Queue 99% (ms)"] == "0.001"
    assert parsed["Forward 50% (ms)"] == "12.500" and parsed["Total Mean (ms)"] == "12.610"
    table = step_table(stats.step_totals())
    assert table[0].split()[:3] == ["per-step", "times", "(ms)"]
    assert table[1].split()[:4] == ["step-2:edges", "1", "0.042", "0.042"]
    assert step_table([]) == ["per-step times: no step timings (no request answered?)"]

"""Planning a job from what the store shows: shares, what is left, counts, rate, time left."""

from __future__ import annotations

import pytest

from topology.jobs.manifest import Item
from topology.jobs.plan import end_state, job_progress, pending, shard, throughput

ITEMS = [Item(i, f"in/{i}.jpg", f"out/{i}.jpg") for i in range(7)]


def test_shares_cover_every_item_exactly_once() -> None:
    shares = [shard(ITEMS, i, 3) for i in range(3)]
    assert [item.position for item in shares[0]] == [0, 3, 6]
    assert sorted(i.position for s in shares for i in s) == list(range(7))
    with pytest.raises(ValueError, match=r"within 0\.\.2"):
        shard(ITEMS, 3, 3)


def test_pending_skips_items_with_an_output_or_a_failure_record() -> None:
    left = pending(ITEMS, {"out/0.jpg": 1.0, "out/other.png": 2.0}, {"in/1.jpg"})
    assert [i.position for i in left] == [2, 3, 4, 5, 6]


def test_throughput_is_the_young_jobs_average_then_the_last_window() -> None:
    assert throughput([], created=0, now=10) is None
    assert throughput([5.0, 6.0, 7.0, 8.0], created=0, now=10) == pytest.approx(0.4)
    old = [float(t) for t in range(0, 100)]  # one a second for 100 s
    assert throughput(old, created=0, now=100) == pytest.approx(1.0)
    assert throughput(old, created=0, now=160) == 0.0  # stalled for a minute
    assert throughput([-50.0], created=0, now=10) is None  # written before this job


def test_progress_counts_only_expected_outputs_and_estimates_time_left() -> None:
    times = {"out/0.jpg": 1.0, "out/1.jpg": 2.0, "out/stray.png": 3.0}
    progress = job_progress(total=7, output_times=times, expected_outputs={i.output_key for i
                                                                           in ITEMS},
                            failed_inputs=1, retried=3, created=0.0, now=4.0,
                            final_state=None, cancel_requested=False, started=True)
    assert (progress.state, progress.done, progress.failed, progress.remaining) == (
        "running", 2, 1, 4)
    assert progress.throughput == pytest.approx(0.5)
    assert progress.eta_s == pytest.approx(8.0)


@pytest.mark.parametrize(("final", "cancel", "started", "state"), [
    (None, False, False, "queued"),
    (None, False, True, "running"),
    (None, True, True, "canceled"),
    ("succeeded", False, True, "succeeded"),
])
def test_state_follows_markers(final: str | None, cancel: bool, started: bool,
                               state: str) -> None:
    progress = job_progress(total=1, output_times={}, expected_outputs=set(), failed_inputs=0,
                            retried=0, created=0, now=1, final_state=final,
                            cancel_requested=cancel, started=started)
    assert progress.state == state


def test_a_job_ends_when_every_input_has_an_output_or_failed() -> None:
    assert end_state(3, 3, 0) == "succeeded"
    assert end_state(3, 2, 1) == "failed"
    assert end_state(3, 2, 0) is None

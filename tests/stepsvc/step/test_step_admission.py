"""Backpressure: in-flight limit, FIFO wait queue, immediate refusal when full, drain."""

from __future__ import annotations

import threading
import time

import pytest

from stepsvc.step.admission import Admission, Draining, QueueFull, QueueTimeout


def test_a_free_slot_is_taken_without_waiting() -> None:
    adm = Admission(2, 0)
    assert adm.acquire() == 0.0
    assert adm.acquire() == 0.0
    assert adm.inflight == 2


def test_beyond_inflight_and_queue_the_request_is_refused_at_once() -> None:
    adm = Admission(1, 1)
    adm.acquire()
    waiter = threading.Thread(target=adm.acquire, args=(5.0,))
    waiter.start()
    deadline = time.monotonic() + 5
    while adm.queued != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    with pytest.raises(QueueFull, match="--max-queue 1"):
        adm.acquire(5.0)
    assert time.monotonic() - start < 1.0  # refused, not queued
    adm.release()
    waiter.join(5)
    assert adm.inflight == 1 and adm.queued == 0


def test_waiters_get_slots_first_come_first_served_and_wait_time_is_measured() -> None:
    adm = Admission(1, 3)
    adm.acquire()
    order: list[int] = []
    waits: list[float] = []

    def wait(i: int) -> None:
        waits.append(adm.acquire(5.0))
        order.append(i)
        adm.release()

    threads = []
    for i in range(3):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        threads.append(t)
        while adm.queued != i + 1:
            time.sleep(0.005)
    time.sleep(0.05)
    adm.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    assert min(waits) >= 0.04


def test_a_waiter_whose_deadline_passes_gives_up_and_leaves_the_queue() -> None:
    adm = Admission(1, 1)
    adm.acquire()
    with pytest.raises(QueueTimeout, match="deadline passed"):
        adm.acquire(0.05)
    assert adm.queued == 0
    adm.release()
    assert adm.acquire(0.05) == 0.0


def test_after_close_new_requests_are_refused_and_wait_idle_sees_inflight_finish() -> None:
    adm = Admission(2, 2)
    adm.acquire()
    adm.close()
    with pytest.raises(Draining):
        adm.acquire()
    assert adm.wait_idle(0.05) is False
    threading.Timer(0.05, adm.release).start()
    assert adm.wait_idle(5.0) is True


def test_limits_must_be_sensible() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        Admission(0, 1)
    with pytest.raises(ValueError, match="max_queue"):
        Admission(1, -1)


def _busy(adm: Admission, hold_s: float) -> None:
    """One slot taken and given back after `hold_s` (what the expected wait learns from)."""
    adm.acquire()
    adm.release(hold_s)
    adm.acquire()


def test_a_request_whose_deadline_is_shorter_than_the_expected_wait_is_refused_at_once() -> None:
    adm = Admission(1, 10)
    _busy(adm, 0.5)  # requests hold the one slot ~500 ms
    start = time.monotonic()
    with pytest.raises(QueueFull, match="remaining deadline, 200 ms") as info:
        adm.acquire(0.2)
    assert time.monotonic() - start < 0.1  # at once, not after waiting out the deadline
    assert "expected wait for a slot, 500 ms" in str(info.value)
    assert "--max-inflight 1" in str(info.value)
    assert adm.queued == 0


def test_a_request_with_time_for_the_expected_wait_queues() -> None:
    adm = Admission(1, 10)
    _busy(adm, 0.05)
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(adm.acquire(5.0)))
    waiter.start()
    deadline = time.monotonic() + 5
    while adm.queued != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    adm.release(0.05)
    waiter.join(5)
    assert got and adm.inflight == 1


def test_expected_wait_beyond_the_queue_wait_bound_is_refused_at_once() -> None:
    adm = Admission(2, 100, max_queue_wait=0.1)
    adm.acquire()
    adm.release(0.3)
    adm.acquire()
    adm.acquire()  # both slots busy: the next would wait ~150 ms
    assert adm.expected_wait() == pytest.approx(0.15)
    with pytest.raises(QueueFull, match="--max-queue-wait-ms"):
        adm.acquire(10.0)


def test_by_default_a_request_expected_to_wait_longer_than_one_average_request_is_refused(
) -> None:
    adm = Admission(1, 100)
    adm.acquire()
    adm.release(0.2)  # a request holds the slot ~200 ms
    adm.acquire()
    waiter = threading.Thread(target=adm.acquire, args=(10.0,))
    waiter.start()  # expected wait 200 ms: within one average request, it queues
    deadline = time.monotonic() + 5
    while adm.queued != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(QueueFull, match="at most one average request"):
        adm.acquire(10.0)  # would wait ~400 ms
    adm.release(0.2)
    waiter.join(5)
    assert adm.inflight == 1 and adm.queued == 0


def test_an_unbounded_queue_wait_leaves_only_the_deadline_and_the_count() -> None:
    adm = Admission(1, 100, max_queue_wait=float("inf"))
    adm.acquire()
    adm.release(0.2)
    adm.acquire()
    threads = [threading.Thread(target=adm.acquire, args=(10.0,)) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while adm.queued != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert adm.queued == 3  # 600 ms expected: queued, not refused
    for _ in threads:
        adm.release(0.2)
    for t in threads:
        t.join(5)


def test_cut_off_sends_queued_requests_away_as_draining_and_marks_running_ones() -> None:
    adm = Admission(1, 5)
    adm.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            adm.acquire(10.0)
        except Draining as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while adm.queued != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    adm.cut_off()
    waiter.join(5)
    assert len(errors) == 1 and "draining" in str(errors[0])
    assert adm.cut and adm.closed and adm.queued == 0 and adm.inflight == 1


def test_a_slot_is_given_back_when_its_block_ends_even_by_an_error() -> None:
    adm = Admission(1, 0)
    with adm.slot() as waited:
        assert waited == 0.0 and adm.inflight == 1
        with pytest.raises(QueueFull):
            adm.acquire(0)
    assert adm.inflight == 0
    with pytest.raises(RuntimeError), adm.slot():
        raise RuntimeError("the request failed")
    assert adm.inflight == 0 and adm.hold_s is not None

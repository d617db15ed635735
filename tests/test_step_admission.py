"""Backpressure: in-flight limit, FIFO wait queue, immediate refusal when full, drain."""

from __future__ import annotations

import threading
import time

import pytest

from stepsvc.admission import Admission, Draining, QueueFull, QueueTimeout


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

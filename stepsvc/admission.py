"""Backpressure for one step: a bounded number of requests in flight and a bounded wait queue.

A request either gets a slot at once, waits in a first-come-first-served queue for one, or —
when the queue is full — is refused immediately, so an overloaded step answers
RESOURCE_EXHAUSTED instead of piling up work it will never finish in time.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full (RESOURCE_EXHAUSTED)."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited for a slot (DEADLINE_EXCEEDED)."""


class Draining(Exception):
    """The step is shutting down and takes no new requests (FAILED_PRECONDITION)."""


class Admission:
    """In-flight limit `max_inflight` with a FIFO wait queue of at most `max_queue` requests."""

    def __init__(self, max_inflight: int, max_queue: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._waiters: deque[threading.Event] = deque()
        self._closed = False

    @property
    def inflight(self) -> int:
        """Requests holding a slot now."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @property
    def closed(self) -> bool:
        """True once close() was called (draining)."""
        return self._closed

    def acquire(self, timeout: float | None = None) -> float:
        """Takes a slot, waiting at most `timeout` seconds; returns the seconds spent waiting.

        Raises QueueFull at once when the queue is full, QueueTimeout when `timeout` passes
        first, Draining when the step is closed.
        """
        start = time.perf_counter()
        with self._lock:
            if self._closed:
                raise Draining("the step is draining (shutting down) and takes no new requests")
            if self._inflight < self.max_inflight and not self._waiters:
                self._inflight += 1
                return 0.0
            if len(self._waiters) >= self.max_queue:
                raise QueueFull(
                    f"step is at its limit: {self._inflight} requests in flight (--max-inflight "
                    f"{self.max_inflight}) and {len(self._waiters)} waiting (--max-queue "
                    f"{self.max_queue}); retry later or add replicas")
            ticket = threading.Event()
            self._waiters.append(ticket)
        # release() hands a slot directly to the first waiter by setting its event.
        if ticket.wait(timeout):
            return time.perf_counter() - start
        with self._lock:
            if ticket.is_set():  # the slot arrived just as the wait timed out: keep it
                return time.perf_counter() - start
            self._waiters.remove(ticket)
            self._idle.notify_all()
        waited = time.perf_counter() - start
        raise QueueTimeout(f"deadline passed after waiting {waited * 1000:.0f} ms for a free slot "
                           f"(--max-inflight {self.max_inflight})")

    def release(self) -> None:
        """Gives a slot back (to the first waiter, if any)."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot moves on; inflight stays the same
            else:
                self._inflight -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Refuses new requests from now on; queued and in-flight ones carry on."""
        with self._lock:
            self._closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Waits until nothing is in flight or queued; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight or self._waiters:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

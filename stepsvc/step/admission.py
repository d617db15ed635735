"""Backpressure for one step: a bounded number of requests in flight and a bounded wait queue.

A request either gets a slot at once, waits in a first-come-first-served queue for one, or is
refused immediately, so an overloaded step answers RESOURCE_EXHAUSTED instead of piling up work
it will never finish in time. Refused at once are requests that find the queue full, and —
deadline-aware shedding, as gRPC's load-shedding guidance and Envoy's adaptive concurrency do —
requests whose remaining deadline is shorter than the wait the step expects for them, or whose
expected wait exceeds the step's queue-wait bound. The expected wait is the number of requests
ahead divided by the slots, times the moving average of how long a request holds a slot. The
bound is, unless configured, that average itself (a CoDel-like target: a request waits at most
about one turnover of the requests in flight), so latency under overload stays near latency at
saturation while the queue still keeps every slot busy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full, or the expected wait is longer than the
    request's deadline or the queue-wait bound allows (RESOURCE_EXHAUSTED)."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited for a slot (DEADLINE_EXCEEDED)."""


class Draining(Exception):
    """The step is shutting down and takes no new requests (FAILED_PRECONDITION)."""


#: Weight of the newest sample in the moving average of slot hold times.
EWMA_ALPHA = 0.2


class Admission:
    """In-flight limit `max_inflight` with a FIFO wait queue of at most `max_queue` requests,
    none expected to wait longer than `max_queue_wait` seconds (None: one average hold time;
    ``math.inf``: no bound)."""

    def __init__(self, max_inflight: int, max_queue: int,
                 max_queue_wait: float | None = None) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait
        #: Moving average of the seconds a request holds a slot; None until one finished.
        self.hold_s: float | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._waiters: deque[threading.Event] = deque()
        self._closed = False
        #: Set when a drain's grace ran out: queued requests are sent away, running ones stop.
        self._cut = False

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

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait for a slot (0 while one is free)."""
        with self._lock:
            return self._expected_wait()

    def _expected_wait(self) -> float:
        if self._inflight < self.max_inflight and not self._waiters:
            return 0.0
        if self.hold_s is None:
            return 0.0  # nothing measured yet: only the count bounds apply
        return (len(self._waiters) + 1) / self.max_inflight * self.hold_s

    def _limits(self) -> str:
        if self.max_queue_wait is None:
            bound = (f", expected wait at most one average request, "
                     f"{self.hold_s * 1000:.0f} ms (--max-queue-wait-ms)"
                     if self.hold_s is not None else "")
        elif self.max_queue_wait == float("inf"):
            bound = ""
        else:
            bound = (f", expected wait at most {self.max_queue_wait * 1000:.0f} ms "
                     "(--max-queue-wait-ms)")
        return (f"{self._inflight} requests in flight (--max-inflight {self.max_inflight}), "
                f"{len(self._waiters)} waiting (--max-queue {self.max_queue}){bound}")

    def _check(self, timeout: float | None) -> None:
        if self._closed:
            raise Draining("the step is draining (shutting down) and takes no new requests")
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(f"step is at its limit: {self._limits()}; retry later or add "
                            "replicas")
        expected = self._expected_wait()
        if timeout is not None and expected > timeout:
            raise QueueFull(
                f"the expected wait for a slot, {expected * 1000:.0f} ms (~"
                f"{(self.hold_s or 0) * 1000:.0f} ms per request), is longer than the "
                f"request's remaining deadline, {timeout * 1000:.0f} ms: refused now rather "
                f"than timing out in the queue; {self._limits()}; retry later or add replicas")
        bound = self.max_queue_wait if self.max_queue_wait is not None else self.hold_s
        if bound is not None and expected > bound:
            raise QueueFull(
                f"step is at its limit: the expected wait for a slot is "
                f"{expected * 1000:.0f} ms; {self._limits()}; retry later or add replicas")

    def acquire(self, timeout: float | None = None) -> float:
        """Takes a slot, waiting at most `timeout` seconds; returns the seconds spent waiting.

        Raises QueueFull at once when the queue is full or the expected wait is longer than
        `timeout` or the queue-wait bound, QueueTimeout when `timeout` passes first anyway,
        Draining when the step is closed.
        """
        start = time.perf_counter()
        with self._lock:
            if self._inflight < self.max_inflight and not self._waiters and not self._closed:
                self._inflight += 1
                return 0.0
            self._check(timeout)
            ticket = threading.Event()
            self._waiters.append(ticket)
        # release() hands a slot directly to the first waiter by setting its event.
        if ticket.wait(timeout):
            if self._cut:  # woken by cut(), not given a slot
                raise Draining("the step is draining (shutting down) and its grace ran out while "
                               "this request waited for a slot; retry on another replica")
            return time.perf_counter() - start
        with self._lock:
            if ticket.is_set():  # the slot arrived just as the wait timed out: keep it
                return time.perf_counter() - start
            self._waiters.remove(ticket)
            self._idle.notify_all()
        waited = time.perf_counter() - start
        raise QueueTimeout(f"deadline passed after waiting {waited * 1000:.0f} ms for a free slot "
                           f"(--max-inflight {self.max_inflight})")

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[float]:
        """A slot held for the body of a ``with`` (acquire, then release with the seconds it
        was held); yields the seconds waited. Raises what acquire raises."""
        waited = self.acquire(timeout)
        held = time.perf_counter()
        try:
            yield waited
        finally:
            self.release(time.perf_counter() - held)

    def release(self, held: float | None = None) -> None:
        """Gives a slot back (to the first waiter, if any); `held`: seconds it was held, which
        feeds the expected wait."""
        with self._lock:
            if held is not None:
                self.hold_s = held if self.hold_s is None else (
                    EWMA_ALPHA * held + (1 - EWMA_ALPHA) * self.hold_s)
            if self._waiters:
                self._waiters.popleft().set()  # the slot moves on; inflight stays the same
            else:
                self._inflight -= 1
                self._idle.notify_all()

    @property
    def cut(self) -> bool:
        """True once cut_off() was called: running requests should stop and answer."""
        return self._cut

    def cut_off(self) -> None:
        """The drain's grace ran out: sends every queued request away (Draining) and tells
        running ones to stop at their next chance (see :attr:`cut`)."""
        with self._lock:
            self._closed = self._cut = True
            while self._waiters:
                self._waiters.popleft().set()
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

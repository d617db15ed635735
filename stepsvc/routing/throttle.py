"""Client-side adaptive throttling: a caller whose backend keeps refusing stops sending it work it
will refuse (Google SRE book, "Handling Overload"; the scheme gRPC's RLS client uses).

Over a sliding window each caller counts its *requests* (everything it wanted to send, refused
locally or not) and the backend's *accepts* (answers that were not an overload refusal), and
refuses a new request locally with probability

    max(0, (requests - K * accepts) / (requests + 1))

With K = 2 nothing is refused while the backend accepts at least half; at 3x its capacity the
backend still gets about twice what it accepts, and the rest never leaves the caller — no
megabytes queued in an HTTP/2 send buffer only to be refused (the refusals of a 1080p frame at
3x saturation waited 1.5 s at p99 in the client's send queue). Only ``RESOURCE_EXHAUSTED``
counts as a refusal: a step down or draining is failover's business, not overload's. A request
sent is counted when its answer comes (one refused locally at once), so a burst still in flight
is not mistaken for refusals.

Every client stepchain ships keeps one per backend: ``stepchain submit`` (and tiles, batches,
the load driver of the network-fault harness) through :func:`throttled` channels, the Locust
user per target, the HTTP face for its loopback call, and each step per next step.
Pure: the clock and the random draw are injected, so the tests need no sleeping.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

#: SRE book's K: the backend gets up to K x what it accepts before callers refuse locally.
DEFAULT_K = 2.0
#: The window requests and accepts are counted over, seconds (in WINDOW_BUCKETS buckets).
DEFAULT_WINDOW_S = 10.0
WINDOW_BUCKETS = 10
#: The code a backend refuses overload with, and the one a local refusal answers with.
REFUSAL = grpc.StatusCode.RESOURCE_EXHAUSTED


class AdaptiveThrottle:
    """The accept ratio of one backend over the last `window_s` seconds and the local refusals
    it implies. Thread-safe."""

    def __init__(self, *, k: float = DEFAULT_K, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random) -> None:
        if k <= 0 or window_s <= 0:
            raise ValueError(f"K and the window must be > 0, got K={k}, window={window_s}")
        self.k = k
        self.window_s = window_s
        self._bucket_s = window_s / WINDOW_BUCKETS
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        #: [bucket index, requests, accepts], oldest first.
        self._buckets: deque[list[int]] = deque()

    def _current(self) -> list[int]:
        index = math.floor(self._clock() / self._bucket_s)
        while self._buckets and self._buckets[0][0] <= index - WINDOW_BUCKETS:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        return self._buckets[-1]

    def counts(self) -> tuple[int, int]:
        """(requests, accepts) in the window."""
        with self._lock:
            self._current()
            return (sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets))

    def refusal_probability(self) -> float:
        requests, accepts = self.counts()
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def allow(self) -> bool:
        """Whether to send a request (False: refuse it locally; it counts as a request now).
        A request let through counts once its answer is recorded."""
        with self._lock:
            bucket = self._current()
            requests = sum(b[1] for b in self._buckets)
            accepts = sum(b[2] for b in self._buckets)
            probability = max(0.0, (requests - self.k * accepts) / (requests + 1))
            refused = probability > 0.0 and self._draw() < probability
            if refused:
                bucket[1] += 1
        return not refused

    def record(self, code: grpc.StatusCode | None) -> None:
        """Counts the backend's answer to a request :meth:`allow` let through: a request, and
        an accept unless it is an overload refusal."""
        with self._lock:
            bucket = self._current()
            bucket[1] += 1
            if code != REFUSAL:
                bucket[2] += 1

    def describe(self, backend: str) -> str:
        """Why a request was refused locally, for the error message."""
        requests, accepts = self.counts()
        return (f"not sent: {backend} accepted {accepts} of the last {requests} requests in "
                f"{self.window_s:g} s (client-side adaptive throttling, K={self.k:g}); "
                "retry later")


class LocallyRefused(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """The RpcError (and completed call) of a request the throttle refused before sending."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return REFUSAL

    def details(self) -> str:
        return self._message

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class ThrottlingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Applies `throttle` to every unary call of a channel: refused locally (RESOURCE_EXHAUSTED,
    the message naming `backend` and its recent accept ratio) or sent and its answer counted."""

    def __init__(self, throttle: AdaptiveThrottle, backend: str) -> None:
        self.throttle = throttle
        self.backend = backend

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        if not self.throttle.allow():
            return LocallyRefused(self.throttle.describe(self.backend))
        outcome = continuation(client_call_details, request)
        outcome.add_done_callback(lambda done: self.throttle.record(_code(done)))
        return outcome


def _code(call: Any) -> grpc.StatusCode | None:
    try:
        return call.code()  # type: ignore[no-any-return]
    except Exception:  # a call that never started has no code: not an overload refusal
        return None


def throttled(channel: grpc.Channel, backend: str,
              throttle: AdaptiveThrottle | None = None) -> grpc.Channel:
    """`channel` with client-side adaptive throttling (a throttle of its own unless given one
    to share, e.g. every Locust user of one target)."""
    return grpc.intercept_channel(channel, ThrottlingInterceptor(throttle or AdaptiveThrottle(),
                                                                 backend))

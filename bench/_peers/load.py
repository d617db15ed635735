"""The one client that drives every system: closed-loop callers and an open-loop run.

A system hands the client a *caller factory*: each call of it returns a new caller (its own
connection), and each caller sends one request and returns when the answer is complete (raising
when it failed). :func:`closed_loop` runs `concurrency` callers back to back for a measured
window; :func:`open_loop` sends requests at Poisson arrival times whatever the answers do, and
times each from the moment it was due (not from when a thread was free to send it, so a system
that falls behind shows its queue in the latencies). Each run measures the system's process
tree over exactly its window (:class:`~bench._peers.meter.TreeMeter`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from bench._peers.meter import TreeMeter, Window

Caller = Callable[[], Any]


class Refused(Exception):
    """A caller's request the system refused on purpose to protect itself (gRPC
    RESOURCE_EXHAUSTED, HTTP 429 or 503): counted apart from errors, never in throughput."""


CallerFactory = Callable[[], Caller]
#: Callers of an open-loop run: requests due while all are busy wait (and their wait counts).
OPEN_LOOP_CALLERS = 64


@dataclass
class Run:
    """One measured run: closed loop at `concurrency` callers, or open loop at `offered_rps`."""

    mode: str
    concurrency: int | None
    offered_rps: float | None
    seconds: float
    latencies_ms: list[float]
    errors: int
    first_error: str | None
    window: Window
    load_1m: float
    refused: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput_rps(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def percentile(samples: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) by the nearest-rank method; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def closed_loop(factory: CallerFactory, concurrency: int, seconds: float, meter: TreeMeter,
                warmup_calls: int = 1, min_rounds: int = 2, max_seconds: float = 180.0) -> Run:
    """`concurrency` callers, each sending its next request when the last one answered, after
    each caller's `warmup_calls`. Callers stop starting requests once `seconds` have passed and
    `min_rounds` x `concurrency` answers came back (a slow system at many callers answers none
    in a short window otherwise), or after `max_seconds`; every answer counts, and throughput
    is answers over the time from the start to the last answer."""
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    refused = [0]
    started = [0.0]
    last_end = [0.0]
    wanted = min_rounds * concurrency

    def more() -> bool:
        now = time.perf_counter()
        with lock:
            done = len(latencies) + refused[0] + len(errors)
        return (now < started[0] + seconds or done < wanted) and now < started[0] + max_seconds

    def caller() -> None:
        try:
            call = factory()
            for _ in range(warmup_calls):
                call()
        except Exception as exc:  # the warm-up failing is an error of the run, reported
            with lock:
                errors.append(f"warm-up: {exc!r}")
            call = None
        warmed.wait()
        go.wait()
        while call is not None and more():
            start = time.perf_counter()
            try:
                call()
            except Refused:
                with lock:
                    refused[0] += 1
                continue
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            end = time.perf_counter()
            with lock:
                latencies.append((end - start) * 1000.0)
                last_end[0] = max(last_end[0], end)

    threads = [threading.Thread(target=caller, name=f"peers-caller-{i}", daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait()  # every caller warm: the window starts now
    meter.start_window()
    load = _load_1m()
    started[0] = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    window = meter.end_window()
    measured = max(1e-9, (last_end[0] or time.perf_counter()) - started[0])
    return Run("closed", concurrency, None, measured, latencies, len(errors),
               errors[0] if errors else None, window, load, refused[0])


def open_loop(factory: CallerFactory, rate_rps: float, seconds: float, meter: TreeMeter,
              seed: int = 0, drain_timeout_s: float = 120.0) -> Run:
    """Requests at Poisson arrival times of mean rate `rate_rps` for `seconds`, each timed from
    when it was due; throughput is answers over the time from the first arrival to the last
    answer. Requests unanswered `drain_timeout_s` after the last arrival count as errors."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = rng.expovariate(rate_rps)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate_rps)
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    refused = [0]
    last_end = [0.0]

    def job(due: float) -> None:
        call = getattr(local, "call", None)
        if call is None:
            call = local.call = factory()
        try:
            call()
        except Refused:
            with lock:
                refused[0] += 1
            return
        except Exception as exc:
            with lock:
                errors.append(repr(exc))
            return
        end = time.perf_counter()
        with lock:
            latencies.append((end - due) * 1000.0)
            last_end[0] = max(last_end[0], end)

    with ThreadPoolExecutor(OPEN_LOOP_CALLERS, thread_name_prefix="peers-open") as pool:
        meter.start_window()
        load = _load_1m()
        t0 = time.perf_counter() + 0.05
        futures = []
        for offset in arrivals:
            due = t0 + offset
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(job, due))
        _done, pending = wait(futures, timeout=drain_timeout_s)
        for f in pending:
            f.cancel()
        window = meter.end_window()
    unanswered = len(pending)
    elapsed = max(last_end[0], t0 + seconds) - t0
    return Run("open", None, rate_rps, elapsed, latencies, len(errors) + unanswered,
               errors[0] if errors else (f"{unanswered} unanswered" if unanswered else None),
               window, load, refused[0], extra={"requests_sent": len(arrivals)})


def _load_1m() -> float:
    return round(os.getloadavg()[0], 2)

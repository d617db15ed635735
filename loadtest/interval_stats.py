"""Per-second and whole-run statistics of a load test, kept apart from Locust's own totals.

Locust's totals count pipeline requests only. The time each step spent (kernel, queue wait,
forward, total — from the response's ``StepTiming`` list) and the requests of each second are
kept here instead, in :class:`~loadtest.latency.LatencyHistogram` s (sub-millisecond):

* per step and per second → ``StepRow`` s from ``close_before`` (``loadtest_steps.csv``);
* per step over the whole run → ``step_totals`` (``loadtest_steps_total.csv``, the Steps tab,
  the headless summary);
* per second: requests, failures, request latency, users and the curve's target users →
  ``RequestRow`` s from ``close_before`` (``loadtest_requests.csv``, what ``loadtest.plot``
  draws from).

``loadtest.step_format`` turns the rows into CSV cells and text.

Pure: no Locust, no clock. The caller says which second a sample belongs to and when a second
is over (``close_before``). Between a Locust worker and its master the open seconds travel as
``drain()`` → ``merge_wire()``; samples for a second the master already wrote count in the
totals only (``late_samples``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loadtest.latency import LatencyHistogram, Summary

#: Step metrics: name in reports -> ``StepTiming`` field (milliseconds).
STEP_METRICS: dict[str, str] = {
    "kernel": "kernel_ms", "queue": "queue_wait_ms", "forward": "forward_ms", "total": "total_ms",
}
#: Wire format version of ``drain()``; a master ignores reports of another version.
WIRE_VERSION = 1


def step_name(timing: Any, label: str | None = None) -> str:
    """``step-<id>:<type>``, prefixed ``<label>/`` when several pipelines are loaded."""
    prefix = f"{label}/" if label else ""
    return f"{prefix}step-{timing.step_id}:{timing.step_type or 'unknown'}"


@dataclass(frozen=True)
class StepRow:
    """One step's times over one second (``second`` = Unix time) or the whole run (None)."""

    second: int | None
    step: str
    count: int
    metrics: Mapping[str, Summary]


@dataclass(frozen=True)
class RequestRow:
    """Whole requests answered in one second, and the users running then."""

    second: int
    target_users: int | None
    users: int | None
    requests: int
    failures: int
    latency: Summary


def _metric_histograms() -> dict[str, LatencyHistogram]:
    return {metric: LatencyHistogram() for metric in STEP_METRICS}


class _Second:
    __slots__ = ("failures", "requests", "steps")

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, LatencyHistogram]] = {}
        self.requests = LatencyHistogram()
        self.failures = 0


class IntervalStats:
    """See the module docstring."""

    def __init__(self) -> None:
        self._open: dict[int, _Second] = {}
        self._users: dict[int, tuple[int | None, int | None]] = {}
        self._totals: dict[str, dict[str, LatencyHistogram]] = {}
        self._closed_before: int | None = None
        self.late_samples = 0

    def reset(self) -> None:
        """Forgets the run's totals (Locust's "Reset stats"); seconds already written stay."""
        self._totals.clear()
        self.late_samples = 0

    def record_request(self, second: int, response_ms: float, *, failed: bool) -> None:
        """One whole request (answered or failed) that ended in ``second``."""
        bucket = self._bucket(second)
        if bucket is None:
            self.late_samples += 1
            return
        bucket.requests.add(response_ms)
        bucket.failures += int(failed)

    def record_steps(self, second: int, timings: Iterable[Any], label: str | None = None) -> None:
        """Every ``StepTiming`` of one answered request that ended in ``second``."""
        bucket = self._bucket(second)
        for timing in timings:
            name = step_name(timing, label)
            total = self._totals.setdefault(name, _metric_histograms())
            per_second = None
            if bucket is not None:
                per_second = bucket.steps.setdefault(name, _metric_histograms())
            else:
                self.late_samples += 1
            for metric, field in STEP_METRICS.items():
                ms = float(getattr(timing, field))
                total[metric].add(ms)
                if per_second is not None:
                    per_second[metric].add(ms)

    def note_users(self, second: int, users: int | None, target_users: int | None) -> None:
        """The users running in ``second`` and the curve's target then (latest call wins)."""
        if self._closed_before is None or second >= self._closed_before:
            self._users[second] = (users, target_users)
            self._bucket(second)

    def _bucket(self, second: int) -> _Second | None:
        if self._closed_before is not None and second < self._closed_before:
            return None
        bucket = self._open.get(second)
        if bucket is None:
            bucket = self._open[second] = _Second()
        return bucket

    def close_before(self, second: int | None = None) -> tuple[list[RequestRow], list[StepRow]]:
        """Rows of every open second before ``second`` (all of them when None), oldest first.

        A closed second is not reported again; later samples for it count in the totals only.
        """
        done = sorted(s for s in self._open if second is None or s < second)
        request_rows: list[RequestRow] = []
        step_rows: list[StepRow] = []
        for s in done:
            bucket = self._open.pop(s)
            users, target = self._users.pop(s, (None, None))
            request_rows.append(RequestRow(
                second=s, target_users=target, users=users, requests=bucket.requests.count,
                failures=bucket.failures, latency=bucket.requests.summary()))
            for name in sorted(bucket.steps, key=_step_order):
                step_rows.append(_step_row(s, name, bucket.steps[name]))
        if done:
            last = done[-1] + 1
            self._closed_before = max(last, self._closed_before or last)
        if second is not None:
            self._closed_before = max(second, self._closed_before or second)
        return request_rows, step_rows

    def step_totals(self) -> list[StepRow]:
        """Each step's times over the whole run, in pipeline then step-id order."""
        return [_step_row(None, name, self._totals[name])
                for name in sorted(self._totals, key=_step_order)]

    def drain(self) -> dict[str, Any]:
        """The open seconds as plain data (for the master), forgetting them here."""
        wire: dict[str, Any] = {"v": WIRE_VERSION, "seconds": []}
        for s in sorted(self._open):
            bucket = self._open[s]
            wire["seconds"].append([
                s, bucket.requests.to_wire(), bucket.failures,
                [[name, {m: h.to_wire() for m, h in metrics.items()}]
                 for name, metrics in bucket.steps.items()],
            ])
        self._open.clear()
        self._users.clear()
        self._totals.clear()  # the master keeps the run's totals
        return wire

    def merge_wire(self, wire: Mapping[str, Any]) -> None:
        """Adds a worker's ``drain()``; ``ValueError`` when it is not one."""
        if not isinstance(wire, Mapping) or wire.get("v") != WIRE_VERSION:
            raise ValueError(f"not a step report of version {WIRE_VERSION}")
        try:
            for s, requests, failures, steps in wire["seconds"]:
                second = int(s)
                request_histogram = LatencyHistogram.from_wire(requests)
                bucket = self._bucket(second)
                if bucket is None:
                    self.late_samples += request_histogram.count
                else:
                    bucket.requests.merge(request_histogram)
                    bucket.failures += int(failures)
                for name, metrics in steps:
                    total = self._totals.setdefault(str(name), _metric_histograms())
                    per_second = (bucket.steps.setdefault(str(name), _metric_histograms())
                                  if bucket is not None else None)
                    for metric in STEP_METRICS:
                        histogram = LatencyHistogram.from_wire(metrics[metric])
                        total[metric].merge(histogram)
                        if per_second is not None:
                            per_second[metric].merge(histogram)
                        elif metric == "total":
                            self.late_samples += histogram.count
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed step report: {exc}") from None


def _step_row(second: int | None, name: str,
              metrics: Mapping[str, LatencyHistogram]) -> StepRow:
    return StepRow(second=second, step=name, count=metrics["total"].count,
                   metrics={metric: histogram.summary() for metric, histogram in metrics.items()})


def _step_order(name: str) -> tuple[str, int, str]:
    """``[label/]step-<id>:<type>`` sorted by label, then numeric id."""
    label, _, step = name.rpartition("/")
    number, _, kind = step.removeprefix("step-").partition(":")
    try:
        return label, int(number), kind
    except ValueError:
        return label, 1 << 30, name

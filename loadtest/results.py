"""Reading a load test's CSV output into typed rows.

Locust's own (``--csv PREFIX``), whose entries are whole requests only:

* ``PREFIX_stats.csv`` — the totals per entry (``read_stats``);
* ``PREFIX_failures.csv`` — failures by entry and error (``read_failures``).

stepchain's (``loadtest.step_report``), back into ``loadtest.interval_stats`` rows:

* ``PREFIX_requests.csv`` — per second: users, target users, requests, latency
  (``read_request_seconds``; ``latest_progress`` for a progress line);
* ``PREFIX_steps.csv`` — per step and per second (``read_step_seconds``);
* ``PREFIX_steps_total.csv`` — per step over the run (``read_step_totals``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loadtest.interval_stats import STEP_METRICS, RequestRow, StepRow
from loadtest.latency import Summary


@dataclass(frozen=True)
class StatsRow:
    """One entry's totals over the whole test."""

    type: str
    name: str
    requests: int
    failures: int
    average_ms: float
    p50_ms: float | None
    p95_ms: float | None
    rps: float


@dataclass(frozen=True)
class FailureRow:
    """How often one error happened on one entry."""

    method: str
    name: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class Progress:
    """A running test's last written second, for a progress line: ``rps`` is the requests
    answered in that second, ``requests`` and ``failures`` the totals so far."""

    users: int
    rps: float
    requests: int
    failures: int


def _number(text: str | None) -> float | None:
    if text in (None, "", "N/A"):
        return None
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError:
        return None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_stats(path: Path) -> list[StatsRow]:
    """The rows of ``*_stats.csv``."""
    return [
        StatsRow(type=raw["Type"], name=raw["Name"], requests=int(raw["Request Count"]),
                 failures=int(raw["Failure Count"]),
                 average_ms=_number(raw["Average Response Time"]) or 0.0,
                 p50_ms=_number(raw["50%"]), p95_ms=_number(raw["95%"]),
                 rps=_number(raw["Requests/s"]) or 0.0)
        for raw in _rows(path)
    ]


def read_failures(path: Path) -> list[FailureRow]:
    """The rows of ``*_failures.csv``, most frequent first."""
    if not path.exists():
        return []
    rows = [FailureRow(method=raw["Method"], name=raw["Name"], error=raw["Error"],
                       occurrences=int(raw["Occurrences"])) for raw in _rows(path)]
    return sorted(rows, key=lambda row: -row.occurrences)


def latest_progress(rows: Iterable[RequestRow]) -> Progress | None:
    """Users, requests in the last second written, and totals so far (``_requests.csv`` rows)."""
    rows = sorted(rows, key=lambda row: row.second)
    if not rows:
        return None
    users = [row.users for row in rows if row.users is not None]
    return Progress(users=users[-1] if users else 0, rps=float(rows[-1].requests),
                    requests=sum(row.requests for row in rows),
                    failures=sum(row.failures for row in rows))


def _whole(text: str | None) -> int | None:
    number = _number(text)
    return None if number is None else int(number)


def _summary(raw: dict[str, str], count: int, prefix: str = "") -> Summary:
    return Summary(count=count, mean_ms=_number(raw.get(f"{prefix}Mean (ms)")),
                   p50_ms=_number(raw.get(f"{prefix}50% (ms)")),
                   p95_ms=_number(raw.get(f"{prefix}95% (ms)")),
                   p99_ms=_number(raw.get(f"{prefix}99% (ms)")))


def _step_rows(path: Path, *, per_second: bool) -> list[StepRow]:
    if not path.exists():
        return []
    rows = []
    for raw in _rows(path):
        try:
            count = int(raw["Count"])
            rows.append(StepRow(
                second=int(raw["Timestamp"]) if per_second else None, step=raw["Step"],
                count=count,
                metrics={metric: _summary(raw, count, f"{metric.capitalize()} ")
                         for metric in STEP_METRICS}))
        except (KeyError, TypeError, ValueError):
            continue  # a row still being written
    return rows


def read_step_seconds(path: Path) -> list[StepRow]:
    """The rows of ``*_steps.csv``: each step's times in each second."""
    return _step_rows(path, per_second=True)


def read_step_totals(path: Path) -> list[StepRow]:
    """The rows of ``*_steps_total.csv``: each step's times over the whole run."""
    return _step_rows(path, per_second=False)


def read_request_seconds(path: Path) -> list[RequestRow]:
    """The rows of ``*_requests.csv``: requests, latency and users in each second."""
    if not path.exists():
        return []
    rows = []
    for raw in _rows(path):
        try:
            requests = int(raw["Requests"])
            rows.append(RequestRow(
                second=int(raw["Timestamp"]), target_users=_whole(raw["Target Users"]),
                users=_whole(raw["Users"]), requests=requests, failures=int(raw["Failures"]),
                latency=_summary(raw, requests)))
        except (KeyError, TypeError, ValueError):
            continue
    return rows

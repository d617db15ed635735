"""What a scenario prints: the load driver's answers reduced to counts and percentiles, per
phase of the scenario (before the fault, during it, after it healed). Pure functions."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One answered request as the driver saw it."""

    start: float
    ms: float
    code: str
    message: str = ""
    steps: tuple[int, ...] = ()

    @property
    def end(self) -> float:
        return self.start + self.ms / 1000.0


def read_records(path: Path) -> list[Record]:
    """The records of a driver's JSON-lines file (a last line still being written is skipped)."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        records.append(Record(start=float(data["start"]), ms=float(data["ms"]),
                              code=str(data["code"]), message=str(data.get("message", "")),
                              steps=tuple(int(s) for s in data.get("steps", ()))))
    return records


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Summary:
    """Counts and latencies of the requests of one phase."""

    phase: str
    seconds: float
    count: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    #: Answers per step id: which step served (the step after the entry, when there are two).
    served_by: dict[int, int] = field(default_factory=dict)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan


def summarize(phase: str, records: Iterable[Record], start: float, end: float) -> Summary:
    """The requests that *started* in [start, end)."""
    chosen = [r for r in records if start <= r.start < end]
    errors = Counter(r.code for r in chosen if r.code != "OK")
    served = Counter(r.steps[1] if len(r.steps) > 1 else r.steps[0]
                     for r in chosen if r.code == "OK" and r.steps)
    latencies = [r.ms for r in chosen]
    return Summary(phase=phase, seconds=end - start, count=len(chosen),
                   ok=len(chosen) - sum(errors.values()), errors=dict(errors),
                   p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                   max_ms=max(latencies) if latencies else math.nan,
                   served_by=dict(sorted(served.items())))


def table(summaries: Sequence[Summary], *, title: str = "", note: str = "") -> str:
    """A fixed-width table of `summaries`, one line per phase."""
    head = ("phase", "s", "requests", "ok", "ok/s", "p50 ms", "p99 ms", "max ms", "errors",
            "served by step")
    rows = [head]
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "-"
        served = ", ".join(f"{k}: {v}" for k, v in s.served_by.items()) or "-"
        rows.append((s.phase, f"{s.seconds:.1f}", str(s.count), str(s.ok), f"{s.ok_per_s:.1f}",
                     f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.max_ms:.1f}", errors, served))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [title] if title else []
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i in (0, 8, 9) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip())
    if note:
        lines.append(note)
    return "\n".join(lines)


def first_served_by(records: Iterable[Record], step_id: int, after: float) -> Record | None:
    """The first OK answer through `step_id` that came back after `after` (by its end: a
    request that waited for the step counts once the step answered it)."""
    served = [r for r in records if r.end > after and r.code == "OK" and step_id in r.steps]
    return min(served, key=lambda r: r.end, default=None)

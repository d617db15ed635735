"""How the rows of ``loadtest.interval_stats`` are written: CSV headers and cells, a text table.

Times are milliseconds to the microsecond (``0.042``); an empty cell means no sample. The same
columns are read back by ``loadtest.results``.
"""

from __future__ import annotations

from collections.abc import Iterable

from loadtest.interval_stats import STEP_METRICS, RequestRow, StepRow
from loadtest.latency import Summary

_SUMMARY_COLUMNS = (("Mean", "mean_ms"), ("50%", "p50_ms"), ("95%", "p95_ms"),
                    ("99%", "p99_ms"))

STEP_HEADER: list[str] = ["Timestamp", "Step", "Count"] + [
    f"{metric.capitalize()} {title} (ms)" for metric in STEP_METRICS
    for title, _ in _SUMMARY_COLUMNS]
STEP_TOTAL_HEADER: list[str] = STEP_HEADER[1:]
REQUEST_HEADER: list[str] = ["Timestamp", "Target Users", "Users", "Requests", "Failures"] + [
    f"{title} (ms)" for title, _ in _SUMMARY_COLUMNS]


def ms_cell(value: float | None) -> str:
    """Milliseconds to the microsecond (``0.042``); empty when there is no sample."""
    return "" if value is None else f"{value:.3f}"


def _summary_cells(summary: Summary) -> list[str]:
    return [ms_cell(getattr(summary, field)) for _, field in _SUMMARY_COLUMNS]


def step_cells(row: StepRow) -> list[str]:
    """One ``loadtest_steps.csv`` row (or, for a whole-run row, a ``_steps_total.csv`` row)."""
    cells = [] if row.second is None else [str(row.second)]
    cells += [row.step, str(row.count)]
    for metric in STEP_METRICS:
        cells += _summary_cells(row.metrics[metric])
    return cells


def request_cells(row: RequestRow) -> list[str]:
    """One ``loadtest_requests.csv`` row."""
    def whole(value: int | None) -> str:
        return "" if value is None else str(value)

    return [str(row.second), whole(row.target_users), whole(row.users), str(row.requests),
            str(row.failures), *_summary_cells(row.latency)]


def step_table(rows: Iterable[StepRow]) -> list[str]:
    """The per-step summary as text lines (headless output, ``stepchain loadtest``)."""
    rows = list(rows)
    if not rows:
        return ["per-step times: no step timings (no request answered?)"]
    width = max(24, *(len(row.step) for row in rows))
    lines = [f"{'per-step times (ms)':<{width}} {'count':>8}  {'kernel mean':>11} {'p50':>9} "
             f"{'p95':>9} {'p99':>9}  {'queue p95':>9}  {'forward p95':>11}  "
             f"{'total mean':>10} {'p95':>9}"]
    for row in rows:
        kernel, queue, forward, total = (row.metrics[m] for m in STEP_METRICS)
        lines.append(
            f"{row.step:<{width}} {row.count:>8}  {ms_cell(kernel.mean_ms):>11} "
            f"{ms_cell(kernel.p50_ms):>9} {ms_cell(kernel.p95_ms):>9} "
            f"{ms_cell(kernel.p99_ms):>9}  {ms_cell(queue.p95_ms):>9}  "
            f"{ms_cell(forward.p95_ms):>11}  {ms_cell(total.mean_ms):>10} "
            f"{ms_cell(total.p95_ms):>9}")
    return lines

"""A PNG of a load test from Locust's ``*_stats_history.csv``.

Panels, all over seconds since the start: users; requests/s and failures/s; request latency
p50/p95 (and mean, dotted); kernel time per step (mean per second, p95 dashed); queue wait per step (mean per
second). Request figures come from the ``grpc`` entries, step figures from the ``step`` entries
(``loadtest.entries``).

Per-step means are exact: they come from Locust's running totals (count × average) between two
seconds, so sub-millisecond kernels do not vanish into Locust's whole-millisecond percentiles.

    python -m loadtest.plot out/loadtest_stats_history.csv out/loadtest.png
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from loadtest.entries import REQUEST_TYPE, STEP_TYPE
from loadtest.results import HistoryRow, read_history

Series = tuple[list[float], list[float]]


def interval_means(rows: Sequence[HistoryRow]) -> Series:
    """``(t, mean ms)`` per second for one entry, from Locust's running count and average.

    ``rows`` are one entry's history rows in time order; seconds without new samples are
    skipped.
    """
    times: list[float] = []
    means: list[float] = []
    prev_count, prev_sum = 0, 0.0
    for row in rows:
        total = row.total_average_ms * row.total_requests
        new = row.total_requests - prev_count
        if new > 0:
            times.append(float(row.timestamp))
            means.append((total - prev_sum) / new)
        prev_count, prev_sum = row.total_requests, total
    return times, means


def _by_entry(rows: Sequence[HistoryRow], kind: str) -> dict[str, list[HistoryRow]]:
    grouped: dict[str, list[HistoryRow]] = defaultdict(list)
    for row in rows:
        if row.type == kind:
            grouped[row.name].append(row)
    for entry in grouped.values():
        entry.sort(key=lambda row: row.timestamp)
    return dict(sorted(grouped.items()))


def plot_history(history_csv: Path, out_png: Path, *, title: str | None = None) -> Path:
    """Draw ``history_csv`` into ``out_png``; ``ValueError`` when it holds no samples."""
    rows = read_history(history_csv)
    if not rows:
        raise ValueError(f"{history_csv}: no samples to plot (did the test run at all?)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(row.timestamp for row in rows)
    users: dict[int, int] = {}
    for row in rows:
        users[row.timestamp] = max(users.get(row.timestamp, 0), row.users)
    requests = _by_entry(rows, REQUEST_TYPE)
    steps = _by_entry(rows, STEP_TYPE)

    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True, dpi=100)
    ax_users, ax_rps, ax_latency, ax_kernel, ax_queue = axes

    seconds = sorted(users)
    ax_users.step([s - t0 for s in seconds], [users[s] for s in seconds], where="post")
    ax_users.set_ylabel("users")

    for name, entry in requests.items():
        xs = [row.timestamp - t0 for row in entry]
        ax_rps.plot(xs, [row.rps for row in entry], label=f"{name} requests/s")
        if any(row.failures_per_s for row in entry):
            ax_rps.plot(xs, [row.failures_per_s for row in entry], color="tab:red",
                        label=f"{name} failures/s")
        xs_mean, means = interval_means(entry)
        ax_latency.plot([x - t0 for x in xs_mean], means, ":", label=f"{name} mean")
        for field, style in (("p50_ms", "-"), ("p95_ms", "--")):
            points = [(row.timestamp - t0, getattr(row, field)) for row in entry
                      if getattr(row, field) is not None]
            ax_latency.plot([x for x, _ in points], [y for _, y in points], style,
                            label=f"{name} {field[:3]}")
    ax_rps.set_ylabel("per second")
    ax_latency.set_ylabel("request ms")

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kernel = {name: entry for name, entry in steps.items() if name.endswith(" kernel")}
    queue = {name: entry for name, entry in steps.items() if name.endswith(" queue")}
    for index, (name, entry) in enumerate(kernel.items()):
        colour = colours[index % len(colours)]
        kernel_times, means = interval_means(entry)
        ax_kernel.plot([x - t0 for x in kernel_times], means, color=colour,
                       label=name.removesuffix(" kernel"))
        p95 = [(row.timestamp - t0, row.p95_ms) for row in entry if row.p95_ms is not None]
        if any(y for _, y in p95):  # Locust keeps whole ms: sub-ms kernels read as a flat 0
            ax_kernel.plot([x for x, _ in p95], [y for _, y in p95], "--", color=colour,
                           alpha=0.6)
    for index, (name, entry) in enumerate(queue.items()):
        queue_times, means = interval_means(entry)
        ax_queue.plot([x - t0 for x in queue_times], means, color=colours[index % len(colours)],
                      label=name.removesuffix(" queue"))
    ax_kernel.set_ylabel("kernel ms\n(mean, p95 dashed)")
    ax_queue.set_ylabel("queue wait ms\n(mean)")
    ax_queue.set_xlabel("seconds since start")

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title or f"stepchain load test — {history_csv.name}")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.plot HISTORY_CSV OUT_PNG``."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.plot",
                                     description="Plot Locust's *_stats_history.csv as a PNG.")
    parser.add_argument("history_csv", type=Path)
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        print(plot_history(args.history_csv, args.out_png, title=args.title))
    except (OSError, ValueError) as exc:
        print(f"loadtest.plot: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

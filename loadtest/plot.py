"""A PNG of a load test, drawn second by second from ``loadtest.step_report``'s CSV files.

Every figure is of that one second, never a rolling average: ``PREFIX_requests.csv`` gives the
requests answered and failed in each second, their p50/p95 (and mean) latency, the users
running and the curve's target users; ``PREFIX_steps.csv`` gives each step's kernel and queue
time in each second, to the microsecond. Panels, over seconds since the start:

1. users — actual, and the curve's target (dashed);
2. requests/s and failures/s;
3. request latency p50, p95 (mean dotted);
4. kernel time per step (mean, p95 dashed);
5. queue wait per step (mean, p95 dashed).

The curve's target users are also drawn faintly behind every panel, so the load's shape (a
spike, a wave) can be matched with what each panel shows. Step panels switch to a log scale
when steps differ by more than a hundredfold.

    python -m loadtest.plot out/loadtest/loadtest out/loadtest/loadtest.png
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.interval_stats import RequestRow, StepRow
from loadtest.results import read_request_seconds, read_step_seconds

REQUESTS_SUFFIX = "_requests.csv"
STEPS_SUFFIX = "_steps.csv"
_KNOWN_SUFFIXES = (REQUESTS_SUFFIX, STEPS_SUFFIX, "_steps_total.csv", "_stats_history.csv",
                   "_stats.csv")
#: Step panels use a log scale when their largest value is this many times their smallest.
LOG_SCALE_RATIO = 100.0
#: Room around the panels (fractions of the figure) for the title, labels and tick labels.
FIGURE_MARGINS = {"left": 0.1, "right": 0.98, "top": 0.955, "bottom": 0.04, "hspace": 0.12}

Series = tuple[list[float], list[float]]


def csv_prefix(path: Path) -> Path:
    """The ``--csv`` prefix from a prefix or from any of the run's CSV file names."""
    for suffix in _KNOWN_SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def step_series(rows: Sequence[StepRow], metric: str, field: str, t0: int
                ) -> dict[str, Series]:
    """``{step: (seconds since t0, ms)}`` for one metric's summary ``field``, per step."""
    series: dict[str, Series] = defaultdict(lambda: ([], []))
    for row in sorted(rows, key=lambda r: (r.second or 0)):
        value = getattr(row.metrics[metric], field)
        if value is None or row.second is None:
            continue
        xs, ys = series[row.step]
        xs.append(float(row.second - t0))
        ys.append(float(value))
    return dict(series)


def load_matplotlib() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend. Importing it costs over a second of
    CPU: ``stepchain loadtest`` calls this in a thread while Locust runs, so the plot at the end
    does not wait for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(prefix: Path, out_png: Path, *, title: str | None = None) -> Path:
    """Draws the run whose CSV files start with ``prefix`` into ``out_png``.

    ``ValueError`` when ``PREFIX_requests.csv`` holds no second to draw.
    """
    prefix = csv_prefix(prefix)
    requests_csv = Path(f"{prefix}{REQUESTS_SUFFIX}")
    seconds = read_request_seconds(requests_csv)
    if not seconds:
        raise ValueError(f"{requests_csv}: no seconds to plot (did the test run at all?)")
    steps = read_step_seconds(Path(f"{prefix}{STEPS_SUFFIX}"))
    plt = load_matplotlib()
    seconds.sort(key=lambda row: row.second)
    t0 = seconds[0].second
    fig, axes = plt.subplots(5, 1, figsize=(10, 14), sharex=True, dpi=100)
    ax_users, ax_rps, ax_latency, ax_kernel, ax_queue = axes

    _draw_target_behind(axes, seconds, t0)
    _draw_users(ax_users, seconds, t0)
    _draw_requests(ax_rps, ax_latency, seconds, t0)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    _draw_steps(ax_kernel, steps, "kernel", t0, colours)
    _draw_steps(ax_queue, steps, "queue", t0, colours)
    ax_kernel.set_ylabel("kernel ms per step\n(mean, p95 dashed)")
    ax_queue.set_ylabel("queue wait ms per step\n(mean, p95 dashed)")
    ax_queue.set_xlabel("seconds since start")
    ax_queue.set_xlim(0, max(1, seconds[-1].second - t0 + 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # the users panel's lines often run along the top left (flat, ramp's end)
            ax.legend(fontsize=8, loc="lower right" if ax is ax_users else "upper left")
    fig.suptitle(title or f"stepchain load test — {prefix.name}, second by second")
    # Fixed margins rather than tight_layout(), which measures every tick label by drawing the
    # figure once more: half of the plot's time for the same picture.
    fig.subplots_adjust(**FIGURE_MARGINS)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _xs(rows: Sequence[RequestRow], t0: int) -> list[float]:
    return [float(row.second - t0) for row in rows]


def _draw_target_behind(axes: Sequence[Any], seconds: Sequence[RequestRow], t0: int) -> None:
    rows = [row for row in seconds if row.target_users is not None]
    if not rows:
        return
    peak = max(max(row.target_users or 0 for row in rows), 1)
    # In each panel's own axes: x in seconds, y as a fraction of the panel's height (the peak at
    # 1/1.1 of it), so the panel's scale and ticks stay its own without a twin axis to draw.
    heights = [(row.target_users or 0) / (peak * 1.1) for row in rows]
    for ax in axes[1:]:
        ax.fill_between(_xs(rows, t0), heights, step="post", transform=ax.get_xaxis_transform(),
                        color="0.85", alpha=0.5, linewidth=0, zorder=0)


def _draw_users(ax: Any, seconds: Sequence[RequestRow], t0: int) -> None:
    users = [row for row in seconds if row.users is not None]
    ax.step(_xs(users, t0), [row.users for row in users], where="post", label="users")
    target = [row for row in seconds if row.target_users is not None]
    if target:
        ax.step(_xs(target, t0), [row.target_users for row in target], "--", where="post",
                color="0.3", label="curve target")
    ax.set_ylabel("users")
    ax.set_ylim(bottom=0)


def _draw_requests(ax_rps: Any, ax_latency: Any, seconds: Sequence[RequestRow], t0: int
                   ) -> None:
    xs = _xs(seconds, t0)
    ax_rps.plot(xs, [row.requests for row in seconds], label="requests/s")
    if any(row.failures for row in seconds):
        ax_rps.plot(xs, [row.failures for row in seconds], color="tab:red", label="failures/s")
    ax_rps.set_ylabel("per second")
    ax_rps.set_ylim(bottom=0)
    for field, style, name in (("p50_ms", "-", "p50"), ("p95_ms", "--", "p95"),
                               ("mean_ms", ":", "mean")):
        points = [(x, getattr(row.latency, field)) for x, row in zip(xs, seconds, strict=True)
                  if getattr(row.latency, field) is not None]
        ax_latency.plot([x for x, _ in points], [y for _, y in points], style, label=name)
    ax_latency.set_ylabel("request ms\n(in that second)")
    ax_latency.set_ylim(bottom=0)


def _draw_steps(ax: Any, steps: Sequence[StepRow], metric: str, t0: int,
                colours: Sequence[str]) -> None:
    means = step_series(steps, metric, "mean_ms", t0)
    p95s = step_series(steps, metric, "p95_ms", t0)
    values = [y for _, ys in (*means.values(), *p95s.values()) for y in ys]
    for index, name in enumerate(means):
        colour = colours[index % len(colours)]
        ax.plot(*means[name], color=colour, label=name)
        if name in p95s:
            ax.plot(*p95s[name], "--", color=colour, alpha=0.6)
    if not means:
        ax.text(0.5, 0.5, "no step timings (no request was answered)", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > LOG_SCALE_RATIO:
        from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

        # symlog keeps the zeros (an idle queue) that a plain log scale would drop; ticks at
        # 1, 2, 5 per decade, written as plain milliseconds (0.2, not 2×10⁻¹)
        linthresh = max(min(positive), 0.001)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh,
                                                         subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(bottom=0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.plot PREFIX OUT_PNG``."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.plot",
        description="Plot a stepchain load test second by second from its CSV files.")
    parser.add_argument("prefix", type=Path,
                        help="the run's --csv prefix (e.g. out/loadtest/loadtest) or one of "
                             "its CSV files")
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.prefix, args.out_png, title=args.title))
    except (OSError, ValueError) as exc:
        print(f"loadtest.plot: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

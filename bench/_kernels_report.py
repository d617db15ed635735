"""``stepchain bench kernels``: its targets and how its results read (Markdown, a plot).

Not a benchmark of its own (``stepchain bench`` leaves out ``_`` modules): what
:mod:`bench.kernels` measures, written up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from topology.load.amdahl import speedup as amdahl_speedup

#: A kernel is memory-bound when its 1-thread traffic (input + output bytes per second) times
#: the speed-up target would exceed the roof: the best copy bandwidth ``native.identity``
#: reached at this size, in the bandwidth probe or its own rounds, at any thread count
#: (bandwidth does not shrink with threads; a lower figure is interference). Such a kernel
#: cannot reach the target by any parallelisation, so its roofline is reported instead of a speed-up target and an Amdahl fit.
#: The issue's targets: ours / OpenCV at 1 and 2 threads, and the 2-thread speed-up of every
#: kernel that is not memory-bound.
TARGET_VS_OPENCV = 1.0
TARGET_SPEEDUP = 1.8


def markdown(doc: dict[str, Any]) -> str:
    """The result document as Markdown: one table per size, then scaling/roofline and targets."""
    m = doc["machine"]
    cfg = doc["config"]
    per_case = [x for x in m.get("load_average_per_case") or [] if x is not None]
    lines = [
        "# Native kernels vs OpenCV and Pillow",
        "",
        f"{m['cpu_count']} cores ({m['processor']}, {m['platform']}); Python {m['python']}, "
        f"OpenCV {m['opencv']}, Pillow {m['pillow']}. {cfg['rounds']} paired rounds per "
        f"kernel; image: {cfg['image']}. **Load average** before / after: "
        f"{_load(m['load_average_before'])} / {_load(m['load_average_after'])}"
        + (f"; 1-minute load during the kernels {min(per_case):.1f}-{max(per_case):.1f}"
           if per_case else "") + ".",
        "",
        "The machine is shared (8 engineers' builds and tests on 2 cores while this ran), so "
        "absolute times are inflated and noisy. Ratios are therefore paired: each round times "
        "a block of stepchain calls, then a block of OpenCV calls, at every thread count, and "
        "`ours/OpenCV` and `speed-up` are medians of the per-round ratios (the range is the "
        "spread over rounds). `ours/OpenCV` < 1 means stepchain is faster; OpenCV runs with "
        "`cv2.setNumThreads` = threads; `Pillow/ours` is how many times faster stepchain is "
        "than Pillow (single-threaded). `GB/s` is the compulsory traffic (input read + output "
        "written once) per second, `% copy` that against `native.identity`'s copy bandwidth at "
        "the same size and thread count. `ours/OpenCV CPU` (1 thread only, where both run on "
        "the calling thread) is the paired ratio of that thread's CPU time: the wall time "
        "less the time other processes had the core, the figure the load disturbs least. "
        "`speed-up (CPU path)` is the 1-thread call's CPU time over the CPU time of the "
        "busiest thread of the N-thread call (per-thread CPU from /proc): the speed-up N "
        "dedicated cores would give, short of shared memory bandwidth, which time spent "
        "waiting for a core does not distort.",
        "",
    ]
    for size in cfg["sizes"]:
        bw = doc["copy_bandwidth_gb_per_s"].get(size, {})
        lines += [f"## {size} RGB", "",
                  "Copy bandwidth (`native.identity`, read + write): " + ", ".join(
                      f"{t} thread(s) {v:.1f} GB/s" for t, v in bw.items()) + ".", "",
                  "| kernel | threads | stepchain ms | OpenCV ms | ours/OpenCV (range) | "
                  "ours/OpenCV CPU | Pillow ms | Pillow/ours | GB/s | % copy | speed-up | "
                  "speed-up (CPU path) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in doc["results"] if r["size"] == size):
            rng = r["vs_opencv_range"]
            ratio = (f"{r['vs_opencv']:.2f}x ({rng[0]:.2f}-{rng[1]:.2f})"
                     if r["vs_opencv"] is not None else "-")
            lines.append(
                f"| {r['label']} | {r['threads']} | {_f(r['stepchain_ms'])} | "
                f"{_f(r['opencv_ms'])} | {ratio} | {_f(r.get('vs_opencv_cpu'), 2, 'x')} | "
                f"{_f(r['pillow_ms'])} | "
                f"{_f(r['pillow_speedup'], 1, 'x')} | {_f(r['gb_per_s'], 1)} | "
                f"{_f(r['roofline'] * 100, 0)} | {_f(r['speedup'], 2, 'x')} | "
                f"{_f(r.get('cpu_speedup'), 2, 'x')} |")
        lines += ["", "| kernel | bound by | scaling | OpenCV equivalent | Pillow equivalent |",
                  "|---|---|---|---|---|"]
        scaling = doc["scaling"].get(size, {})
        seen: set[str] = set()
        for r in (r for r in doc["results"] if r["size"] == size):
            if r["label"] in seen:
                continue
            seen.add(r["label"])
            sc = scaling[r["label"]]
            if sc["memory_bound"]:
                how = "memory", "roofline: " + ", ".join(
                    f"{t} thr {g:.1f} GB/s" for t, g in
                    zip(sc["threads"], sc["gb_per_s"], strict=True)) + (
                    f" under a {sc['roof_gb_per_s']:.1f} GB/s copy roof "
                    f"({TARGET_SPEEDUP}x the 1-thread rate would be "
                    f"{TARGET_SPEEDUP * sc['gb_per_s'][0] / sc['roof_gb_per_s'] * 100:.0f}% of it)")
            else:
                f = sc["serial_fraction"]
                how = "compute", f"Amdahl serial fraction {_f(f, 2)}"
            lines.append(f"| {r['label']} | {how[0]} | {how[1]} | {r['opencv_op'] or '-'} | "
                         f"{r['pillow_op'] or '-'} |")
        lines.append("")
    lines += ["## Targets", "", "| size | target | value | limit | met |",
              "|---|---|---:|---:|---|"]
    for t in doc["targets"]:
        verdict = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['size']} | {t['target']} | {_f(t['value'], 2)} | {t['op']} "
                     f"{t['limit']:g} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


def _f(v: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _load(v: Sequence[float] | None) -> str:
    return "-" if not v else ", ".join(f"{x:.2f}" for x in v)


def plot(doc: dict[str, Any], path: Path) -> None:
    """One row per size: ours/OpenCV per kernel and thread count; the speed-up of the
    compute-bound kernels with dashed Amdahl fits; the memory-bound ones' GB/s under the copy
    bandwidth roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = doc["config"]["sizes"]
    threads = doc["config"]["threads"]
    fig, axes = plt.subplots(len(sizes), 3, figsize=(20.0, 5.4 * len(sizes)), squeeze=False)
    t_fine = np.linspace(1, max(threads), 50)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for row, size in zip(axes, sizes, strict=True):
        ratio_ax, speed_ax, roof_ax = row
        results = [r for r in doc["results"] if r["size"] == size and r["vs_opencv"] is not None]
        labels = list(dict.fromkeys(r["label"] for r in results))
        width = 0.8 / max(1, len(threads))
        for j, t in enumerate(threads):
            vals = [next((r["vs_opencv"] for r in results
                          if r["label"] == lb and r["threads"] == t), 0.0) for lb in labels]
            ratio_ax.bar(np.arange(len(labels)) + j * width, vals, width, label=f"{t} thread(s)")
        ratio_ax.axhline(TARGET_VS_OPENCV, color="red", linestyle="--", label="OpenCV")
        ratio_ax.set_xticks(np.arange(len(labels)) + width * (len(threads) - 1) / 2)
        ratio_ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ratio_ax.set_yscale("log")
        ratio_ax.set_ylabel("stepchain time / OpenCV time (log)")
        ratio_ax.set_title(f"{size} RGB: time relative to OpenCV (lower is faster)")
        ratio_ax.legend(fontsize=8)
        ratio_ax.grid(axis="y", alpha=0.3)
        scaling = doc["scaling"].get(size, {})
        for i, (label, sc) in enumerate(scaling.items()):
            color = colors[i % len(colors)]
            if sc["memory_bound"]:
                roof_ax.plot(sc["threads"], sc["gb_per_s"], "o-", color=color,
                             label=f"{label} ({sc['roofline'][-1] * 100:.0f}% of copy)")
                continue
            f = sc["serial_fraction"]
            name = f"{label} (serial {f:.2f})" if f is not None else label
            speed_ax.plot(sc["threads"], sc["speedup"], "o-", color=color, label=name)
            cpu = [(t, v) for t, v in zip(sc["threads"], sc.get("cpu_speedup", []), strict=False)
                   if v is not None]
            if cpu:
                speed_ax.plot(*zip(*cpu, strict=True), "x", color=color, markersize=10,
                              markeredgewidth=2)
            if f is not None:
                speed_ax.plot(t_fine, [amdahl_speedup(1.0 - f, t) for t in t_fine], "--", color=color,
                              alpha=0.5)
        bw = doc["copy_bandwidth_gb_per_s"].get(size, {})
        roof_ax.plot([int(t) for t in bw], list(bw.values()), "k-", linewidth=2.5,
                     label="copy bandwidth (identity)")
        if bw:
            roof_ax.axhline(max(bw.values()), color="k", linestyle=":", label="roof (best copy)")
        speed_ax.plot(t_fine, t_fine, ":", color="grey", label="ideal")
        speed_ax.axhline(TARGET_SPEEDUP, color="red", linestyle="--", alpha=0.5,
                         label=f"target {TARGET_SPEEDUP}x at 2 threads")
        speed_ax.set_title(f"{size}: compute-bound kernels, speed-up: wall (o, dashed Amdahl "
                           "fit), CPU critical path (x)", fontsize=10)
        roof_ax.set_title(f"{size}: memory-bound kernels, roofline (GB/s in + out)")
        for ax, ylabel in ((speed_ax, "speed-up over 1 thread"), (roof_ax, "GB/s")):
            ax.set_xlabel("threads")
            ax.set_ylabel(ylabel)
            ax.set_xticks(threads)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7.5, loc="upper left")
        roof_ax.set_ylim(bottom=0)
    load = doc["machine"].get("load_average_before")
    fig.suptitle(f"stepchain kernels on {doc['machine']['cpu_count']} shared cores "
                 f"({doc['config']['rounds']} paired rounds; load average at start "
                 f"{_load(load[:1] if load else None)})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

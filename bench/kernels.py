"""Benchmark of the native kernels against OpenCV and Pillow, side by side in one run.

For every kernel, image size and OpenMP thread count (1..N, N = cores) stepchain, the nearest
OpenCV operation (with ``cv2.setNumThreads`` set to the same thread count) and the nearest
Pillow operation (single-threaded) are timed in ``--repeat`` paired rounds: each round runs a
block of stepchain calls and then a block of OpenCV calls at every thread count (after warm-up
calls: the steady state of a busy step), and ratios and speed-ups are medians of the per-round
ratios, so a change in machine load hits both sides alike. The copy bandwidth of
``native.identity`` at each size and thread count is the roof: a kernel whose compulsory traffic
(input + output bytes) per second at 1 thread, times the 1.8x speed-up target, would exceed it
is memory-bound and gets a roofline instead of an Amdahl fit. Load averages are recorded with the results.

Writes ``kernels.json`` (every measurement, scaling, roofline and the target verdicts),
``kernels.md`` (Markdown tables) and ``kernels.png`` (ours/OpenCV per kernel, speed-up with
Amdahl fits, roofline). Run it as ``stepchain bench kernels [args]``
(or ``python -m bench.kernels``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import native
from bench._harness import RESULTS_DIR
from bench._kernels_cases import Case, Fn, case_label, cases, test_image
from bench._kernels_report import TARGET_SPEEDUP, TARGET_VS_OPENCV, markdown, plot
from stepsvc.cli_args import image_size
from topology.load.amdahl import fit_parallel_fraction

DEFAULT_SIZES = ("1920x1080", "3840x2160")
QUICK_SIZES = ("160x96",)
DEFAULT_OUT = RESULTS_DIR
#: Untimed pause before each block of timed calls. Worker threads of the previous block
#: (libgomp's team, OpenCV's pthreads pool) busy-wait for a while after their work; without the
#: pause they take a core from the next block.
SETTLE_S = 0.05
#: The pause of --quick, a smoke run whose timings nobody reads (it is the suite's test).
QUICK_SETTLE_S = 0.005


def _settle(settle_s: float) -> None:
    time.sleep(settle_s)


#: Pillow is single-threaded and slow; it is timed in this many rounds at most.
PILLOW_ROUNDS = 3
#: Aim for blocks of about this many seconds (1..5 calls) per timed sample.
BLOCK_S = 0.03


def _block(fn: Fn, calls: int, cpu: list[float] | None = None) -> float:
    """Median seconds of `calls` back-to-back calls; with `cpu`, also appends the median CPU
    time of the calling thread (time.thread_time) per call."""
    times, cpus = [], []
    for _ in range(calls):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times)


def _calls_per_block(fn: Fn) -> int:
    fn()
    fn()  # warm-up: first-touch page faults, lazy init, caches, the thread team awake
    one = _block(fn, 1)
    return max(1, min(5, round(BLOCK_S / one))) if one > 0 else 5


def _measure(case: Case, img: np.ndarray, pil: Any, threads: Sequence[int],
             rounds: int, settle_s: float) -> dict[str, Any]:
    """Per-round samples (seconds) of ours and OpenCV at every thread count, and Pillow.

    Rounds alternate ours and OpenCV block by block, every thread count in each round, so a
    change in machine load hits both sides of a ratio and both ends of a speed-up alike; the
    ratios are then taken per round (paired) and their median reported. The untimed pause
    before each block lets the previous block's spinning pool threads (libgomp, OpenCV) sleep."""
    import cv2

    builds = {t: case.build(img, pil, t) for t in threads}
    blocks = {}
    for t in threads:
        ours, ocv, _ = builds[t]
        blocks[t] = _calls_per_block(ours), _calls_per_block(ocv) if ocv else 0
    pil_fn = builds[threads[0]][2]
    samples: dict[str, Any] = {"ours": {t: [] for t in threads}, "opencv": {t: [] for t in threads},
                               "ours_cpu": [], "opencv_cpu": [], "pillow": []}
    for r in range(rounds):
        for t in threads:
            ours, ocv, _ = builds[t]
            _settle(settle_s)
            # at 1 thread both libraries run on the calling thread: its CPU time is the wall
            # time minus the time other processes had the core, a load-robust second figure
            cpu = samples["ours_cpu"] if t == 1 else None
            samples["ours"][t].append(_block(ours, blocks[t][0], cpu))
            if ocv:
                cv2.setNumThreads(t)  # only OpenCV's own block sizes OpenCV's pool
                _settle(settle_s)
                ocv()
                cpu = samples["opencv_cpu"] if t == 1 else None
                samples["opencv"][t].append(_block(ocv, blocks[t][1], cpu))
        if pil_fn and r < PILLOW_ROUNDS:
            _settle(settle_s)
            samples["pillow"].append(_block(pil_fn, 1))
    samples["cpu_speedup"] = {t: _cpu_speedup(builds[threads[0]][0], builds[t][0], settle_s)
                              for t in threads[1:]}
    return samples


def _task_cpu_ns() -> dict[str, int]:
    """CPU time so far of every thread of this process (Linux /proc schedstat), by thread id.
    A thread's figure is brought up to date when it blocks, so read it after idle threads
    have gone to sleep."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _busiest_thread_cpu(fn: Fn, settle_s: float) -> float:
    """Seconds of CPU of the busiest thread during one call: the critical path of an OpenMP
    call, which machine load does not lengthen (time waiting for a core is not CPU time)."""
    me = str(threading.get_native_id())
    time.sleep(settle_s)
    before = _task_cpu_ns()
    c0 = time.thread_time_ns()
    fn()
    c1 = time.thread_time_ns()
    time.sleep(settle_s)  # PASSIVE idle workers block, which updates their schedstat
    after = _task_cpu_ns()
    per_thread = [after[t] - before.get(t, 0) for t in after if t != me] + [c1 - c0]
    return max(per_thread) / 1e9


def _cpu_speedup(fn_one: Fn, fn_many: Fn, settle_s: float, calls: int = 5) -> float | None:
    """Speed-up over 1 thread as the CPU critical path sees it: median CPU of the 1-thread call
    / median CPU of the busiest thread of the N-thread call. What N dedicated cores would give,
    short of sharing memory bandwidth; None where /proc is not there."""
    if not os.path.isdir("/proc/self/task"):
        return None
    one = statistics.median(_busiest_thread_cpu(fn_one, settle_s) for _ in range(calls))
    many = statistics.median(_busiest_thread_cpu(fn_many, settle_s) for _ in range(calls))
    return one / many if many > 0 else None


def _copy_bandwidth(img: np.ndarray, threads: Sequence[int], rounds: int,
                    settle_s: float) -> dict[int, float]:
    """Bytes/s of ``native.identity`` (read + write) per thread count: the machine's copy
    bandwidth for this image size, the roof the memory-bound kernels are measured against."""
    out = {}
    for t in threads:
        fn = lambda t=t: native.identity(img, threads=t)  # noqa: E731
        calls = _calls_per_block(fn)
        best = []
        for _ in range(rounds):
            _settle(settle_s)
            best.append(_block(fn, calls))
        out[t] = 2 * img.nbytes / statistics.median(best)
    return out


def _bytes_moved(case: Case, img: np.ndarray, pil: Any) -> int:
    """Compulsory traffic of one call: the input read once plus the output written once."""
    result = case.build(img, pil, 1)[0]()
    return img.nbytes + (result.nbytes if isinstance(result, np.ndarray) else 0)


def serial_fraction(threads: Sequence[int], speedups: Sequence[float]) -> float | None:
    """Amdahl's serial fraction (1 - the parallel fraction) fitted to measured speed-ups."""
    p = fit_parallel_fraction(list(zip(threads, speedups, strict=True)))
    return None if p is None else 1.0 - p


def _machine(cv_version: str, pil_version: str) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv_version, "pillow": pil_version,
            "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run(sizes: Sequence[tuple[int, int]], threads: Sequence[int], repeat: int,
        log: Callable[[str], None] = print,
        kernels: Sequence[str] | None = None, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """Measures every case (or those of `kernels`) in `repeat` paired rounds, pausing
    `settle_s` before each timed block; returns the JSON-ready result document."""
    import cv2
    import PIL
    from PIL import Image

    chosen = [c for c in cases() if not kernels or c.kernel in kernels]
    cv_threads_before = cv2.getNumThreads()
    rows: list[dict[str, Any]] = []
    copy_bw: dict[str, dict[int, float]] = {}
    started = time.time()
    machine = _machine(cv2.__version__, PIL.__version__)
    loads = []
    try:
        for w, h in sizes:
            img = test_image(w, h)
            pil = Image.fromarray(img)
            size = f"{w}x{h}"
            copy_bw[size] = _copy_bandwidth(img, threads, repeat, settle_s)
            log(f"{size:>10} copy bandwidth (native.identity): " + ", ".join(
                f"t={t} {bw / 1e9:.1f} GB/s" for t, bw in copy_bw[size].items()))
            for case in chosen:
                samples = _measure(case, img, pil, threads, repeat, settle_s)
                loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
                nbytes = _bytes_moved(case, img, pil)
                rows += _rows(case, size, w * h, nbytes, threads, samples, copy_bw[size], log)
    finally:
        cv2.setNumThreads(cv_threads_before)
    machine["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_per_case"] = loads
    doc: dict[str, Any] = {
        "benchmark": "kernels",
        "machine": machine,
        "config": {"sizes": [f"{w}x{h}" for w, h in sizes], "threads": list(threads),
                   "repeat": repeat, "rounds": repeat,
                   "statistic": "median over paired rounds (each sample: median of a block of "
                                "1-5 back-to-back calls)",
                   "memory_bound_rule": f"{TARGET_SPEEDUP} x GB/s at 1 thread > best copy GB/s",
                   "image": "skimage.data.astronaut() resized with cv2.INTER_CUBIC"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "copy_bandwidth_gb_per_s": {s: {str(t): bw / 1e9 for t, bw in v.items()}
                                    for s, v in copy_bw.items()},
        "results": rows,
    }
    doc["scaling"] = _scaling(rows)
    doc["targets"] = _targets(doc, threads)
    return doc


def _rows(case: Case, size: str, pixels: int, nbytes: int, threads: Sequence[int],
          samples: dict[str, Any], copy_bw: dict[int, float],
          log: Callable[[str], None]) -> list[dict[str, Any]]:
    ours, ocv, pil = samples["ours"], samples["opencv"], samples["pillow"]
    t0 = threads[0]
    pillow_ms = statistics.median(pil) * 1e3 if pil else None
    out = []
    for t in threads:
        o_ms = statistics.median(ours[t]) * 1e3
        c_ms = statistics.median(ocv[t]) * 1e3 if ocv[t] else None
        paired = [a / b for a, b in zip(ours[t], ocv[t], strict=True)] if ocv[t] else []
        cpu_paired = ([a / b for a, b in zip(samples["ours_cpu"], samples["opencv_cpu"],
                                              strict=True) if b > 0]
                      if t == 1 and samples["opencv_cpu"] else [])
        speedup = statistics.median(a / b for a, b in zip(ours[t0], ours[t], strict=True))
        gbs = nbytes / (o_ms / 1e3) / 1e9
        row = {
            "size": size, "kernel": case.kernel, "label": case_label(case),
            "params": case.params, "threads": t,
            "stepchain_ms": o_ms, "opencv_ms": c_ms, "pillow_ms": pillow_ms,
            "stepchain_min_ms": min(ours[t]) * 1e3,
            "opencv_min_ms": min(ocv[t]) * 1e3 if ocv[t] else None,
            "opencv_op": case.opencv_op, "pillow_op": case.pillow_op,
            "vs_opencv": statistics.median(paired) if paired else None,
            "vs_opencv_range": [min(paired), max(paired)] if paired else None,
            "stepchain_cpu_ms": (statistics.median(samples["ours_cpu"]) * 1e3
                                 if t == 1 and samples["ours_cpu"] else None),
            "opencv_cpu_ms": (statistics.median(samples["opencv_cpu"]) * 1e3
                              if t == 1 and samples["opencv_cpu"] else None),
            "vs_opencv_cpu": statistics.median(cpu_paired) if cpu_paired else None,
            "pillow_speedup": pillow_ms / o_ms if pillow_ms else None,
            "megapixels_per_s": pixels / 1e6 / (o_ms / 1e3),
            "speedup": speedup,
            "speedup_best": min(ours[t0]) / min(ours[t]),
            "cpu_speedup": 1.0 if t == t0 else samples["cpu_speedup"].get(t),
            "bytes": nbytes, "gb_per_s": gbs,
            "copy_gb_per_s": copy_bw[t] / 1e9,
            "roofline": gbs * 1e9 / copy_bw[t],
            "rounds": len(ours[t]),
        }
        out.append(row)
        log(_row_line(row))
    return out


def _row_line(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return f"{v:9.2f}" if v is not None else "        -"
    ratio = f"{r['vs_opencv']:5.2f}x" if r["vs_opencv"] is not None else "    -"
    return (f"{r['size']:>10} {r['label']:<18} t={r['threads']:<2} stepchain {ms(r['stepchain_ms'])}"
            f" ms  opencv {ms(r['opencv_ms'])} ms  ours/opencv {ratio}  pillow "
            f"{ms(r['pillow_ms'])} ms  {r['gb_per_s']:6.1f} GB/s ({r['roofline'] * 100:3.0f}% of copy)")


def _scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per size and kernel: paired speed-up over the first thread count; memory-bound kernels
    get their roofline (GB/s against the copy bandwidth), the others an Amdahl fit."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r["size"], {}).setdefault(r["label"], {
            "threads": [], "ms": [], "min_ms": [], "speedup": [], "speedup_best": [],
            "cpu_speedup": [],
            "gb_per_s": [], "copy_gb_per_s": [], "roofline": []})
        for key, src in (("threads", "threads"), ("ms", "stepchain_ms"),
                         ("min_ms", "stepchain_min_ms"), ("speedup", "speedup"),
                         ("speedup_best", "speedup_best"), ("cpu_speedup", "cpu_speedup"),
                         ("gb_per_s", "gb_per_s"),
                         ("copy_gb_per_s", "copy_gb_per_s"), ("roofline", "roofline")):
            entry[key].append(r[src])
    for per_size in out.values():
        # the roof: the best copy rate seen at this size, by the bandwidth probe or by the
        # identity kernel's own rounds (on a loaded machine either can catch a bad moment)
        best_copy = max([*next(iter(per_size.values()))["copy_gb_per_s"],
                         *per_size.get("identity", {}).get("gb_per_s", [])])
        for label, entry in per_size.items():
            roof = best_copy
            entry["roof_gb_per_s"] = roof
            bound = label == "identity" or TARGET_SPEEDUP * entry["gb_per_s"][0] > roof
            entry["memory_bound"] = bound
            entry["serial_fraction"] = None if bound else serial_fraction(
                entry["threads"], entry["speedup"])
    return out


def _targets(doc: dict[str, Any], threads: Sequence[int]) -> list[dict[str, Any]]:
    """Issue 13's targets on every size: ours <= OpenCV at 1 and 2 threads; a 2-thread
    speed-up >= 1.8 unless memory-bound, where the roofline share is reported instead."""
    out: list[dict[str, Any]] = []

    def add(size: str, name: str, value: float | None, op: str, limit: float) -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"size": size, "target": name, "value": value, "op": op, "limit": limit,
                    "met": met})

    t_cmp = 2 if 2 in threads else max(threads)
    for r in doc["results"]:
        if r["opencv_ms"] is not None and r["threads"] in (1, 2):
            add(r["size"], f"{r['label']} time / OpenCV time, {r['threads']} thread(s)",
                r["vs_opencv"], "<=", TARGET_VS_OPENCV)
        if r.get("vs_opencv_cpu") is not None:
            add(r["size"], f"{r['label']} CPU time / OpenCV CPU time, 1 thread",
                r["vs_opencv_cpu"], "<=", TARGET_VS_OPENCV)
    if t_cmp <= threads[0]:
        return out
    for size, per_size in doc["scaling"].items():
        for label, sc in per_size.items():
            at = sc["threads"].index(t_cmp)
            if label == "identity":
                continue
            if sc["memory_bound"]:
                # no speed-up target: the roofline is reported (met: None, shown as "-")
                out.append({"size": size, "target": f"{label} GB/s at {t_cmp} threads / best "
                            f"copy GB/s (memory-bound: {TARGET_SPEEDUP}x its 1-thread traffic "
                            "exceeds the roof)", "value": sc["gb_per_s"][at] / sc["roof_gb_per_s"],
                            "op": "roofline", "limit": 1.0, "met": None})
            else:
                add(size, f"{label} speed-up {sc['threads'][0]} -> {t_cmp} threads (wall)",
                    sc["speedup"][at], ">=", TARGET_SPEEDUP)
                add(size, f"{label} speed-up {sc['threads'][0]} -> {t_cmp} threads (CPU critical "
                    "path)", sc["cpu_speedup"][at], ">=", TARGET_SPEEDUP)
    return out


def write(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """Writes kernels.json, kernels.md and kernels.png into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "kernels.json", "md": out / "kernels.md", "png": out / "kernels.png"}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    paths["md"].write_text(markdown(doc))
    plot(doc, paths["png"])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """`stepchain bench kernels [--sizes WxH ...] [--threads N ...] [--repeat R] [--kernels K ...]
    [--quick] [--out DIR]`."""
    parser = argparse.ArgumentParser(
        prog="stepchain bench kernels",
        description="Time every native kernel against OpenCV and Pillow in paired rounds; "
                    "write JSON, Markdown and a plot (ratios, speed-up, roofline).")
    parser.add_argument("--sizes", nargs="+", type=image_size, metavar="WxH",
                        help=f"image sizes (default: {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--threads", nargs="+", type=int, metavar="N",
                        help="thread counts (default: 1 .. number of cores)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="paired rounds per kernel (medians of per-round ratios)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_SIZES[0]}, 2 repeats, 5 ms pauses")
    parser.add_argument("--kernels", nargs="+", metavar="NAME",
                        help="only these kernels (canonical names or aliases; default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    try:
        kernels = [native.canonical_name(k) for k in args.kernels or ()]
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    sizes = args.sizes or [image_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeat = 2 if args.quick else args.repeat
    threads = args.threads or list(range(1, (os.cpu_count() or 1) + 1))
    if any(t < 1 for t in threads):
        parser.error("--threads must be >= 1")
    doc = run(sizes, sorted(set(threads)), repeat, kernels=kernels,
              settle_s=QUICK_SETTLE_S if args.quick else SETTLE_S)
    paths = write(doc, args.out)
    print()
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the native kernels against OpenCV and Pillow, side by side in one run.

For every kernel, image size and OpenMP thread count (1..N, N = cores) the median wall time of
`repeat` calls is measured for stepchain, for the nearest OpenCV operation (with
``cv2.setNumThreads`` set to the same thread count) and for the nearest Pillow operation
(single-threaded, measured once). Each cell runs as a block of back-to-back calls after two
warm-up calls — the steady state of a busy step — and all cells come from one run, so ratios
and speed-ups are taken side by side. Run it on a quiet machine.

Writes ``kernels.json`` (every measurement, scaling and the target verdicts), ``kernels.md``
(Markdown tables) and ``kernels.png`` (speed-up vs threads per kernel with an Amdahl fit; the
fitted serial fraction is in the legend). Run it as ``stepchain bench kernels [args]``
(or ``python -m bench.kernels``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import native
from bench import RESULTS_DIR

DEFAULT_SIZES = ("1920x1080", "3840x2160")
QUICK_SIZES = ("160x96",)
DEFAULT_OUT = RESULTS_DIR
#: Untimed pause before each block of timed calls. Worker threads of the previous block
#: (libgomp's team, OpenCV's pthreads pool) busy-wait for a while after their work; without the
#: pause they take a core from the next block.
SETTLE_S = 0.05

Fn = Callable[[], Any]


def _settle() -> None:
    time.sleep(SETTLE_S)


@dataclass(frozen=True)
class Case:
    """One kernel call and its nearest OpenCV / Pillow equivalents (None: there is none)."""

    kernel: str
    params: dict[str, Any]
    opencv_op: str | None
    pillow_op: str | None
    build: Callable[[np.ndarray, Any, int], tuple[Fn, Fn | None, Fn | None]] = field(repr=False)


def _cases() -> list[Case]:
    """The benchmarked calls. Imports OpenCV and Pillow lazily (test-only dependencies)."""
    import cv2
    from PIL import Image, ImageEnhance, ImageFilter

    def identity(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.identity(img, threads=t), None, pil.copy)

    def grayscale(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.grayscale(img, threads=t),
                lambda: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY),
                lambda: pil.convert("L"))

    def blur(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.gaussian_blur(img, sigma=3.0, threads=t),
                lambda: cv2.GaussianBlur(img, (19, 19), 3.0, borderType=cv2.BORDER_REPLICATE),
                lambda: pil.filter(ImageFilter.GaussianBlur(radius=3)))

    def sharpen(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_sharpen() -> np.ndarray:
            soft = cv2.GaussianBlur(img, (7, 7), 1.0, borderType=cv2.BORDER_REPLICATE)
            return cv2.addWeighted(img, 2.0, soft, -1.0, 0.0)
        return (lambda: native.sharpen(img, amount=1.0, sigma=1.0, threads=t), cv_sharpen,
                lambda: pil.filter(ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)))

    def edges(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_edges() -> np.ndarray:
            gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
            return cv2.convertScaleAbs(cv2.magnitude(gx, gy))
        return (lambda: native.edges(img, threads=t), cv_edges,
                lambda: pil.filter(ImageFilter.FIND_EDGES))

    def brightness(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.brightness(img, factor=1.2, threads=t),
                lambda: cv2.convertScaleAbs(img, alpha=1.2, beta=0.0),
                lambda: ImageEnhance.Brightness(pil).enhance(1.2))

    def resize(method: str) -> Callable[[np.ndarray, Any, int], tuple[Fn, Fn | None, Fn | None]]:
        flag = cv2.INTER_LINEAR if method == "bilinear" else cv2.INTER_CUBIC
        resample = Image.Resampling.BILINEAR if method == "bilinear" else Image.Resampling.BICUBIC

        def build(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
            h, w = img.shape[:2]
            return (lambda: native.resize(img, scale=2.0, method=method, threads=t),
                    lambda: cv2.resize(img, (2 * w, 2 * h), interpolation=flag),
                    lambda: pil.resize((2 * w, 2 * h), resample))
        return build

    def deblur(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        return (lambda: native.deblur(img, sigma=1.5, iterations=5, threads=t), None, None)

    def classify(img: np.ndarray, pil: Image.Image, t: int) -> tuple[Fn, Fn | None, Fn | None]:
        def cv_classify() -> Any:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            return cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F, ksize=1)), cv2.mean(gray)
        return (lambda: native.classify(img, threads=t), cv_classify, None)

    return [
        Case("identity", {}, None, "Image.copy", identity),
        Case("grayscale", {}, "cvtColor(RGB2GRAY)", "convert('L')", grayscale),
        Case("gaussian_blur", {"sigma": 3.0}, "GaussianBlur(19x19, 3, REPLICATE)",
             "GaussianBlur(radius=3)", blur),
        Case("sharpen", {"amount": 1.0, "sigma": 1.0}, "GaussianBlur + addWeighted",
             "UnsharpMask(1, 100%)", sharpen),
        Case("edges", {}, "2x Sobel + magnitude + convertScaleAbs", "FIND_EDGES (3x3)", edges),
        Case("brightness", {"factor": 1.2}, "convertScaleAbs(alpha=1.2)",
             "ImageEnhance.Brightness", brightness),
        Case("resize", {"scale": 2.0, "method": "bilinear"}, "resize(INTER_LINEAR)",
             "resize(BILINEAR)", resize("bilinear")),
        Case("resize", {"scale": 2.0, "method": "bicubic"}, "resize(INTER_CUBIC)",
             "resize(BICUBIC)", resize("bicubic")),
        Case("deblur", {"sigma": 1.5, "iterations": 5}, None, None, deblur),
        Case("classify", {}, "gray + Laplacian + meanStdDev (no colourfulness)", None, classify),
    ]


def case_label(case: Case) -> str:
    """Short row label: the kernel, plus the method for resize."""
    return f"resize ({case.params['method']})" if case.kernel == "resize" else case.kernel


def test_image(width: int, height: int) -> np.ndarray:
    """A real photograph (scikit-image's astronaut) resized to width x height, RGB."""
    import cv2
    from skimage import data

    return np.ascontiguousarray(
        cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC))


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


Call = tuple[Callable[[], None], Fn]  # (untimed preparation, timed call)


def _steady_times(calls: Sequence[Call | None], repeat: int) -> list[list[float]]:
    """Seconds of each call over `repeat` back-to-back runs, after two untimed warm-up runs.

    Each cell runs as a block, the way a busy step calls its kernel. Interleaving libraries call
    by call measured something else on a VM: while one library ran (Pillow takes ~60 ms), the
    other vCPU went idle, and an idle vCPU here takes 2-7 ms to wake, which every 2-thread call
    then paid (a 0.3 ms grayscale took 6 ms). The untimed `prepare` before each block lets the
    previous block's spinning pool threads (libgomp, OpenCV) go to sleep."""
    times: list[list[float]] = [[] for _ in calls]
    for i, call in enumerate(calls):
        if call is None:
            continue
        prepare, fn = call
        prepare()
        fn()
        fn()  # warm-up: first-touch page faults, lazy init, caches, the thread team awake
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return times


def _ms(times: list[float], stat: Callable[[list[float]], float]) -> float | None:
    return stat(times) * 1e3 if times else None


def amdahl_serial_fraction(threads: Sequence[int], speedup: Sequence[float]) -> float | None:
    """Least-squares serial fraction f of Amdahl's law S(t) = 1 / (f + (1 - f) / t).

    1/S is linear in f: 1/S - 1/t = f (1 - 1/t); points with t = 1 carry no information.
    Clamped to [0, 1]; None when only one thread count was measured."""
    num = den = 0.0
    for t, s in zip(threads, speedup, strict=True):
        if t <= 1 or s <= 0:
            continue
        x = 1.0 - 1.0 / t
        num += (1.0 / s - 1.0 / t) * x
        den += x * x
    if den == 0.0:
        return None
    return min(1.0, max(0.0, num / den))


def amdahl(t: float, f: float) -> float:
    return 1.0 / (f + (1.0 - f) / t)


def run(sizes: Sequence[tuple[int, int]], threads: Sequence[int], repeat: int,
        log: Callable[[str], None] = print,
        kernels: Sequence[str] | None = None) -> dict[str, Any]:
    """Measures every case (or those of `kernels`); returns the JSON-ready result document."""
    import cv2
    import PIL
    from PIL import Image

    cases = [c for c in _cases() if not kernels or c.kernel in kernels]
    cv_threads_before = cv2.getNumThreads()
    rows: list[dict[str, Any]] = []
    started = time.time()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        for w, h in sizes:
            img = test_image(w, h)
            pil = Image.fromarray(img)
            size = f"{w}x{h}"
            for case in cases:
                calls: list[Call | None] = []
                for i, t in enumerate(threads):
                    # Only OpenCV's own call sizes OpenCV's pool: setNumThreads rebuilds it, and
                    # fresh pool threads spinning before *our* call took its second core.
                    def prepare_cv(t: int = t) -> None:
                        cv2.setNumThreads(t)
                        time.sleep(SETTLE_S)
                    ours, ocv, pil_fn = case.build(img, pil, t)
                    calls += [(_settle, ours), (prepare_cv, ocv) if ocv else None,
                              # Pillow is single-threaded: measured with the first count only
                              (_settle, pil_fn) if pil_fn and i == 0 else None]
                times = _steady_times(calls, repeat)
                pillow_ms = _ms(times[2], statistics.median)
                for i, t in enumerate(threads):
                    ours_t, ocv_t = times[3 * i], times[3 * i + 1]
                    ours_ms = _ms(ours_t, statistics.median) or 0.0
                    ocv_ms = _ms(ocv_t, statistics.median)
                    row = {
                        "size": size, "kernel": case.kernel, "label": case_label(case),
                        "params": case.params, "threads": t,
                        "stepchain_ms": ours_ms, "opencv_ms": ocv_ms, "pillow_ms": pillow_ms,
                        # best-of-repeat: the least disturbed run on a shared machine
                        "stepchain_min_ms": _ms(ours_t, min), "opencv_min_ms": _ms(ocv_t, min),
                        "opencv_op": case.opencv_op, "pillow_op": case.pillow_op,
                        "vs_opencv": ours_ms / ocv_ms if ocv_ms else None,
                        "pillow_speedup": pillow_ms / ours_ms if pillow_ms and ours_ms else None,
                        "megapixels_per_s": (w * h / 1e6) / (ours_ms / 1e3) if ours_ms else None,
                    }
                    rows.append(row)
                    log(_row_line(row))
    finally:
        cv2.setNumThreads(cv_threads_before)

    doc: dict[str, Any] = {
        "benchmark": "kernels",
        "machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "pillow": PIL.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "config": {"sizes": [f"{w}x{h}" for w, h in sizes], "threads": list(threads),
                   "repeat": repeat, "statistic": "median wall time per call",
                   "image": "skimage.data.astronaut() resized with cv2.INTER_CUBIC"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "results": rows,
        "scaling": _scaling(rows),
    }
    doc["targets"] = _targets(rows, threads)
    return doc


def _row_line(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return f"{v:9.2f}" if v is not None else "        -"
    return (f"{r['size']:>10} {r['label']:<20} t={r['threads']:<2} stepchain {ms(r['stepchain_ms'])} ms"
            f"  opencv {ms(r['opencv_ms'])} ms  pillow {ms(r['pillow_ms'])} ms")


def _scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per size and kernel: speed-up over one thread and the Amdahl serial fraction."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["size"], {}).setdefault(r["label"],
                                                 {"threads": [], "ms": [], "min_ms": []})
        entry = out[r["size"]][r["label"]]
        entry["threads"].append(r["threads"])
        entry["ms"].append(r["stepchain_ms"])
        entry["min_ms"].append(r["stepchain_min_ms"])
    for per_size in out.values():
        for entry in per_size.values():
            first = entry["threads"].index(min(entry["threads"]))
            base, base_min = entry["ms"][first], entry["min_ms"][first]
            entry["speedup"] = [base / m if m else None for m in entry["ms"]]
            entry["speedup_best"] = [base_min / m if m else None for m in entry["min_ms"]]
            entry["serial_fraction"] = amdahl_serial_fraction(
                entry["threads"], [s or 0.0 for s in entry["speedup"]])
    return out


def _targets(rows: list[dict[str, Any]], threads: Sequence[int]) -> list[dict[str, Any]]:
    """The issue's targets, checked on every size at the two-thread count (or the largest)."""
    t_cmp = 2 if 2 in threads else max(threads)
    out: list[dict[str, Any]] = []
    by = {(r["size"], r["label"], r["threads"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        gray = by.get((size, "grayscale", t_cmp)) or {}
        blur = by.get((size, "gaussian_blur", t_cmp)) or {}
        blur1 = by.get((size, "gaussian_blur", 1)) or {}
        checks: list[tuple[str, float | None, str, float]] = [
            (f"grayscale time / OpenCV time, {t_cmp} threads", gray.get("vs_opencv"), "<=", 1.2),
            (f"gaussian_blur sigma=3 time / OpenCV time, {t_cmp} threads",
             blur.get("vs_opencv"), "<=", 1.5),
            (f"Pillow GaussianBlur(3) time / gaussian_blur time, {t_cmp} threads",
             blur.get("pillow_speedup"), ">=", 5.0),
        ]
        if blur and blur1 and t_cmp > 1:
            checks.append((f"gaussian_blur speed-up 1 -> {t_cmp} threads",
                           blur1["stepchain_ms"] / blur["stepchain_ms"], ">=", 1.7))
        for name, value, op, limit in checks:
            met = None if value is None else (value <= limit if op == "<=" else value >= limit)
            out.append({"size": size, "target": name, "value": value, "op": op, "limit": limit,
                        "met": met})
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The result document as Markdown: one table per size, then scaling and targets."""
    m = doc["machine"]
    cfg = doc["config"]
    lines = [
        "# Native kernels vs OpenCV and Pillow",
        "",
        f"{m['cpu_count']} cores ({m['processor']}, {m['platform']}); Python {m['python']}, "
        f"OpenCV {m['opencv']}, Pillow {m['pillow']}. Median of {cfg['repeat']} back-to-back "
        f"runs per cell after 2 warm-up runs; image: {cfg['image']}. Load average before/after: "
        f"{_load(m['load_average_before'])} / {_load(m['load_average_after'])}.",
        "",
        "`ours/OpenCV` < 1 means stepchain is faster; `Pillow/ours` is how many times faster "
        "stepchain is than Pillow (single-threaded). OpenCV runs with `cv2.setNumThreads` = "
        "threads. Equivalents are the nearest operation, not always the same maths (see the "
        "second table). `speed-up` is the median time at 1 thread over the median at N; "
        "`speed-up (best-of)` uses the fastest of the runs instead, which on a shared machine "
        "is the run least disturbed by other processes.",
        "",
    ]
    for size in cfg["sizes"]:
        lines += [f"## {size} RGB", "",
                  "| kernel | threads | stepchain ms | OpenCV ms | ours/OpenCV | Pillow ms | "
                  "Pillow/ours | MP/s | speed-up | speed-up (best-of) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        scaling = doc["scaling"].get(size, {})
        for r in (r for r in doc["results"] if r["size"] == size):
            sc = scaling.get(r["label"], {})
            at = sc.get("threads", [r["threads"]]).index(r["threads"])
            speedup = sc.get("speedup", [None])[at]
            best = sc.get("speedup_best", [None])[at]
            lines.append(
                f"| {r['label']} | {r['threads']} | {_f(r['stepchain_ms'])} | {_f(r['opencv_ms'])} | "
                f"{_f(r['vs_opencv'], 2, 'x')} | {_f(r['pillow_ms'])} | "
                f"{_f(r['pillow_speedup'], 1, 'x')} | {_f(r['megapixels_per_s'], 0)} | "
                f"{_f(speedup, 2, 'x')} | {_f(best, 2, 'x')} |")
        lines.append("")
        lines += ["| kernel | Amdahl serial fraction | OpenCV equivalent | Pillow equivalent |",
                  "|---|---:|---|---|"]
        seen: set[str] = set()
        for r in (r for r in doc["results"] if r["size"] == size):
            if r["label"] in seen:
                continue
            seen.add(r["label"])
            f = scaling.get(r["label"], {}).get("serial_fraction")
            lines.append(f"| {r['label']} | {_f(f, 2)} | {r['opencv_op'] or '-'} | "
                         f"{r['pillow_op'] or '-'} |")
        lines.append("")
    lines += ["## Targets", "", "| size | target | value | limit | met |", "|---|---|---:|---:|---|"]
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
    """Speed-up vs threads per kernel, one panel per size, dashed Amdahl fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = doc["config"]["sizes"]
    threads = doc["config"]["threads"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(9.0 * len(sizes), 5.2), squeeze=False)
    t_fine = np.linspace(1, max(threads), 50)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for ax, size in zip(axes[0], sizes, strict=True):
        for i, (label, sc) in enumerate(doc["scaling"].get(size, {}).items()):
            color = colors[i % len(colors)]
            f = sc["serial_fraction"]
            name = f"{label} (serial {f:.2f})" if f is not None else label
            ax.plot(sc["threads"], sc["speedup"], "o-", color=color, label=name)
            if f is not None:
                ax.plot(t_fine, [amdahl(t, f) for t in t_fine], "--", color=color, alpha=0.5)
        ax.plot(t_fine, t_fine, ":", color="grey", label="ideal")
        ax.set_title(f"{size} RGB: OpenMP speed-up (dashed: Amdahl fit)")
        ax.set_xlabel("threads")
        ax.set_ylabel("speed-up over 1 thread")
        ax.set_xticks(threads)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    load = doc["machine"].get("load_average_before")
    fig.suptitle(f"stepchain kernels on {doc['machine']['cpu_count']} cores "
                 f"(median of {doc['config']['repeat']}; load average at start "
                 f"{_load(load[:1] if load else None)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        description="Time every native kernel against OpenCV and Pillow; write JSON, Markdown "
                    "and a speed-up plot.")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="WxH",
                        help=f"image sizes (default: {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--threads", nargs="+", type=int, metavar="N",
                        help="thread counts (default: 1 .. number of cores)")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per cell (median)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_SIZES[0]}, 2 repeats")
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
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeat = 2 if args.quick else args.repeat
    threads = args.threads or list(range(1, (os.cpu_count() or 1) + 1))
    if any(t < 1 for t in threads):
        parser.error("--threads must be >= 1")
    doc = run(sizes, sorted(set(threads)), repeat, kernels=kernels)
    paths = write(doc, args.out)
    print()
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

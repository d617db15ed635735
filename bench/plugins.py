"""Plugin kernels next to built-ins of similar cost: kernel time and thread scaling in process,
what a step server adds around each (the hop), and whether concurrent calls overlap (the GIL).

``stepchain bench plugins [--size WxH] [--requests N] [--out DIR]`` needs the example plugins
(``examples/plugins``, installed by ``make venv``). Pairs, each a built-in and a plugin doing
similar work:

* C/OpenMP: ``gaussian_blur`` radius 3 vs ``acme.box_blur`` radius 3 (C, stepchain/kernel.h);
* pointwise: ``brightness`` vs ``acme.sepia`` (NumPy, holds the GIL between array operations);
* neighbourhood: ``sharpen`` vs ``acme.denoise`` (OpenCV bilateral; its cost is its own).

(a) in process, ``native.run`` at 1 and 2 threads, interleaved; speed-up = 1-thread / 2-thread;
    and the CPU time per call (all threads), which a busy machine does not inflate: 2 threads
    splitting the rows cost what 1 does, and CPU over wall time is how many cores the call got.
(b) the registry's own cost on a plugin call: ``native.run`` vs the plugin's function called
    directly, on a 64 x 64 image (validation and result checks, per call).
(c) one step server per kernel (a one-step pipeline, gRPC, raw pixels): round trip minus the
    step's own kernel time = what the hop and the step cost around the kernel.
(d) two callers at once vs one, 1 thread per call, in process: 2.0 is perfect overlap (the
    GIL released), 1.0 none.
(e) the GIL while a kernel runs: a Python thread counting in a loop beside repeated calls,
    its rate against its rate beside a sleep (interleaved). ~1: the call leaves the GIL to
    other threads (the step's gRPC handlers); near 0: it holds it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import native
from bench._harness import (
    RESULTS_DIR,
    bench_image,
    grpc_caller,
    interleaved,
    processes,
    raw_request_bytes,
    stats,
    step_commands,
    throughput_rounds,
    wait_grpc,
    write_results,
)
from stepsvc.cli_args import image_size
from stepsvc.frames import wire

Kernel = tuple[str, dict[str, Any]]
PAIRS: tuple[tuple[str, Kernel, Kernel], ...] = (
    ("C/OpenMP", ("gaussian_blur", {"sigma": 1.0, "radius": 3}), ("acme.box_blur", {"radius": 3})),
    ("pointwise", ("brightness", {"factor": 1.1}), ("acme.sepia", {"strength": 0.8})),
    ("neighbourhood", ("sharpen", {"amount": 1.0}), ("acme.denoise", {"radius": 2})),
)


def kernels() -> list[Kernel]:
    return [k for _, builtin, plugin in PAIRS for k in (builtin, plugin)]


def check_installed() -> None:
    missing = [name for name, _ in kernels() if "." in name
               and name not in {e.spec.name for e in native.entries()}]
    if missing:
        raise SystemExit(f"plugin kernel(s) {', '.join(missing)} are not installed; "
                         "`make venv` installs the example plugins (examples/plugins)")


def in_process(img: np.ndarray, requests: int) -> dict[str, Any]:
    """(a) every kernel at 1 and 2 threads, timed in turns."""
    paths: dict[str, Callable[[], Any]] = {}
    for name, params in kernels():
        for threads in (1, 2):
            paths[f"{name}@{threads}"] = partial(native.run, name, img, threads=threads,
                                                 **params)
    cpu: dict[str, list[tuple[float, float]]] = {key: [] for key in paths}

    def with_cpu(key: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            wall, used = time.perf_counter(), time.process_time()  # every thread's CPU
            fn()
            cpu[key].append((time.process_time() - used, time.perf_counter() - wall))
        return run

    warmup = 3
    timing = interleaved({key: with_cpu(key, fn) for key, fn in paths.items()}, requests, warmup)
    out: dict[str, Any] = {}
    for name, _ in kernels():
        one, two = timing[f"{name}@1"], timing[f"{name}@2"]
        cpu_1, cpu_2 = (cpu[f"{name}@{t}"][warmup:] for t in (1, 2))
        out[name] = {"threads_1": one, "threads_2": two,
                     "speedup_2_threads": round(one["median_ms"] / two["median_ms"], 3),
                     # the fastest runs: what the kernel costs when the machine lets it run
                     "speedup_2_threads_min": round(one["min_ms"] / two["min_ms"], 3),
                     # CPU time does not wait for a core: 2 threads splitting the rows cost
                     # what 1 does (ratio ~1); how many cores the call got follows the load
                     "cpu_ms_1": round(statistics.median(c for c, _ in cpu_1) * 1000, 3),
                     "cpu_ms_2": round(statistics.median(c for c, _ in cpu_2) * 1000, 3),
                     "cores_used_2": round(statistics.median(c / w for c, w in cpu_2), 3),
                     # over 1.0 only when both threads ran at once (at least once)
                     "cores_used_2_max": round(max(c / w for c, w in cpu_2), 3),
                     "cores_used_1_max": round(max(c / w for c, w in cpu_1), 3)}
        out[name]["cpu_2_over_1"] = round(out[name]["cpu_ms_2"] / out[name]["cpu_ms_1"], 3)
    return out


def dispatch_cost(requests: int) -> dict[str, Any]:
    """(b) native.run on a plugin against its function called directly (64 x 64 image)."""
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out: dict[str, Any] = {}
    for name, params in kernels():
        e = native.registry.entry(name)
        if e.builtin:
            continue
        fn = e.spec.function
        assert fn is not None
        full = e.spec.validate(params)
        own = {k: v for k, v in full.items() if k in e.spec.param_names}
        direct = {"threads": 1, "schedule": "static", "chunk": None, "passes": 1, **own}
        timing = interleaved({"registry": partial(native.run, name, img, threads=1, **params),
                              "direct": partial(fn, img, out=None, **direct)},
                             max(200, requests * 20))
        out[name] = {"registry_us": round(timing["registry"]["median_ms"] * 1000, 1),
                     "direct_us": round(timing["direct"]["median_ms"] * 1000, 1),
                     "overhead_us": round((timing["registry"]["median_ms"]
                                           - timing["direct"]["median_ms"]) * 1000, 1)}
    return out


def hop(img: np.ndarray, requests: int) -> dict[str, Any]:
    """(c) one one-step server per kernel; round trip and the step's own kernel time."""
    payload = raw_request_bytes(img)
    with tempfile.TemporaryDirectory() as tmp:
        commands: list[list[str]] = []
        addresses: list[str] = []
        for i, kernel in enumerate(kernels()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            cmds, addrs = step_commands(folder, [kernel], 1)
            commands += cmds
            addresses += addrs
        with processes(commands, 1):
            for address in addresses:
                wait_grpc(address, timeout=240)  # six servers starting on a busy machine
            callers = {name: grpc_caller(address, payload)
                       for (name, _), address in zip(kernels(), addresses, strict=True)}
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in callers}
            for fn in callers.values():
                fn()
            for _ in range(requests):
                for name, fn in callers.items():
                    start = time.perf_counter()
                    raw = fn()
                    rtt = (time.perf_counter() - start) * 1000.0
                    kernel_ms = wire.parse_response(raw).timings[0].kernel_ms
                    samples[name].append((rtt, kernel_ms))
    out: dict[str, Any] = {}
    for name, pairs in samples.items():
        out[name] = {"round_trip": stats([r for r, _ in pairs]),
                     "kernel": stats([k for _, k in pairs]),
                     "around_kernel": stats([r - k for r, k in pairs])}
    return out


def overlap(img: np.ndarray, requests: int) -> dict[str, Any]:
    """(d) throughput with two concurrent callers over one, 1 thread per call."""
    paths: dict[str, Callable[[], Any]] = {
        name: partial(native.run, name, img, threads=1, **params) for name, params in kernels()}
    one = throughput_rounds(paths, 1, requests, 2)
    two = throughput_rounds(paths, 2, requests, 2)
    return {name: {"rps_1_caller": one[name]["rps"], "rps_2_callers": two[name]["rps"],
                   "overlap": round(two[name]["rps"] / one[name]["rps"], 3),
                   "releases_gil": native.registry.entry(name).spec.releases_gil}
            for name in paths}


def _count_beside(work: Callable[[], Any], seconds: float) -> float:
    """Counts per second a pure-Python loop makes in another thread while `work` repeats."""
    stop = threading.Event()
    count = 0

    def ticker() -> None:
        nonlocal count
        n = 0
        while not stop.is_set():
            n += 1
        count = n

    thread = threading.Thread(target=ticker)
    start = time.perf_counter()
    thread.start()
    while time.perf_counter() - start < seconds:
        work()
    stop.set()
    thread.join()
    return count / (time.perf_counter() - start)


def gil_share(img: np.ndarray, rounds: int, seconds: float = 0.5) -> dict[str, Any]:
    """(e) per kernel: the ticker's rate beside the kernel over its rate beside a sleep."""
    sleeping = partial(time.sleep, 0.005)
    numbers = [int(v) for v in np.random.default_rng(0).permutation(400_000)]
    paths: dict[str, Callable[[], Any]] = {
        name: partial(native.run, name, img, threads=1, **params) for name, params in kernels()}
    # control: C code that keeps the GIL for its whole call (what a C plugin that forgets
    # Py_BEGIN_ALLOW_THREADS does to the step's other threads)
    paths["control: sorted() holding the GIL"] = partial(sorted, numbers)
    out: dict[str, Any] = {}
    for name, work in paths.items():
        beside, idle = [], []
        for _ in range(rounds):  # in turns, so load changes hit both alike
            beside.append(_count_beside(work, seconds))
            idle.append(_count_beside(sleeping, seconds))
        out[name] = {"ticker_rate_beside_kernel": round(statistics.median(beside)),
                     "ticker_rate_beside_sleep": round(statistics.median(idle)),
                     "gil_left_to_others": round(statistics.median(beside)
                                                 / statistics.median(idle), 3),
                     "releases_gil": (native.registry.entry(name).spec.releases_gil
                                      if name in dict(kernels()) else False)}
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["## (a) kernel in process (median ms) and (c) through a step server", "",
             "Medians, and in brackets the fastest of the samples (on a loaded machine the "
             "fastest runs are the ones the scheduler let run).", "",
             "| pair | kernel | source | 1 thread | 2 threads | speed-up | round trip | "
             "step's kernel | around the kernel (hop + step) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, builtin, plugin in PAIRS:
        for name, _ in (builtin, plugin):
            a, c = res["in_process"][name], res["hop"][name]
            one, two = a["threads_1"], a["threads_2"]
            lines.append(
                f"| {label} | `{name}` | {native.registry.entry(name).source} | "
                f"{one['median_ms']:.2f} ({one['min_ms']:.2f}) | "
                f"{two['median_ms']:.2f} ({two['min_ms']:.2f}) | "
                f"{a['speedup_2_threads']:.2f} ({a['speedup_2_threads_min']:.2f}) | "
                f"{c['round_trip']['median_ms']:.2f} ({c['round_trip']['min_ms']:.2f}) | "
                f"{c['kernel']['median_ms']:.2f} ({c['kernel']['min_ms']:.2f}) | "
                f"{c['around_kernel']['median_ms']:.2f} ({c['around_kernel']['min_ms']:.2f}) |")
    lines += ["", "## (a) CPU time per call in process (median ms, every thread of the process)",
              "", "CPU time does not include waiting for a core: two threads that split the rows "
              "cost what one does (ratio near 1.0) on a busy machine too. Cores used = CPU time "
              "over wall time at 2 threads, median and the most in one call (2.0 on two free "
              "cores; the median follows the load; over 1.0 only when both threads ran at once; "
              "with 1 thread never over 1.0).", "",
              "| pair | kernel | CPU, 1 thread | CPU, 2 threads | ratio 2/1 | cores used, "
              "2 threads | most, 1 thread |", "|---|---|---:|---:|---:|---:|---:|"]
    for label, builtin, plugin in PAIRS:
        for name, _ in (builtin, plugin):
            a = res["in_process"][name]
            lines.append(f"| {label} | `{name}` | {a['cpu_ms_1']:.2f} | {a['cpu_ms_2']:.2f} | "
                         f"{a['cpu_2_over_1']:.2f} | {a['cores_used_2']:.2f} "
                         f"({a['cores_used_2_max']:.2f}) | {a['cores_used_1_max']:.2f} |")
    lines += ["", "## (b) the registry's cost per plugin call (64 x 64 image, median)", "",
              "| kernel | native.run µs | function directly µs | overhead µs |",
              "|---|---:|---:|---:|"]
    for name, r in res["dispatch"].items():
        lines.append(f"| `{name}` | {r['registry_us']:.1f} | {r['direct_us']:.1f} | "
                     f"{r['overhead_us']:.1f} |")
    lines += ["", "## (d) two callers at once over one (1 thread per call; 2.0 = full overlap)",
              "", "| kernel | releases the GIL (declared) | req/s, 1 caller | req/s, 2 callers "
              "| overlap |", "|---|---|---:|---:|---:|"]
    for name, r in res["overlap"].items():
        lines.append(f"| `{name}` | {'yes' if r['releases_gil'] else 'no'} | "
                     f"{r['rps_1_caller']:.1f} | {r['rps_2_callers']:.1f} | {r['overlap']:.2f} |")
    lines += ["", "## (e) the GIL during a call: another Python thread's progress beside the "
              "kernel over beside a sleep (1.0 = the call leaves the GIL to others)", "",
              "| kernel | releases the GIL (declared) | GIL left to other threads |",
              "|---|---|---:|"]
    for name, r in res["gil"].items():
        shown = f"`{name}`" if not name.startswith("control") else name
        lines.append(f"| {shown} | {'yes' if r['releases_gil'] else 'no'} | "
                     f"{r['gil_left_to_others']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench plugins",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=image_size, default=(1280, 720),
                        help="image size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--requests", type=int, default=20, help="samples per figure")
    parser.add_argument("--gil-rounds", type=int, default=5,
                        help="turns of 0.5 s beside each kernel and beside a sleep (e)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    check_installed()
    width, height = args.size
    img, source = bench_image(width, height)
    res: dict[str, Any] = {"image": f"{width}x{height}x3 {source}",
                           "load_average_before": list(os.getloadavg()),
                           "pairs": [[label, b[0], p[0]] for label, b, p in PAIRS]}
    res["in_process"] = in_process(img, args.requests)
    res["dispatch"] = dispatch_cost(args.requests)
    res["hop"] = hop(img, args.requests)
    res["overlap"] = overlap(img, max(8, args.requests))
    res["gil"] = gil_share(img, args.gil_rounds)
    command = (f"stepchain bench plugins --size {width}x{height} --requests {args.requests}")
    write_results(args.out, "plugins", res, f"Plugin kernels beside built-ins ({width}x{height} "
                  f"{source})", command, table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

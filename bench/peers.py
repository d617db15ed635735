"""Benchmark: stepchain next to the serving stacks a user would pick instead, in one run.

The same 3-step chain at 1080p, a light one (grayscale -> blur sigma 2 -> resize x0.5) and a
heavy one (blur with many passes -> sharpen -> edges), through

* ``stepchain``: the local backend as a user gets it (``topology serve`` + ``POST /pipeline``:
  gRPC between step processes, frames through shared memory), and ``stepchain-tcp`` (the same
  step processes with ``--no-shm``: pixels inside every gRPC message);
* ``ray-serve``: one deployment per step, an ingress composing their handles, the image passed
  between deployments as object references (Ray's "compositions of models");
* ``bentoml``: one service per step, chained with ``bentoml.depends``;
* ``flask-jpeg``: the Flask-era shape, HTTP between steps with a JPEG re-encode every hop.

Every system calls the same ``native`` kernels, one process per step, the same OpenMP threads
per call; only the serving machinery differs (:mod:`bench._peers`). Systems run alone, in
turns; one client drives each with closed-loop callers (``--concurrency``, default 1 4 16) and
then one open-loop (Poisson) run offered at that system's own saturation (its best closed-loop
throughput). Per run: throughput, p50/p99 latency, CPU ms per request summed over every
process of the system (Ray's GCS, raylet and workers; BentoML's arbiter and workers;
stepchain's topology service and steps), peak RSS of them all, and the start-up time from
launch to the first correct answer. Ray Serve and BentoML are installed by ``make bench-peers``
(a virtual environment of their own); without them those systems are skipped, saying why.

Writes ``peers.json`` (one row per system, chain and concurrency), ``peers.md`` and
``peers.png`` into ``--out``. Usage: ``stepchain bench peers [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import RESULTS_DIR, bench_image, write_results
from bench._peers.chains import HEAVY_BLUR_PASSES, Kernels, chains, describe, run_in_process
from bench._peers.load import Run, closed_loop, open_loop, percentile
from bench._peers.meter import TreeMeter
from bench._peers.systems import LABELS, SYSTEMS, missing, start
from stepsvc.cli_args import image_size

NAME = "peers"
#: The peers the targets compare stepchain with.
PEERS = ("ray-serve", "bentoml")


def row(system: str, chain: str, run: Run, startup_s: float) -> dict[str, Any]:
    """One JSON row: the issue's fields, then what explains them."""
    n = max(1, run.completed)
    p50, p99 = percentile(run.latencies_ms, 0.50), percentile(run.latencies_ms, 0.99)
    by_process = sorted(run.window.cpu_by_name.items(), key=lambda kv: -kv[1])
    return {
        "system": system, "chain": chain,
        "concurrency": run.concurrency if run.mode == "closed" else "open",
        "throughput_rps": round(run.throughput_rps, 3),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "cpu_ms_per_request": round(1000.0 * run.window.cpu_s / n, 1) if run.completed else None,
        "peak_rss_mb": round(run.window.peak_rss_bytes / 1e6, 1),
        "startup_s": round(startup_s, 2),
        "mode": run.mode, "offered_rps": None if run.offered_rps is None else
        round(run.offered_rps, 3),
        "requests": run.completed, "errors": run.errors, "refused": run.refused, "first_error": run.first_error,
        "seconds": round(run.seconds, 2), "load_1m": run.load_1m,
        "cpu_ms_per_request_by_process": {name: round(1000.0 * s / n, 1)
                                          for name, s in by_process if 1000.0 * s / n >= 0.1},
        **run.extra,
    }


def measure(system: str, chain: str, kernels: Kernels, img: np.ndarray, expected: np.ndarray,
            args: argparse.Namespace) -> dict[str, Any]:
    """Starts `system`, runs every closed-loop level and the open-loop run, stops it."""
    print(f"[{time.strftime('%H:%M:%S')}] {chain}: {system} starting "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peers-", dir="/tmp") as tmp, \
            start(system, kernels, args.threads, img, expected, Path(tmp)) as running:
        meter = TreeMeter(running.roots)
        try:
            for concurrency in args.concurrency:
                run = closed_loop(running.caller, concurrency, args.seconds, meter)
                rows.append(row(system, chain, run, running.startup_s))
                print(f"  c={concurrency}: {rows[-1]['throughput_rps']} req/s, p99 "
                      f"{rows[-1]['p99_ms']} ms, refused {run.refused}, errors {run.errors}",
                      flush=True)
            saturation = max(r["throughput_rps"] for r in rows)
            if args.open_seconds > 0 and saturation > 0:
                run = open_loop(running.caller, saturation, args.open_seconds, meter)
                rows.append(row(system, chain, run, running.startup_s))
                print(f"  open @ {saturation} req/s: {rows[-1]['throughput_rps']} req/s, p99 "
                      f"{rows[-1]['p99_ms']} ms, refused {run.refused}, errors {run.errors}",
                      flush=True)
            processes = len(meter.pids_seen)
        finally:
            meter.close()
    return {"system": system, "chain": chain, "startup_s": round(running.startup_s, 2),
            "answer": running.verified, "processes": processes,
            "left_behind": running.left_behind, "rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.size
    img, source = bench_image(width, height)
    every = chains(args.heavy_passes)
    result: dict[str, Any] = {
        "image": f"{width}x{height}x3 ({source})", "threads_per_kernel": args.threads,
        "chains": {name: describe(every[name]) for name in args.chains},
        "concurrency": list(args.concurrency), "seconds_per_run": args.seconds,
        "open_loop_seconds": args.open_seconds, "versions": versions(),
        "python": platform.python_version(), "load_average_before": list(os.getloadavg()),
        "systems": {}, "rows": [], "skipped": {}, "failures": [],
    }
    for chain in args.chains:
        kernels = every[chain]
        expected = run_in_process(kernels, img, args.threads)
        for system in args.systems:
            why = missing(system)
            if why:
                result["skipped"][system] = why
                continue
            try:
                measured = measure(system, chain, kernels, img, expected, args)
            except Exception as exc:  # one system failing must not lose the others' figures
                result["failures"].append({"system": system, "chain": chain,
                                           "error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()[-3000:]})
                print(f"  {system} failed: {exc}", flush=True)
                continue
            result["rows"] += measured.pop("rows")
            result["systems"][f"{system}/{chain}"] = measured
    result["targets"] = targets(result["rows"])
    return result


def versions() -> dict[str, str]:
    found = {}
    for dist in ("stepchain", "grpcio", "ray", "bentoml", "numpy"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _cell(rows: list[dict[str, Any]], system: str, chain: str,
          concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["system"] == system and r["chain"] == chain
                 and r["concurrency"] == concurrency), None)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets against the best peer (Ray Serve or BentoML) in each cell."""
    out: list[dict[str, Any]] = []

    def best_peer(chain: str, c: int, key: str, lowest: bool) -> tuple[str, float] | None:
        cells = [(p, r[key]) for p in PEERS if (r := _cell(rows, p, chain, c)) and r[key]]
        if not cells:
            return None
        return (min if lowest else max)(cells, key=lambda pv: pv[1])

    def add(figure: str, chain: str, c: int, key: str, op: str, target: float) -> None:
        ours = _cell(rows, "stepchain", chain, c)
        peer = best_peer(chain, c, key, lowest=key == "p99_ms")
        if ours is None or peer is None or not ours[key]:
            return
        ratio = ours[key] / peer[1]
        out.append({"figure": figure, "chain": chain, "concurrency": c, "peer": peer[0],
                    "stepchain": ours[key], "best_peer": peer[1], "ratio": round(ratio, 3),
                    "target": f"{op} {target}",
                    "met": ratio >= target if op == ">=" else ratio <= target})

    concurrencies = sorted({r["concurrency"] for r in rows if isinstance(r["concurrency"], int)})
    add("light: throughput / best peer's", "light", 4, "throughput_rps", ">=", 2.0)
    add("light: p99 / best peer's", "light", 4, "p99_ms", "<=", 0.5)
    for c in concurrencies:
        add("heavy: throughput / best peer's", "heavy", c, "throughput_rps", ">=", 1.0)
    return out


def _f(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    v = res["versions"]
    lines = [
        f"{res['image']}, {res['threads_per_kernel']} OpenMP thread(s) per kernel call, "
        f"closed loop {res['seconds_per_run']} s per level, open loop "
        f"{res['open_loop_seconds']} s at each system's best closed-loop throughput. "
        f"Python {res['python']}, stepchain {v['stepchain']}, grpcio {v['grpcio']}, "
        f"Ray {v['ray']}, BentoML {v['bentoml']}. CPU per request sums every process of the "
        "system; RSS sums the tree (shared pages count in each process that maps them).",
    ]
    for chain, text in res["chains"].items():
        lines += ["", f"## {chain} chain: {text}", "",
                  "| system | callers | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MB | "
                  "start-up s | refused | errors | load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in res["rows"] if r["chain"] == chain):
            callers = (r["concurrency"] if r["mode"] == "closed"
                       else f"open @ {r['offered_rps']:.2f}/s")
            lines.append(f"| {LABELS[r['system']]} | {callers} | {_f(r['throughput_rps'], 2)} | "
                         f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                         f"{_f(r['cpu_ms_per_request'])} | {_f(r['peak_rss_mb'], 0)} | "
                         f"{_f(r['startup_s'])} | {r['refused']} | {r['errors']} | "
                         f"{r['load_1m']:.1f} |")
    lines += ["", "## Where the CPU goes (ms per request at 4 callers, top processes)", ""]
    for key, info in res["systems"].items():
        system, chain = key.split("/")
        cell = _cell(res["rows"], system, chain, 4)
        if cell:
            top = list(cell["cpu_ms_per_request_by_process"].items())[:6]
            lines.append(f"- {key} ({info['processes']} processes, answer {info['answer']}): "
                         + ", ".join(f"{n} {ms}" for n, ms in top))
    if res["targets"]:
        lines += ["", "## Targets (stepchain's local backend against the best peer)", "",
                  "| figure | callers | stepchain | best peer | ratio | target | met |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['figure']} | {t['concurrency']} | {t['stepchain']} | "
                         f"{t['best_peer']} ({t['peer']}) | {t['ratio']:.2f} | {t['target']} | "
                         f"{'yes' if t['met'] else 'no'} |")
    for system, why in res["skipped"].items():
        lines.append(f"\nSkipped {system}: {why}.")
    for f in res["failures"]:
        lines.append(f"\nFailed {f['system']} ({f['chain']}): `{f['error']}`")
    left = {k: i["left_behind"] for k, i in res["systems"].items() if i["left_behind"]}
    lines.append("\nProcesses left behind after a stop (killed by pid): "
                 + (str(left) if left else "none") + ".")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    """Throughput, p99 and CPU per request against callers, one row per chain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chain_names = list(res["chains"])
    fig, axes = plt.subplots(len(chain_names), 3, figsize=(15, 4.2 * len(chain_names)),
                             squeeze=False)
    for i, chain in enumerate(chain_names):
        for system in SYSTEMS:
            rows = [r for r in res["rows"] if r["chain"] == chain and r["system"] == system
                    and r["mode"] == "closed"]
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            for ax, key in zip(axes[i], ("throughput_rps", "p99_ms", "cpu_ms_per_request"),
                               strict=True):
                ax.plot(xs, [r[key] for r in rows], marker="o", label=system)
        for ax, title in zip(axes[i], ("throughput (req/s)", "p99 latency (ms)",
                                       "CPU ms per request (all processes)"), strict=True):
            ax.set_title(f"{chain}: {title}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("closed-loop callers")
            ax.grid(alpha=0.3)
        axes[i][1].set_yscale("log")
        axes[i][0].legend(fontsize=8)
    fig.suptitle(f"stepchain and its peers, {res['image']}, load "
                 f"{res['load_average_before'][0]:.1f} -> {res['load_average_after'][0]:.1f} "
                 f"on {os.cpu_count()} shared CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench peers",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                        help="which systems take turns (default all; a peer that is not "
                             "installed is skipped)")
    parser.add_argument("--chains", nargs="+", choices=("light", "heavy"),
                        default=["light", "heavy"], help="which chains (default both)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16],
                        help="closed-loop callers per level (default 1 4 16)")
    parser.add_argument("--seconds", type=float, help="measured seconds per closed-loop level "
                        "(default 20, --quick 4)")
    parser.add_argument("--open-seconds", type=float,
                        help="seconds of the open-loop run (default 20, --quick 4; 0: none)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per kernel call")
    parser.add_argument("--heavy-passes", type=int, default=HEAVY_BLUR_PASSES,
                        help=f"blur passes of the heavy chain (default {HEAVY_BLUR_PASSES})")
    parser.add_argument("--size", type=image_size, default=(1920, 1080),
                        help="image size WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--quick", action="store_true", help="short runs (4 s per level)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    default_s = 4.0 if args.quick else 20.0
    args.seconds = default_s if args.seconds is None else args.seconds
    args.open_seconds = default_s if args.open_seconds is None else args.open_seconds
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency: every level must be at least 1")
    res = run(args)
    command = "stepchain bench peers " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(args.out, NAME, res, "stepchain and its peers: the same chain through each",
                  command.strip(), markdown(res))
    plot(res, args.out / f"{NAME}.png")
    print(f"wrote {args.out / (NAME + '.json')}, {NAME}.md and {NAME}.png")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

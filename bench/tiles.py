"""Benchmark: a 20000 x 20000 RGB image (1.2 GB raw) through blur -> sharpen as tiles.

No step could take the image whole: it is 10x a step's default ``--max-pixels`` (40 MP) and 18x
its largest gRPC message (64 MiB). Every step runs with its defaults (the local backend starts
it: default ``--max-pixels``, message size and memory budget); ``stepchain submit IMAGE.npy
--tile SIZE --out OUT.npy`` streams the tiles. Measured:

* wall time and tiles per second;
* the client's peak RSS (``ru_maxrss`` of the ``stepchain submit`` process), against input +
  output + tiles in flight (the input and output are memory-mapped ``.npy`` files: their pages
  count in RSS while they are resident);
* every step process's peak RSS (``VmHWM``);
* correctness: windows straddling tile corners compared with the kernels run directly on a
  crop with margin (byte-identical expected).

Prints a table and writes ``bench/results/tiles.json`` and ``tiles.md``.

Usage: ``stepchain bench tiles [--side 20000] [--tile 2048] [--tile-concurrency 4]``
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage import data

import native
from bench._harness import RESULTS_DIR, write_results
from topology.local.backend import LocalBackend
from topology.pipeline.graph import parse_pipeline

PIPELINE = {"name": "bigtiles", "steps": [
    {"type": "gaussian_blur", "params": {"sigma": 2.0}},
    {"type": "sharpen", "params": {"amount": 1.0}},
]}
#: Margin around a checked window: more than the pipeline's halo (6 + 3).
CHECK_MARGIN = 32
#: Runs `stepchain submit` and prints the process's own peak RSS (kB) at the end.
CLIENT = ("import resource, sys; from stepsvc.cli import main; code = main(sys.argv[1:]); "
          "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
          "sys.exit(code)")


def write_input(path: Path, side: int) -> None:
    """A side x side RGB .npy of repeated photographs, written band by band (never whole)."""
    photo = data.astronaut()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(side, side, 3))
    band = photo.shape[0]
    row = np.tile(photo, (1, -(-side // photo.shape[1]), 1))[:, :side]
    for y in range(0, side, band):
        h = min(band, side - y)
        # shift every band a little so no two tiles are the same image
        out[y:y + h] = np.roll(row[:h], (y // band) * 37, axis=1)
    out.flush()
    del out


def vm_hwm_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match[1]) / 1024 if match else None


def check_windows(source: np.ndarray, result: np.ndarray, tile: int) -> list[dict[str, Any]]:
    """Compares windows around tile corners with the kernels run on a crop with margin."""
    side = source.shape[0]
    checks = []
    for cy, cx in [(tile, tile), (tile * 2, tile * 3), (side // 2 // tile * tile,) * 2,
                   (side - 1, side - 1), (0, 0)]:
        y0, x0 = max(0, min(cy - 128, side - 256)), max(0, min(cx - 128, side - 256))
        my0, mx0 = max(0, y0 - CHECK_MARGIN), max(0, x0 - CHECK_MARGIN)
        my1, mx1 = min(side, y0 + 256 + CHECK_MARGIN), min(side, x0 + 256 + CHECK_MARGIN)
        crop = np.ascontiguousarray(source[my0:my1, mx0:mx1])
        expected = native.sharpen(native.gaussian_blur(crop, sigma=2.0), amount=1.0)
        want = expected[y0 - my0:y0 - my0 + 256, x0 - mx0:x0 - mx0 + 256]
        got = result[y0:y0 + 256, x0:x0 + 256]
        checks.append({"window": [y0, x0], "identical": bool(np.array_equal(got, want))})
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench tiles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20000, help="image side (default 20000)")
    parser.add_argument("--tile", type=int, default=2048, help="tile side (default 2048)")
    parser.add_argument("--tile-concurrency", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the input and output .npy go (default: a temp dir; needs "
                             "2 x side^2 x 3 bytes of disk)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="stepchain-bench-tiles-",
                                     dir=args.workdir) as work:
        source_path, out_path = Path(work) / "in.npy", Path(work) / "out.npy"
        started = time.perf_counter()
        write_input(source_path, args.side)
        print(f"input: {args.side}x{args.side}x3 = {source_path.stat().st_size / 1e9:.2f} GB "
              f"written in {time.perf_counter() - started:.1f} s", flush=True)
        backend = LocalBackend(Path(work) / "state")
        try:
            applied = backend.apply(parse_pipeline(PIPELINE))
            if applied.entrypoint is None:  # only a pipeline of replicas: 0 steps has none
                raise SystemExit("bench tiles: the pipeline has no entry step to send to")
            command = [sys.executable, "-c", CLIENT, "submit", str(source_path), "--target",
                       applied.entrypoint, "--out", str(out_path), "--tile", str(args.tile),
                       "--tile-concurrency", str(args.tile_concurrency), "--timeout", "300"]
            started = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            elapsed = time.perf_counter() - started
            status = backend.status("bigtiles")
            pids = status.details["pids"] if status else {}
            steps_mb = {sid: vm_hwm_mb(pid) for sid, pid in pids.items()}
        finally:
            backend.close()
        print(run.stdout.strip())
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        accounting = re.search(r"tiles: expected (\d+), done (\d+), retried (\d+), failed (\d+)",
                               run.stdout)
        peak = re.search(r"peak_rss_kb (\d+)", run.stdout)
        source = np.load(source_path, mmap_mode="r")
        result = np.load(out_path, mmap_mode="r")
        checks = check_windows(source, result, args.tile)
        image_mb = source.nbytes / 2**20
    assert accounting is not None and peak is not None
    tiles = int(accounting[1])
    padded = (args.tile + 2 * 9) ** 2 * 3 / 2**20
    result_row = {
        "side": args.side, "tile": args.tile, "tile_concurrency": args.tile_concurrency,
        "tiles": tiles, "done": int(accounting[2]), "retried": int(accounting[3]),
        "failed": int(accounting[4]), "seconds": round(elapsed, 1),
        "megapixels_per_s": round(args.side ** 2 / 1e6 / elapsed, 1),
        "client_peak_rss_mb": round(int(peak[1]) / 1024, 1),
        "input_mb": round(image_mb, 1), "output_mb": round(image_mb, 1),
        "padded_tile_mb": round(padded, 1),
        "step_peak_rss_mb": {k: round(v, 1) if v else None for k, v in steps_mb.items()},
        "windows_checked": checks,
        "identical": all(c["identical"] for c in checks),
    }
    out = {"benchmark": "tiles", "load_average_before": load_before, "result": result_row}
    write_results(args.out, "tiles", out, "A 1.2 GB image as tiles",
                  f"stepchain bench tiles --side {args.side} --tile {args.tile} "
                  f"--tile-concurrency {args.tile_concurrency}",
                  "Steps run with their defaults (--max-pixels 40 MP, 64 MiB messages).\n\n"
                  + _table(result_row))
    return 0 if result_row["identical"] and result_row["failed"] == 0 else 1


def _table(r: dict[str, Any]) -> str:
    steps = ", ".join(f"step {k}: {v} MB" for k, v in r["step_peak_rss_mb"].items())
    return "\n".join([
        "| image | tiles | time | MP/s | client peak RSS | input + output | steps' peak RSS "
        "| identical |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        f"| {r['side']}x{r['side']}x3 | {r['done']}/{r['tiles']} (retried {r['retried']}, "
        f"failed {r['failed']}) | {r['seconds']} s | {r['megapixels_per_s']} | "
        f"{r['client_peak_rss_mb']} MB | {r['input_mb'] + r['output_mb']:.0f} MB | {steps} | "
        f"{'yes' if r['identical'] else 'NO'} ({len(r['windows_checked'])} windows) |",
    ])


if __name__ == "__main__":
    raise SystemExit(main())

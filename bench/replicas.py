"""Benchmark: replicas of the bottleneck step share its load and add throughput.

Local backend, a two-step pipeline: ``identity`` (entry) -> ``gaussian_blur`` made heavy with
``passes`` (the bottleneck), one OpenMP thread per step. The same load (``--clients``
concurrent callers, ``--requests`` requests of a ``--size`` x ``--size`` RGB image) runs with
1, then 2 (``--replicas 1,2``) replicas of the blur step. For each run: throughput, and how
many requests each replica ran (read from the timings' host names, ``<pipeline>-step-1-<r>``)
with the largest deviation from the mean — the target is within +-20 %, and throughput rising
with replicas as far as the machine's cores allow.

Prints a table and writes ``bench/results/replicas.json`` and ``replicas.md`` with the load
average before and after (the machine may be shared).

Usage: ``stepchain bench replicas [--replicas 1,2] [--requests 60] [--clients 4] [--passes 60]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import RESULTS_DIR, write_results
from stepsvc.client import call
from stepsvc.frames import codec
from topology.local.backend import LocalBackend
from topology.pipeline.graph import parse_pipeline

BLUR_STEP = 1


def pipeline(replicas: int, passes: int) -> dict[str, Any]:
    return {"name": f"bench-r{replicas}", "steps": [
        {"type": "identity", "threads": 1},
        {"type": "gaussian_blur", "threads": 1, "replicas": replicas,
         "params": {"sigma": 2.0, "passes": passes}},
    ]}


def run_load(entrypoint: str, image: np.ndarray, requests: int, clients: int
             ) -> tuple[float, Counter[str]]:
    """Sends `requests` requests from `clients` callers; (seconds, requests per blur replica)."""
    message = codec.raw_image(image)
    per_replica: Counter[str] = Counter()

    def one(i: int) -> list[str]:
        request = call.build_request(message, request_id=f"bench-{i}")
        timings = call.submit(channel, request, timeout=120).response.timings
        return [t.host for t in timings if t.step_id == BLUR_STEP]

    with call.connect(entrypoint) as channel:
        list(map(one, range(clients * 2)))  # warm-up: every replica connected
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for hosts in pool.map(one, range(requests)):
                per_replica.update(hosts)
        elapsed = time.perf_counter() - start
    return elapsed, per_replica


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2",
                        help="replica counts of the blur step to compare (default 1,2)")
    parser.add_argument("--requests", type=int, default=60, help="requests per run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent callers")
    parser.add_argument("--passes", type=int, default=60, help="blur passes (the heaviness)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.replicas.split(",") if n.strip()]
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    load_before = list(os.getloadavg())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stepchain-bench-replicas-") as state:
        backend = LocalBackend(Path(state))
        try:
            for replicas in counts:
                applied = backend.apply(parse_pipeline(pipeline(replicas, args.passes)))
                if applied.entrypoint is None:  # only with replicas: 0, which this never asks
                    raise SystemExit(f"bench replicas: no entry step with {replicas} replicas")
                elapsed, per_replica = run_load(applied.entrypoint, image, args.requests,
                                                args.clients)
                backend.delete(applied.pipeline_id)
                mean = args.requests / replicas
                deviation = max(abs(n - mean) / mean for n in
                                [per_replica.get(f"bench-r{replicas}-step-1-{r}"
                                                 if replicas > 1 else f"bench-r{replicas}-step-1", 0)
                                 for r in range(replicas)])
                rows.append({"replicas": replicas, "requests": args.requests,
                             "seconds": round(elapsed, 3),
                             "requests_per_s": round(args.requests / elapsed, 2),
                             "per_replica": dict(sorted(per_replica.items())),
                             "max_deviation_from_mean": round(deviation, 3)})
        finally:
            backend.close()
    base = rows[0]["requests_per_s"]
    for row in rows:
        row["speedup"] = round(row["requests_per_s"] / base, 2)
    result = {
        "benchmark": "replicas", "load_average_before": load_before,
        "settings": {"requests": args.requests, "clients": args.clients,
                     "passes": args.passes, "size": args.size},
        "runs": rows,
    }
    write_results(args.out, "replicas", result, "Replicas of the bottleneck step",
                  f"stepchain bench replicas --replicas {args.replicas} --requests "
                  f"{args.requests} --clients {args.clients} --passes {args.passes} "
                  f"--size {args.size}", _table(rows))
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| replicas | requests | req/s | speedup | per replica | max deviation |",
             "|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        spread = ", ".join(f"{host.rsplit('-', 1)[-1] if r['replicas'] > 1 else host}: {n}"
                           for host, n in r["per_replica"].items())
        lines.append(f"| {r['replicas']} | {r['requests']} | {r['requests_per_s']} | "
                     f"{r['speedup']}x | {spread} | "
                     f"{100 * r['max_deviation_from_mean']:.0f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

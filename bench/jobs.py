"""Benchmark: a job from and to S3 next to ``stepchain submit DIR``, and the service's memory
over a 10,000-image job.

Everything runs here, on loopback: a real S3 server (SeaweedFS), the topology service as its
own process (local backend), a 3-step pipeline (blur, sharpen, brightness).

1. **Throughput.** N photographs of mixed sizes (96 to 1024 px a side, JPEG and PNG) in
   ``s3://photos/bench/`` and the same files in a local directory. ``stepchain submit DIR
   --concurrency C`` against the pipeline's entry step, then a job ``POST /v1/jobs`` with the
   same concurrency reading from and writing to S3; alternately, ``--rounds`` times each. The
   job's time runs from the POST to its last output (state ``succeeded``); its ratio to the
   direct submit is the figure (target >= 0.9).
2. **Latency.** From the POST to the first output object in the bucket (target < 1 s).
3. **Memory.** A job of ``--small`` tiny images: the service's RSS sampled as it runs; the
   largest RSS after the first 1,000 outputs over the RSS at 1,000 (target <= 1.1).

Prints a table and writes ``bench/results/jobs.json`` and ``jobs.md``.

Usage: ``stepchain bench jobs [--images 200] [--concurrency 4] [--small 10000]``
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench._harness import RESULTS_DIR, write_results
from bench._jobs_harness import ServiceProcess, photos, rss_kb
from bench._s3_server import S3Server
from topology.jobs.locations import Location
from topology.jobs.store import Store, open_store
from topology.local.launch import installed_stepchain

PIPELINE = {"name": "benchjobs", "steps": [
    {"type": "gaussian_blur", "params": {"sigma": 1.5}},
    {"type": "sharpen", "params": {"amount": 1.0}},
    {"type": "brightness", "params": {"factor": 1.1}}]}
POLL_S = 0.02


def upload(store: Store, prefix: str, files: dict[str, bytes], threads: int = 16) -> None:
    with futures.ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda kv: store.put(prefix + kv[0], kv[1]), files.items()))


def direct_submit(entry: str, directory: Path, out: Path, concurrency: int) -> float:
    """Seconds `stepchain submit DIR` takes for every image of `directory`."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run(
        [*installed_stepchain(), "submit", str(directory), "--target", entry, "--out", str(out),
         "--concurrency", str(concurrency)], capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"stepchain submit failed: {result.stderr[-2000:]}")
    return elapsed


def first_output(store: Store, prefix: str, started: float, stop: threading.Event,
                 box: dict[str, float]) -> None:
    """Records in `box` when the first output object appears under `prefix`."""
    while not stop.is_set():
        if any(not o.key[len(prefix):].startswith("_stepchain/") for o in store.list(prefix)):
            box["first_output_s"] = time.perf_counter() - started
            return
        time.sleep(POLL_S)


def run_job(service: ServiceProcess, store: Store, body: dict[str, Any], prefix: str,
            timeout: float) -> dict[str, Any]:
    """POSTs the job; returns its seconds to the first output and to the end."""
    box: dict[str, float] = {}
    stop = threading.Event()
    started = time.perf_counter()
    watcher = threading.Thread(target=first_output, args=(store, prefix, started, stop, box))
    watcher.start()
    response = service.post("/v1/jobs", body)
    if response.status_code != 202:
        stop.set()
        raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")
    job = service.wait_end(response.json()["id"], timeout, poll_s=0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job}")
    return {"id": job["id"], "seconds": elapsed, "first_output_s": box.get("first_output_s")}


def tiny_images(count: int) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    out = {}
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
        out[f"t{i:05d}.png"] = buf.getvalue()
    return out


def memory_run(service: ServiceProcess, store: Store, count: int, concurrency: int,
               timeout: float) -> dict[str, Any]:
    """The service's RSS over a job of `count` tiny images."""
    upload(store, "small/", tiny_images(count))
    response = service.post("/v1/jobs", {"pipeline": "benchjobs", "input": "s3://photos/small/",
                                         "output": "s3://outputs/small/",
                                         "concurrency": concurrency})
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")
    job_id = response.json()["id"]
    samples: list[tuple[float, int, int]] = []  # (seconds, done, rss kB)
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(f"/v1/jobs/{job_id}")
        samples.append((time.perf_counter() - start, job["counts"]["done"], rss_kb(service.pid)))
        if job["state"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise RuntimeError(f"small-image job ended {job['state']}")
    threshold = min(1000, count // 10)
    at_threshold = next((rss for _, done, rss in samples if done >= threshold), samples[-1][2])
    after = max(rss for _, done, rss in samples if done >= threshold)
    return {"images": count, "seconds": round(samples[-1][0], 1),
            "rss_kb_at_first_1000": at_threshold, "rss_kb_max_after": after,
            "rss_ratio": round(after / at_threshold, 3),
            "samples": [[round(t, 1), d, r] for t, d, r in samples]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench jobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="photographs (default 200)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="requests in flight, direct and job alike (default 4)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="direct/job pairs, alternating (default 2)")
    parser.add_argument("--small", type=int, default=10000,
                        help="tiny images of the memory run (default 10000; 0 = skip)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="stepchain-bench-jobs-"))
    s3 = S3Server(["photos", "outputs"])
    service = ServiceProcess(work / "state", {**os.environ, **s3.env})
    (work / "state").mkdir()
    try:
        photos_store = open_store(Location("s3", "photos", ""), s3.env)
        outputs_store = open_store(Location("s3", "outputs", ""), s3.env)
        files = photos(args.images, random.Random(3), smallest=96, largest=1024)
        directory = work / "photos"
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        upload(photos_store, "bench/", files)
        megapixels = sum(Image.open(io.BytesIO(d)).size[0] * Image.open(io.BytesIO(d)).size[1]
                         for d in files.values()) / 1e6
        service.start()
        entry = service.create_pipeline(PIPELINE)
        rounds = []
        for r in range(args.rounds):
            direct_s = direct_submit(entry, directory, work / f"direct-{r}", args.concurrency)
            job = run_job(service, outputs_store, {
                "pipeline": "benchjobs", "input": "s3://photos/bench/",
                "output": f"s3://outputs/bench-{r}/", "concurrency": args.concurrency},
                f"bench-{r}/", args.timeout)
            rounds.append({"direct_s": round(direct_s, 2), "job_s": round(job["seconds"], 2),
                           "ratio": round(direct_s / job["seconds"], 3),
                           "first_output_s": None if job["first_output_s"] is None
                           else round(job["first_output_s"], 3)})
            print(f"round {r + 1}: direct {direct_s:.2f} s, job {job['seconds']:.2f} s, "
                  f"first output {job['first_output_s']}")
        memory = (memory_run(service, photos_store, args.small, args.concurrency, args.timeout)
                  if args.small else None)
    finally:
        service.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    best = max(rounds, key=lambda r: r["ratio"])
    result: dict[str, Any] = {
        "benchmark": "jobs", "load_average_before": load_before,
        "settings": {"images": args.images, "megapixels": round(megapixels, 1),
                     "concurrency": args.concurrency, "rounds": args.rounds,
                     "pipeline": PIPELINE, "store": "SeaweedFS weed mini on loopback"},
        "rounds": rounds,
        "job_over_direct_throughput_best": best["ratio"],
        "job_over_direct_throughput_median": float(np.median([r["ratio"] for r in rounds])),
        "first_output_s_max": max((r["first_output_s"] or 0) for r in rounds),
        "memory": memory,
    }
    write_results(args.out, "jobs", result, "Jobs over S3 next to submit DIR",
                  f"stepchain bench jobs --images {args.images} --concurrency "
                  f"{args.concurrency} --rounds {args.rounds} --small {args.small}",
                  _table(result))
    return 0


def _table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"{s['images']} photographs ({s['megapixels']} MP), concurrency "
             f"{s['concurrency']}, pipeline blur -> sharpen -> brightness.", "",
             "| round | submit DIR (s) | job S3->S3 (s) | job/direct throughput | POST -> first "
             "output (s) |", "|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(result["rounds"], 1):
        lines.append(f"| {i} | {r['direct_s']} | {r['job_s']} | {r['ratio']}x | "
                     f"{r['first_output_s']} |")
    memory = result["memory"]
    if memory:
        lines += ["", f"Service RSS over a {memory['images']}-image job "
                      f"({memory['seconds']} s): {memory['rss_kb_at_first_1000'] / 1024:.1f} "
                      f"MiB at the first 1,000 outputs, at most "
                      f"{memory['rss_kb_max_after'] / 1024:.1f} MiB after "
                      f"(ratio {memory['rss_ratio']})."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

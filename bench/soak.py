"""Benchmark: does a step's memory stay flat over a long run? (10,000 requests through a chain)

The 3-step chain of ``bench overload`` (grayscale -> gaussian_blur -> identity, each a
``stepchain step serve`` process) gets ``--requests`` 1920x1080 RGB frames at steady load
(``--clients`` callers back to back). Each step's resident memory (VmRSS) is sampled every
``--sample-every`` requests, and between requests (nothing in flight) after the first 1,000 and
at the end. Target (issue 11): every step's RSS at the end <= 1.1x its RSS after the first 1,000
requests. The entry step is the one that receives the 6 MB frames from the
client; its growth was the bug this benchmark watches.

Usage: ``stepchain bench soak [--requests 10000] [--clients 4]`` (or ``python -m bench.soak``).
Writes ``bench/results/soak.json`` and ``soak.md``; the machine is shared (load recorded).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from bench._harness import (
    CHAIN,
    RESULTS_DIR,
    child_env,
    frame,
    load_average,
    save_results,
    step_commands,
    wait_grpc,
)
from stepsvc.limits import DEFAULT_MAX_MESSAGE_BYTES
from stepsvc.protocol import PROCESS_METHOD
from stepsvc.routing.channels import channel_options
from topology.local.supervisor import stop_all

#: The RSS the end is compared with: after this many requests (allocator and caches warm).
BASELINE_AFTER = 1000
TARGET_RATIO = 1.1
#: Seconds the steps get after the last answer before an idle sample.
IDLE_SETTLE_S = 1.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = frame(args.width, args.height)
    load_before = load_average()
    samples: list[dict[str, Any]] = []
    codes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="stepchain-soak-") as tmp:
        commands, addresses = step_commands(Path(tmp), CHAIN, args.threads)
        env = child_env(args.threads)
        env.update(dict(kv.split("=", 1) for kv in args.env))
        procs = [subprocess.Popen([*cmd, *args.step_arg], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for cmd in commands]
        try:
            for address in addresses:
                wait_grpc(address)
            with grpc.insecure_channel(addresses[0], options=channel_options(
                    DEFAULT_MAX_MESSAGE_BYTES)) as channel:
                call = channel.unary_unary(PROCESS_METHOD, None, None)  # bytes in and out
                done = 0
                lock = threading.Lock()
                started = time.monotonic()

                def sample(idle: bool) -> None:
                    samples.append({"requests": done, "idle": idle,
                                    "seconds": round(time.monotonic() - started, 1),
                                    "rss_mib": [rss_mib(p.pid) for p in procs]})

                sample(idle=True)

                def caller(until: int) -> None:
                    nonlocal done
                    while True:
                        with lock:
                            if done >= until:
                                return
                            done += 1
                            mine = done
                        try:
                            call(payload, timeout=60)
                            code = "OK"
                        except grpc.RpcError as err:
                            code = err.code().name
                        with lock:
                            codes[code] = codes.get(code, 0) + 1
                            if mine % args.sample_every == 0:
                                sample(idle=False)

                # The baseline and the end are sampled between requests (none in flight), so
                # they compare what the steps keep, not the frames they hold at that instant.
                for until in (min(BASELINE_AFTER, args.requests), args.requests):
                    with ThreadPoolExecutor(args.clients) as pool:
                        for _ in range(args.clients):
                            pool.submit(caller, until)
                    time.sleep(IDLE_SETTLE_S)
                    sample(idle=True)
                elapsed = time.monotonic() - started
        finally:
            stop_all(procs, grace_s=13.0)  # SIGTERM all, SIGKILL what is left after 15 s
    baseline = next(s for s in samples if s["idle"]
                    and s["requests"] >= min(BASELINE_AFTER, args.requests))
    end = samples[-1]
    steps = []
    for i, (name, _) in enumerate(CHAIN):
        ratio = round(end["rss_mib"][i] / max(baseline["rss_mib"][i], 1e-9), 3)
        steps.append({"step": i + 1, "type": name, "rss_start_mib": samples[0]["rss_mib"][i],
                      "rss_baseline_mib": baseline["rss_mib"][i], "rss_end_mib": end["rss_mib"][i],
                      "rss_peak_mib": max(s["rss_mib"][i] for s in samples),
                      "end_vs_baseline": ratio, "target_met": ratio <= TARGET_RATIO})
    return {"benchmark": "soak", "chain": [n for n, _ in CHAIN], "requests": args.requests,
            "clients": args.clients, "image": f"{args.width}x{args.height} RGB raw",
            "codes": codes, "seconds": round(elapsed, 1),
            "throughput_rps": round(args.requests / elapsed, 2), "baseline_after": baseline["requests"],
            "steps": steps, "samples": samples, "step_args": args.step_arg, "env": args.env,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "shared": "yes: 8 engineers' builds and tests ran on the same 2 cores",
                        "load_before": load_before, "load_after": load_average()}}


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    out = ["# Soak: step memory over a long run", "",
           f"{doc['requests']} requests ({doc['image']}) through "
           f"{' -> '.join(doc['chain'])} by {doc['clients']} callers back to back: "
           f"{doc['seconds']} s, {doc['throughput_rps']} req/s, answers {doc['codes']}.", "",
           f"**Shared machine**: {m['cpus']} CPUs, {m['shared']}; load average {m['load_before']} "
           f"before, {m['load_after']} after.", "",
           f"| step | type | RSS at start MiB | RSS after {doc['baseline_after']} MiB | "
           "RSS at end MiB | peak MiB | end / after-1000 | target <= 1.1 |",
           "|---|---|---|---|---|---|---|---|"]
    for s in doc["steps"]:
        out.append(f"| {s['step']} | {s['type']} | {s['rss_start_mib']} | {s['rss_baseline_mib']} "
                   f"| {s['rss_end_mib']} | {s['rss_peak_mib']} | {s['end_vs_baseline']} | "
                   f"{'met' if s['target_met'] else 'NOT met'} |")
    out += ["", "RSS samples (MiB per step) by requests done; the start, the baseline and the end are "
            "taken between requests (idle), the others under load:", "",
            "| requests | " + " | ".join(f"step {s['step']}" for s in doc["steps"]) + " |",
            "|---|" + "---|" * len(doc["steps"])]
    out += [f"| {s['requests']}{' (idle)' if s['idle'] else ''} | "
            + " | ".join(str(v) for v in s["rss_mib"]) + " |" for s in doc["samples"]]
    out += ["", f"Reproduce: `stepchain bench soak --requests {doc['requests']} "
                f"--clients {doc['clients']}`", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step-arg", action="append", default=[],
                        help="extra `step serve` flag for every step (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for the steps (repeatable), e.g. "
                             "MALLOC_ARENA_MAX=2 to compare allocator settings")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    doc = run(args)
    save_results(args.out, "soak", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: a 3-step chain under open-loop overload — refused fast and by name, no hangs.

The chain is grayscale -> gaussian_blur (sigma 2) -> identity, each step a ``stepchain step
serve`` process on loopback, fed 1920x1080 RGB frames as raw pixels. First its saturation
throughput is measured closed-loop (``--clients`` callers back to back, by default as many as a
step admits at once); then requests arrive
open-loop (at fixed intervals, whether or not earlier ones finished, as real clients do) at
1x, 2x and 3x that rate for ``--duration`` seconds each, every call with a ``--deadline``
(10 s). Per rate: calls answered and hung (no answer by deadline + 5 s), OK latency p50/p99,
refusal (RESOURCE_EXHAUSTED) latency p50/p99, goodput (OK/s) against saturation, and the share
of DEADLINE_EXCEEDED. Each client connection applies client-side adaptive throttling as every
stepchain client does (``stepsvc.routing.throttle``; ``--no-client-throttling`` sends
everything): refusals it makes itself are counted apart (``refused_locally``).

Targets (issue 11, at 3x): 0 hung; refusals within 50 ms at p99; OK p99 <= 3x the p50 at
saturation; goodput >= 0.8x saturation; DEADLINE_EXCEEDED <= 1 %. The machine these run on is
shared (load average recorded with the results): the numbers are measurements, not assertions.

Usage: ``stepchain bench overload [--duration 60] [--rates 1,2,3] [--clients 16]``
(or ``python -m bench.overload``). Writes ``bench/results/overload.json`` and ``overload.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from bench._harness import (
    CHAIN,
    RESULTS_DIR,
    frame,
    load_average,
    percentile,
    processes,
    save_results,
    step_commands,
    wait_grpc,
)
from stepsvc.limits import DEFAULT_MAX_MESSAGE_BYTES
from stepsvc.protocol import PROCESS_METHOD
from stepsvc.routing.channels import channel_options
from stepsvc.routing.throttle import throttled

#: How a refusal made by the client's own throttle starts ("not sent: ..."): counted apart.
LOCAL_REFUSAL = "not sent"
#: Seconds past its deadline after which a call without an answer counts as hung.
HANG_MARGIN_S = 5.0


def saturation(call: Any, payload: bytes, clients: int, seconds: float,
               deadline: float) -> dict[str, Any]:
    """Closed loop: `clients` callers back to back for `seconds`; throughput and OK latency."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                call(payload, timeout=deadline)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            with lock:
                codes[code] += 1
                if code == "OK":
                    latencies.append((time.perf_counter() - start) * 1000)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(caller)
    elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "ok": codes["OK"],
            "codes": dict(codes), "throughput_rps": round(codes["OK"] / elapsed, 2),
            "ok_p50_ms": percentile(latencies, 0.5), "ok_p99_ms": percentile(latencies, 0.99)}


def open_loop(calls: Sequence[Any], payload: bytes, rate: float, seconds: float,
              deadline: float) -> dict[str, Any]:
    """Requests at fixed intervals of 1/rate for `seconds`, each with `deadline`, spread over
    `calls` (one per client connection, as many clients would open)."""
    results: list[tuple[str, float]] = []
    refused_by: Counter[str] = Counter()
    lock = threading.Lock()
    outstanding = threading.Semaphore(0)
    sent = 0
    interval = 1.0 / rate
    start = time.perf_counter()
    while True:
        due = start + sent * interval
        now = time.perf_counter()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        issued = time.perf_counter()
        future = calls[sent % len(calls)].future(payload, timeout=deadline)

        def done(f: Any, issued: float = issued) -> None:
            try:
                f.result()
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
                if code == "RESOURCE_EXHAUSTED":  # which step refused: "step 2 (grayscale)"
                    refused_by[(err.details() or "").split(":", 1)[0][:40]] += 1
            except Exception as exc:  # a cancelled future
                code = type(exc).__name__
            with lock:
                results.append((code, (time.perf_counter() - issued) * 1000))
            outstanding.release()

        future.add_done_callback(done)
        sent += 1
    elapsed = time.perf_counter() - start
    wait_until = time.monotonic() + deadline + HANG_MARGIN_S
    answered = 0
    while answered < sent and outstanding.acquire(timeout=max(0.0, wait_until - time.monotonic())):
        answered += 1
    with lock:
        done_results = list(results)
    codes = Counter(code for code, _ in done_results)
    ok = [ms for code, ms in done_results if code == "OK"]
    refused = [ms for code, ms in done_results if code == "RESOURCE_EXHAUSTED"]
    with lock:
        locally = refused_by.get(LOCAL_REFUSAL, 0)
    return {"offered_rps": round(rate, 2), "seconds": round(elapsed, 1), "sent": sent,
            "answered": len(done_results), "hung": sent - len(done_results),
            "codes": dict(codes), "goodput_rps": round(codes["OK"] / elapsed, 2),
            "ok_p50_ms": percentile(ok, 0.5), "ok_p99_ms": percentile(ok, 0.99),
            "refusal_p50_ms": percentile(refused, 0.5), "refusal_p99_ms": percentile(refused, 0.99),
            "refused_by": dict(refused_by), "refused_locally": locally,
            "deadline_exceeded_pct": round(100 * codes["DEADLINE_EXCEEDED"] / max(sent, 1), 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = frame(args.width, args.height)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="stepchain-overload-") as tmp:
        commands, addresses = step_commands(Path(tmp), CHAIN, args.threads)
        commands = [[*cmd, *args.step_arg] for cmd in commands]
        with processes(commands, args.threads):
            for address in addresses:
                wait_grpc(address)
            # Many clients, many connections: one stream's megabytes never hold up another
            # client's call (a distinct option keeps gRPC from sharing one subchannel).
            channels = [grpc.insecure_channel(
                addresses[0], options=[*channel_options(DEFAULT_MAX_MESSAGE_BYTES),
                                       ("stepchain.bench.client", i)])
                for i in range(args.connections)]
            if args.client_throttling:  # each connection is a client with its own throttle
                channels = [throttled(c, f"the pipeline at {addresses[0]}") for c in channels]
            calls = [c.unary_unary(PROCESS_METHOD, None, None) for c in channels]  # bytes, no parsing
            call = calls[0]
            for _ in range(3):  # warm up
                call(payload, timeout=args.deadline)
            sat = saturation(call, payload, args.clients, args.saturation_seconds,
                             args.deadline)
            rounds = []
            for factor in args.rates:
                time.sleep(2.0)  # let queues empty between rounds
                result = open_loop(calls, payload, factor * sat["throughput_rps"],
                                   args.duration, args.deadline)
                result["factor"] = factor
                result["goodput_vs_saturation"] = round(
                    result["goodput_rps"] / max(sat["throughput_rps"], 1e-9), 2)
                result["ok_p99_vs_saturation_p50"] = (
                    round(result["ok_p99_ms"] / sat["ok_p50_ms"], 2)
                    if result["ok_p99_ms"] and sat["ok_p50_ms"] else None)
                rounds.append(result)
                print(line(result), flush=True)
            for channel in channels:
                channel.close()
    return {"benchmark": "overload", "chain": [name for name, _ in CHAIN],
            "image": f"{args.width}x{args.height} RGB raw", "deadline_s": args.deadline,
            "duration_s": args.duration, "step_args": args.step_arg, "threads": args.threads,
            "connections": args.connections, "client_throttling": args.client_throttling,
            "saturation": sat, "rounds": rounds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "shared": "yes: 8 engineers' builds and tests ran on the same 2 cores",
                        "load_before": load_before, "load_after": load_average()}}


def line(r: dict[str, Any]) -> str:
    return (f"{r['factor']}x ({r['offered_rps']} req/s): sent {r['sent']}, hung {r['hung']}, "
            f"codes {r['codes']}, goodput {r['goodput_rps']}/s "
            f"({r['goodput_vs_saturation']}x sat), OK p50/p99 {r['ok_p50_ms']}/{r['ok_p99_ms']} ms, "
            f"refusal p50/p99 {r['refusal_p50_ms']}/{r['refusal_p99_ms']} ms, "
            f"DEADLINE_EXCEEDED {r['deadline_exceeded_pct']} %, refused by {r['refused_by']}")


def markdown(doc: dict[str, Any]) -> str:
    sat = doc["saturation"]
    m = doc["machine"]
    out = [
        "# Overload: open-loop load on a 3-step chain",
        "",
        f"Chain {' -> '.join(doc['chain'])}, each a `stepchain step serve` process on loopback; "
        f"{doc['image']} frames; {doc['deadline_s']:.0f} s deadlines; {doc['duration_s']:.0f} s "
        f"per rate; open-loop calls spread over {doc.get('connections', 1)} client connections "
        f"({'each with' if doc.get('client_throttling') else 'without'} client-side adaptive "
        "throttling; a refusal it makes itself is counted as RESOURCE_EXHAUSTED, "
        "`refused by` says `not sent`); "
        f"step flags: `{' '.join(doc['step_args']) or '(defaults)'}`.",
        "",
        f"**Shared machine**: {m['cpus']} CPUs, {m['shared']}; load average (1/5/15 min) "
        f"{m['load_before']} before, {m['load_after']} after. The client runs on the same cores.",
        "",
        f"Saturation (closed loop, {sat['clients']} callers, {sat['seconds']} s): "
        f"**{sat['throughput_rps']} req/s**, OK p50 {sat['ok_p50_ms']} ms, p99 {sat['ok_p99_ms']} ms.",
        "",
        "| load | offered req/s | sent | answered | hung | OK | RESOURCE_EXHAUSTED "
        "(of them not sent) | DEADLINE_EXCEEDED | other | goodput req/s | goodput / saturation | "
        "OK p50 ms | OK p99 ms | OK p99 / sat p50 | refusal p50 ms | refusal p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rounds"]:
        codes = dict(r["codes"])
        ok, ex, de = (codes.pop(k, 0) for k in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"))
        other = ", ".join(f"{k} {v}" for k, v in codes.items()) or "0"
        out.append(
            f"| {r['factor']}x | {r['offered_rps']} | {r['sent']} | {r['answered']} | "
            f"{r['hung']} | {ok} | {ex} ({r.get('refused_locally', 0)}) | "
            f"{de} ({r['deadline_exceeded_pct']} %) | {other} | "
            f"{r['goodput_rps']} | {r['goodput_vs_saturation']} | {r['ok_p50_ms']} | "
            f"{r['ok_p99_ms']} | {r['ok_p99_vs_saturation_p50']} | {r['refusal_p50_ms']} | "
            f"{r['refusal_p99_ms']} |")
    out += ["", "Targets at 3x: 0 hung; refusal p99 <= 50 ms; OK p99 <= 3x saturation p50; "
                "goodput >= 0.8x saturation; DEADLINE_EXCEEDED <= 1 %.", ""]
    worst = next((r for r in doc["rounds"] if r["factor"] == 3), None)
    if worst is not None:
        checks = [
            ("0 hung", worst["hung"] == 0),
            ("refusal p99 <= 50 ms", worst["refusal_p99_ms"] is None
             or worst["refusal_p99_ms"] <= 50),
            ("OK p99 <= 3x saturation p50", (worst["ok_p99_vs_saturation_p50"] or 99) <= 3),
            ("goodput >= 0.8x saturation", worst["goodput_vs_saturation"] >= 0.8),
            ("DEADLINE_EXCEEDED <= 1 %", worst["deadline_exceeded_pct"] <= 1),
        ]
        out += [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in checks] + [""]
    out += ["Reproduce: `stepchain bench overload "
            f"--duration {doc['duration_s']:.0f}"
            + "".join(f" --step-arg={a}" for a in doc["step_args"]) + "`", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of open-loop load per rate (default 60)")
    parser.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",")],
                        default=[1.0, 2.0, 3.0], help="multiples of saturation (default 1,2,3)")
    parser.add_argument("--clients", type=int, default=16,
                        help="closed-loop callers measuring saturation (default 16, the steps' "
                             "--max-inflight)")
    parser.add_argument("--saturation-seconds", type=float, default=20.0,
                        help="seconds of the saturation measurement (default 20)")
    parser.add_argument("--connections", type=int, default=8,
                        help="client connections the open-loop calls are spread over "
                             "(default 8)")
    parser.add_argument("--no-client-throttling", dest="client_throttling",
                        action="store_false",
                        help="send every request (no client-side adaptive throttling)")
    parser.add_argument("--deadline", type=float, default=10.0,
                        help="deadline of every call, seconds (default 10)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per kernel")
    parser.add_argument("--step-arg", action="append", default=[],
                        help="extra `step serve` flag for every step (repeatable), e.g. "
                             "--step-arg=--max-inflight=2")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="folder for overload.json and overload.md")
    args = parser.parse_args(argv)
    doc = run(args)
    save_results(args.out, "overload", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

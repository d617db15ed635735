"""Benchmark: throughput of a 3-step chain with tracing off against tracing on (100 % sampled).

Three identical chains of real ``stepchain step serve`` processes on loopback
(brightness -> edges -> identity, raw 1920x1080 RGB between steps; ``--width/--height`` to
change), configured only by environment, as users do:

- ``off``:  no ``OTEL_*`` variables (the product default; interceptors only pass trace context);
- ``otlp``: ``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_TRACES_SAMPLER=always_on``, exporting OTLP/gRPC
  to a receiver in this process (opentelemetry-proto's collector TraceService, counting spans);
- ``file``: ``STEPCHAIN_TRACE_FILE`` (the local mode's OTLP JSON lines), ``always_on``.

All three run at once and are loaded in alternating rounds (off, otlp, file, off, ...) with
``--clients`` concurrent callers, so a busy machine disturbs each mode alike; the figure per mode
is the median of its rounds. Besides req/s, the chain processes' CPU time per request (from
/proc) is reported: on a shared machine it shows the cost of tracing with far less noise than
throughput does. Target: tracing on costs <= 5 %. Prints a table and
writes ``bench/results/tracing.json`` and ``tracing.md``. Measurements, not assertions.

Usage: ``stepchain bench tracing [--rounds 5] [--requests 20] [--clients 2]`` (or ``python -m bench.tracing``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator, Mapping
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from stepchain.v1 import step_pb2, step_pb2_grpc

from bench._harness import RESULTS_DIR
from stepsvc.frames import codec
from stepsvc.ports import free_port
from stepsvc.protocol import PROCESS_METHOD
from stepsvc.routing.channels import channel_options
from stepsvc.routing.discovery import write_static_discovery
from stepsvc.telemetry import (
    Tracing,
    annotate_current_span,
    current_trace_id,
    step_attributes,
)

RESULTS = RESULTS_DIR
CHAIN: tuple[tuple[str, dict[str, Any]], ...] = (("brightness", {"factor": 1.2}), ("edges", {}), ("identity", {}))
MODES = ("off", "otlp", "file")
TARGET_LOSS = 0.05
MAX_MESSAGE = 64 * 1024 * 1024


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OTEL_") and k != "STEPCHAIN_TRACE_FILE"}
    env["STEPCHAIN_LOG_LEVEL"] = "WARNING"
    return env


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far (from /proc; Linux)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def chain(name: str, tmp: Path, env: Mapping[str, str],
          threads: int) -> Iterator[tuple[str, list[int]]]:
    """Starts a 3-step chain of processes; yields the entry address and the pids."""
    ports = [free_port() for _ in CHAIN]
    steps = [{"id": i, "type": kind, "params": {**params, "threads": threads},
              **({"next_step": i + 1} if i + 1 < len(CHAIN) else {})}
             for i, (kind, params) in enumerate(CHAIN)]
    discovery = tmp / f"{name}-discovery.json"
    write_static_discovery(discovery, {i: f"127.0.0.1:{p}" for i, p in enumerate(ports)})
    procs = []
    try:
        for i, port in enumerate(ports):
            cfg = tmp / f"{name}-step-{i}.json"
            cfg.write_text(json.dumps({"pipeline_id": f"bench-{name}", "step_id": i,
                                       "steps": steps}))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config", str(cfg),
                 "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
                 "--discovery", f"static:{discovery}"],
                env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for proc, port in zip(procs, ports, strict=True):
            wait_serving(proc, f"127.0.0.1:{port}")
        yield f"127.0.0.1:{ports[0]}", [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_serving(proc: subprocess.Popen[bytes], address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"step at {address} exited with {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"step at {address} not serving after {timeout} s")


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class _FakeServerContext:
    """Just what the server interceptor reads from a ServicerContext."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


class _DoneCall:
    """A completed call, as grpc's interceptor continuation returns for a blocking call."""

    def add_done_callback(self, fn: Any) -> None:
        fn(self)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""


def instrumentation_cpu_us(tracing: Tracing, iterations: int = 3000) -> float:
    """CPU microseconds the tracing code costs one step for one request, export included.

    Runs the real interceptors and phase spans around empty work (server span, queue, decode,
    kernel, forward with a client call, attributes, trace id): what a step adds per request.
    """
    attrs = step_attributes(pipeline_id="bench", step_id=1, step_type="edges", threads=1,
                            pixels=2_073_600, kernel_seconds=0.02, request_id="r" * 32)

    def body(request: Any, context: Any) -> Any:
        for phase in ("queue", "decode", "kernel"):
            with tracing.span(phase):
                pass
        with tracing.span("forward"):
            client.intercept_unary_unary(lambda details, req: _DoneCall(), call_details, request)
        annotate_current_span(attrs)
        return current_trace_id()

    handler = grpc.unary_unary_rpc_method_handler(body)
    details: Any = types.SimpleNamespace(method=PROCESS_METHOD)
    traced: Any = tracing.server_interceptors()[0].intercept_service(lambda _: handler, details)
    client: Any = tracing.client_interceptors()[0]
    call_details = _CallDetails(PROCESS_METHOD, 10.0, None, None, None, None)
    context = _FakeServerContext()
    start = time.process_time()
    for done in range(1, iterations + 1):
        traced.unary_unary(None, context)
        if done % 200 == 0:  # stay below the batch queue (2048 spans): nothing is dropped
            tracing.force_flush()
    tracing.force_flush()
    return (time.process_time() - start) * 1e6 / iterations


def load_round(stub: step_pb2_grpc.StepServiceStub, request: step_pb2.ProcessRequest,
               requests: int, clients: int) -> dict[str, float]:
    """`requests` calls from `clients` threads; requests/s and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        start = time.perf_counter()
        stub.Process(request, timeout=120)
        with lock:
            latencies.append((time.perf_counter() - start) * 1000.0)

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(call) for _ in range(requests)]:
            done.result()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"rps": requests / wall, "p50_ms": latencies[len(latencies) // 2],
            "p95_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (default 5)")
    parser.add_argument("--requests", type=int, default=20, help="requests per round")
    parser.add_argument("--clients", type=int, default=2, help="concurrent callers")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per kernel")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    img = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
    request = step_pb2.ProcessRequest(image=codec.raw_image(img))

    receiver = SpanCounter()
    rx_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, rx_server)
    rx_port = rx_server.add_insecure_port("127.0.0.1:0")
    rx_server.start()

    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="stepchain-bench-tracing-") as tmp_dir, \
            ExitStack() as stack:
        tmp = Path(tmp_dir)
        trace_file = tmp / "spans.jsonl"
        envs = {
            "off": base_env(),
            "otlp": {**base_env(), "OTEL_TRACES_EXPORTER": "otlp",
                     "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx_port}",
                     "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "always_on"},
            "file": {**base_env(), "STEPCHAIN_TRACE_FILE": str(trace_file),
                     "OTEL_TRACES_SAMPLER": "always_on"},
        }
        stubs, pids = {}, {}
        for mode in MODES:
            address, pids[mode] = stack.enter_context(chain(mode, tmp, envs[mode],
                                                            args.threads))
            channel = stack.enter_context(grpc.insecure_channel(
                address, options=channel_options(MAX_MESSAGE)))
            stubs[mode] = step_pb2_grpc.StepServiceStub(channel)
            for _ in range(3):  # warm-up: connections, first-call imports, page faults
                stubs[mode].Process(request, timeout=120)
        for round_no in range(args.rounds):
            for mode in MODES:
                cpu_before = cpu_seconds(pids[mode])
                result = load_round(stubs[mode], request, args.requests, args.clients)
                # CPU the chain spent per request: less disturbed by a busy machine than req/s.
                result["cpu_ms_per_request"] = (cpu_seconds(pids[mode]) - cpu_before) \
                    * 1000.0 / args.requests
                results[mode].append(result)
                print(f"round {round_no + 1}/{args.rounds} {mode:5} {result['rps']:7.2f} req/s "
                      f"p50 {result['p50_ms']:7.1f} ms  chain CPU "
                      f"{result['cpu_ms_per_request']:6.1f} ms/request", flush=True)
        time.sleep(6.0)  # the batch processors export every 5 s (OTEL_BSP_SCHEDULE_DELAY)
        otlp_spans = receiver.spans
        file_bytes = trace_file.stat().st_size if trace_file.exists() else 0
        micro = {}
        for mode, tracing in (
                ("off", Tracing.disabled()),
                ("otlp", Tracing.from_env("bench", env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx_port}",
                    "OTEL_TRACES_SAMPLER": "always_on"})),
                ("file", Tracing.from_env("bench", env={
                    "STEPCHAIN_TRACE_FILE": str(tmp / "micro.jsonl"),
                    "OTEL_TRACES_SAMPLER": "always_on"}))):
            micro[mode] = instrumentation_cpu_us(tracing)
            tracing.shutdown()
    rx_server.stop(0)

    summary: dict[str, Any] = {}
    for mode in MODES:
        rps = [r["rps"] for r in results[mode]]
        summary[mode] = {
            "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in results[mode]),
            "p95_ms_median": statistics.median(r["p95_ms"] for r in results[mode]),
            "cpu_ms_per_request_median": statistics.median(
                r["cpu_ms_per_request"] for r in results[mode]),
        }
    for mode in ("otlp", "file"):
        m = summary[mode]
        m["loss_vs_off"] = 1.0 - m["rps_median"] / summary["off"]["rps_median"]
        # Rounds of the two modes ran back to back: their ratio cancels slow drifts in load.
        m["loss_vs_off_paired"] = statistics.median(
            1.0 - on["rps"] / off["rps"] for on, off in zip(results[mode], results["off"],
                                                             strict=True))
        m["cpu_overhead_vs_off"] = (m["cpu_ms_per_request_median"]
                                    / summary["off"]["cpu_ms_per_request_median"] - 1.0)
    sent = args.rounds * args.requests + 3  # measured + warm-up requests, all traced
    report = {
        "benchmark": "tracing",
        "chain": [kind for kind, _ in CHAIN],
        "image": f"{args.width}x{args.height}x3 raw",
        "rounds": args.rounds, "requests_per_round": args.requests, "clients": args.clients,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "modes": summary,
        "instrumentation_cpu_us_per_step_request": micro,
        "otlp_spans_received": otlp_spans,
        "otlp_spans_per_request": otlp_spans / sent,
        "file_bytes_written": file_bytes,
        "target_loss": TARGET_LOSS,
        "target_met": all(summary[m]["loss_vs_off"] <= TARGET_LOSS
                          and summary[m]["cpu_overhead_vs_off"] <= TARGET_LOSS
                          for m in ("otlp", "file")),
        "rounds_detail": results,
    }
    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracing.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "tracing.md").write_text(table + "\n")
    return 0


def render(report: Mapping[str, Any]) -> str:
    modes = report["modes"]
    lines = [
        f"# Tracing overhead: 3-step chain ({' -> '.join(report['chain'])}), "
        f"{report['image']}",
        "",
        f"{report['rounds']} alternating rounds x {report['requests_per_round']} requests, "
        f"{report['clients']} concurrent clients, {report['threads']} OpenMP thread(s) per "
        f"kernel; {report['machine']['cpus']} CPUs, load average "
        f"{report['machine']['load_avg_1m']:.1f} at the end.",
        "",
        "| mode | req/s (median) | req/s min..max | p50 ms | p95 ms | req/s loss vs off "
        "(medians / paired rounds) | chain CPU ms/request | CPU vs off |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        m = modes[mode]
        loss = (f"{m['loss_vs_off'] * 100:+.1f} % / {m['loss_vs_off_paired'] * 100:+.1f} %"
                if "loss_vs_off" in m else "-")
        cpu = f"{m['cpu_overhead_vs_off'] * 100:+.1f} %" if "cpu_overhead_vs_off" in m else "-"
        lines.append(f"| {mode} | {m['rps_median']:.2f} | {m['rps_min']:.2f}..{m['rps_max']:.2f} "
                     f"| {m['p50_ms_median']:.1f} | {m['p95_ms_median']:.1f} | {loss} "
                     f"| {m['cpu_ms_per_request_median']:.1f} | {cpu} |")
    lines += [
        "",
        "Tracing code alone, in this process (real interceptors and phase spans around empty "
        "work, export included; the OTLP figure includes the receiver decoding): CPU per step "
        "per request " + ", ".join(f"{mode} {us:.0f} µs" for mode, us in
                                   report["instrumentation_cpu_us_per_step_request"].items())
        + f"; for the {len(report['chain'])} steps that is "
        + ", ".join(f"{mode} {us * len(report['chain']) / 1000 / modes['off']['cpu_ms_per_request_median'] * 100:.1f} %"
                    for mode, us in report["instrumentation_cpu_us_per_step_request"].items())
        + " of the chain's CPU per request with tracing off.",
        "",
        f"OTLP receiver got {report['otlp_spans_received']} spans "
        f"({report['otlp_spans_per_request']:.1f} per request sent); the file mode wrote "
        f"{report['file_bytes_written'] / 1e6:.2f} MB of OTLP JSON.",
        f"Target: tracing on (100 % sampled) costs <= {report['target_loss'] * 100:.0f} % "
        f"(median req/s and chain CPU per request) -> "
        f"{'met' if report['target_met'] else 'NOT met'}. Positive = slower/more than off.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

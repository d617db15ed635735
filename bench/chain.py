"""Benchmark: what a hop costs next to moving the bytes, and step chains against one process.

All paths side by side in one run, on scikit-image's astronaut resized to each ``--sizes``
(default 1920x1080 and 3840x2160); every server is a separate process:

(a) hop: a round trip through one ``identity`` step (``stepchain step serve``) for

    * the floors: a raw TCP echo of the pixels and a pure-bytes gRPC echo (a generic handler
      that returns the request bytes; the same channel options as steps);
    * the gRPC hop: request and response through the step's zero-copy codec;
    * the shared-memory hop: a caller on the same host hands the step a frame segment and a
      reply segment (only handles cross gRPC);
    * the gRPC hop with glibc's allocator defaults (``STEPCHAIN_MALLOC_TUNING=off``), to show
      what :func:`stepsvc.frames.codec.keep_large_buffers` does to page faults;
    * HTTP POST of a JPEG that the step decodes and re-encodes (a Flask-style step).

    Each path gets CPU ms per request (this client plus the server processes, from
    ``/proc/<pid>/stat``) and page faults per frame.
(b) throughput at saturation (``--clients`` callers) of a 3-step chain (light and heavy) as
    step processes passing frames through shared memory (what the local backend runs), the
    same over TCP only (``--no-shm``), as HTTP+JPEG processes, against the same three kernels
    called one after another in this process.

Prints a table and writes ``chain.json`` and ``chain.md`` into ``--out``. The machine is
shared and timings swing: paths take turns, and the figures are ratios measured side by side.

Usage: ``stepchain bench chain [--sizes 1920x1080 3840x2160] [--requests 30]`` (or
``python -m bench.chain``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from stepchain.v1 import step_pb2

import native
from bench._echo import (
    JPEG_QUALITY,
    HttpClient,
    grpc_echo_command,
    http_commands,
    jpeg_decode,
    jpeg_encode,
    tcp_echo_client,
    tcp_echo_command,
)
from bench._harness import (
    RESULTS_DIR,
    bench_image,
    grpc_caller,
    interleaved,
    processes,
    raw_request_bytes,
    raw_stub,
    save_results,
    step_commands,
    throughput_rounds,
    wait_grpc,
    wait_tcp,
)
from stepsvc.cli_args import image_size
from stepsvc.frames import wire
from stepsvc.frames.shm import FrameStore
from stepsvc.ports import free_port

Kernels = tuple[tuple[str, dict[str, Any]], ...]
#: "light": ~15 ms of kernels per 1080p frame, transport dominates; "heavy": Richardson-Lucy
#: deblur makes the kernels dominate, as in a real restoration pipeline.
CHAINS: dict[str, Kernels] = {
    "light": (("gaussian_blur", {"sigma": 2.0}), ("sharpen", {"amount": 1.0}), ("edges", {})),
    "heavy": (("deblur", {"sigma": 1.5, "iterations": 10}), ("sharpen", {"amount": 1.0}),
              ("edges", {})),
}











def _proc_counters(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor + major page faults) of process `pid` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[7]) + int(fields[9])


def _self_counters() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt + r.ru_majflt


def cost_per_request(fn: Callable[[], Any], pids: Sequence[int], n: int) -> dict[str, float]:
    """CPU ms and page faults per call of `fn`, this process plus `pids`, over `n` calls."""
    fn()
    before = [_self_counters(), *(_proc_counters(p) for p in pids)]
    for _ in range(n):
        fn()
    after = [_self_counters(), *(_proc_counters(p) for p in pids)]
    cpu = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    faults = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    server_faults = sum(a[1] - b[1] for a, b in zip(after[1:], before[1:], strict=True))
    return {"cpu_ms_per_request": round(1000.0 * cpu / n, 2),
            "page_faults_per_frame": round(faults / n, 1),
            "server_page_faults_per_frame": round(server_faults / n, 1)}




def shm_caller(address: str, shape: tuple[int, int, int]) -> tuple[Callable[[], Any], FrameStore]:
    """A caller on the same host: per call a frame segment and a reply segment (as a step
    makes them), only handles over gRPC, the result read in place from the reply segment."""
    frames = FrameStore(shm_dir(), "bench", max_bytes=1 << 30)
    stub = raw_stub(address)
    h, w, c = shape

    def call() -> np.ndarray:
        frame, reply = frames.create(shape), frames.create(shape)
        try:
            msg = step_pb2.ProcessRequest()
            msg.image.width, msg.image.height, msg.image.channels = w, h, c
            msg.image.shm.CopyFrom(frame.handle())
            msg.reply.CopyFrom(reply.handle())
            raw = stub(msg.SerializeToString(), timeout=120)
            image = wire.response_image(raw)
            assert image.shm.name == reply.name, "the step did not answer in the reply segment"
            return reply.pixels
        finally:
            frame.close()
            reply.close()
    return call, frames


def shm_dir() -> str:
    return os.environ.get("STEPCHAIN_SHM_DIR") or "/dev/shm"


def run_hop(img: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """(a) for one image size: every hop path up at once, timed in turns."""
    threads = args.threads
    pixels = img.tobytes()
    payload = raw_request_bytes(img)
    small_payload = raw_request_bytes(img[:1, :40])  # ~150 bytes, about a handle request
    tcp_port, echo_port = free_port(), free_port()
    floors = [tcp_echo_command(tcp_port), grpc_echo_command(echo_port)]
    with tempfile.TemporaryDirectory() as tmp:
        tuned_dir, untuned_dir = Path(tmp) / "tuned", Path(tmp) / "untuned"
        tuned_dir.mkdir()
        untuned_dir.mkdir()
        cmds, addrs = step_commands(tuned_dir, [("identity", {})], threads)
        ucmds, uaddrs = step_commands(untuned_dir, [("identity", {})], threads, "--no-shm")
        hcmds, hports = http_commands([("identity", {})], threads)
        with processes(floors + cmds + hcmds, threads) as procs, \
                processes(ucmds, threads, {"STEPCHAIN_MALLOC_TUNING": "off"}) as uprocs:
            wait_tcp(tcp_port)
            wait_grpc(addrs[0])
            wait_grpc(uaddrs[0])
            wait_tcp(hports[0])
            wait_tcp(echo_port)
            echo = tcp_echo_client(tcp_port)
            http_client = HttpClient(hports[0])
            jpeg_input = jpeg_encode(img)
            shm_call, frames = shm_caller(addrs[0], img.shape)
            paths: dict[str, Callable[[], Any]] = {
                "direct_identity": lambda: native.identity(img, threads=threads),
                "tcp_echo_floor": lambda: echo(pixels),
                "grpc_echo_floor": grpc_caller(f"127.0.0.1:{echo_port}", payload),
                # what a handle-sized message costs: the floor of a shared-memory hop
                "grpc_echo_small_floor": grpc_caller(f"127.0.0.1:{echo_port}", small_payload),
                "grpc_hop": grpc_caller(addrs[0], payload),
                "shm_hop": shm_call,
                "grpc_hop_malloc_defaults": grpc_caller(uaddrs[0], payload),
                "http_jpeg_hop": lambda: jpeg_decode(http_client.post(jpeg_input)),
            }
            np.testing.assert_array_equal(wire.parse_response(paths["grpc_hop"]()).image.data,
                                          pixels)
            timing = interleaved(paths, args.requests)
            pids = {"direct_identity": [], "tcp_echo_floor": [procs[0].pid],
                    "grpc_echo_floor": [procs[1].pid], "grpc_echo_small_floor": [procs[1].pid],
                    "grpc_hop": [procs[2].pid],
                    "shm_hop": [procs[2].pid], "grpc_hop_malloc_defaults": [uprocs[0].pid],
                    "http_jpeg_hop": [procs[3].pid]}
            costs = {name: cost_per_request(fn, pids[name], max(5, args.requests // 3))
                     for name, fn in paths.items()}
            frames.close()
    direct = timing["direct_identity"]
    out: dict[str, Any] = {}
    for name, value in timing.items():
        base = 0.0 if name in ("direct_identity", "tcp_echo_floor", "grpc_echo_floor",
                               "grpc_echo_small_floor") else 1.0
        out[name] = {**value, **costs[name],
                     "overhead_ms": round(value["median_ms"] - base * direct["median_ms"], 3)}
    return out


def run_chain(kernels: Kernels, img: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """(b) for one chain: in-process kernels, step processes with shared memory (the local
    backend's setting), the same over TCP only, and HTTP+JPEG processes, in alternating turns."""
    threads = args.threads
    payload = raw_request_bytes(img)
    jpeg_input = jpeg_encode(img)

    def in_process() -> np.ndarray:
        x = img
        for name, params in kernels:
            x = native.run(name, x, threads=threads, **params)
        return x

    with tempfile.TemporaryDirectory() as tmp:
        shm_tmp, tcp_tmp = Path(tmp) / "shm", Path(tmp) / "tcp"
        shm_tmp.mkdir()
        tcp_tmp.mkdir()
        cmds, addrs = step_commands(shm_tmp, kernels, threads)
        tcmds, taddrs = step_commands(tcp_tmp, kernels, threads, "--no-shm")
        hcmds, hports = http_commands(kernels, threads)
        with processes(cmds + tcmds + hcmds, threads) as procs:
            for a in addrs + taddrs:
                wait_grpc(a)
            for p in hports:
                wait_tcp(p)
            shm_chain = grpc_caller(addrs[0], payload)
            tcp_chain = grpc_caller(taddrs[0], payload)
            expected = in_process()
            for chain in (shm_chain, tcp_chain):  # same work, same result
                got = wire.parse_response(chain()).image.data
                np.testing.assert_array_equal(np.frombuffer(got, np.uint8), expected.ravel())
            http_client = HttpClient(hports[0])

            def http_chain() -> np.ndarray:
                return jpeg_decode(http_client.post(jpeg_input))

            paths = {"in_process": in_process, "grpc_chain_shm": shm_chain,
                     "grpc_chain_tcp": tcp_chain, "http_jpeg_chain": http_chain}
            rates = throughput_rounds(paths, args.clients, args.chain_requests, args.rounds)
            latency = interleaved(paths, max(5, args.requests // 3))
            n = len(kernels)
            pids = {"in_process": [], "grpc_chain_shm": [p.pid for p in procs[:n]],
                    "grpc_chain_tcp": [p.pid for p in procs[n:2 * n]],
                    "http_jpeg_chain": [p.pid for p in procs[2 * n:]]}
            costs = {k: cost_per_request(fn, pids[k], max(5, args.requests // 5))
                     for k, fn in paths.items()}
    return {"kernels": [f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})"
                        for name, params in kernels],
            **{k: {**rates[k], **costs[k], "latency": latency[k]} for k in paths}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "threads_per_kernel": args.threads, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "grpc": grpc.__version__, "load_average_before": list(os.getloadavg()),
        "shared_machine": "2 vCPUs shared by 8 engineers' builds and tests: ratios measured "
                          "side by side, absolute times swing 2-3x",
        "sizes": {},
    }
    for width, height in args.sizes:
        img, source = bench_image(width, height)
        size: dict[str, Any] = {"image": f"{width}x{height}x3", "image_source": source,
                                "bytes": int(img.nbytes), "jpeg_bytes": len(jpeg_encode(img)),
                                "hop": run_hop(img, args)}
        if (width, height) in args.chain_sizes:
            size["chains"] = {name: run_chain(CHAINS[name], img, args) for name in args.chains}
        out["sizes"][f"{width}x{height}"] = size
    out["load_average_after"] = list(os.getloadavg())
    out["summary"] = summary(out)
    return out


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's figures: measured value, target, met."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: float, op: str, target: float) -> None:
        ok = value <= target if op == "<=" else value >= target
        rows.append({"figure": figure, "measured": round(value, 3), "target": f"{op} {target}",
                     "met": ok})

    for key, size in res["sizes"].items():
        hop = size["hop"]
        add(f"{key}: gRPC hop / pure-bytes gRPC echo (medians)",
            hop["grpc_hop"]["median_ms"] / hop["grpc_echo_floor"]["median_ms"], "<=", 1.3)
        add(f"{key}: shared-memory hop, round trip ms (median)", hop["shm_hop"]["median_ms"],
            "<=", 1.0)
        for name, chain in size.get("chains", {}).items():
            target = 0.6 if name == "light" else 0.9
            add(f"{key}: {name} chain (local backend: shm) / in-process throughput",
                chain["grpc_chain_shm"]["rps"] / chain["in_process"]["rps"], ">=", target)
            add(f"{key}: {name} gRPC chain over TCP / HTTP+JPEG chain throughput",
                chain["grpc_chain_tcp"]["rps"] / chain["http_jpeg_chain"]["rps"], ">=", 2.0)
    return rows


HOP_LABELS = (
    ("direct_identity", "direct `native.identity` in this process"),
    ("tcp_echo_floor", "floor: raw TCP echo of the pixels (process)"),
    ("grpc_echo_floor", "floor: pure-bytes gRPC echo (process)"),
    ("grpc_echo_small_floor", "floor: gRPC echo of a handle-sized (~150 B) message"),
    ("grpc_hop", "gRPC hop, `step serve` identity (zero-copy codec)"),
    ("shm_hop", "shared-memory hop (frame + reply segments, handles over gRPC)"),
    ("grpc_hop_malloc_defaults", "gRPC hop, glibc allocator defaults"),
    ("http_jpeg_hop", "HTTP POST + JPEG decode/re-encode (process)"),
)
CHAIN_LABELS = (
    ("in_process", "same 3 kernels in one process"),
    ("grpc_chain_shm", "3 step processes, shared memory (local backend)"),
    ("grpc_chain_tcp", "3 step processes, gRPC over TCP (--no-shm)"),
    ("http_jpeg_chain", "3 HTTP processes, JPEG every hop"),
)


def table(res: dict[str, Any]) -> str:
    """The Markdown written to chain.md (and printed)."""
    lines = [
        f"# Chain benchmark ({res['threads_per_kernel']} thread(s) per kernel, "
        f"{res['cpu_count']} CPUs, load average {res['load_average_before'][0]:.2f} before, "
        f"{res['load_average_after'][0]:.2f} after)",
        "",
        f"Machine: {res['machine']}, Python {res['python']}, grpcio {res['grpc']}. "
        f"{res['shared_machine']}.",
    ]
    for key, size in res["sizes"].items():
        lines += [
            "",
            f"## {key} RGB '{size['image_source']}' ({size['bytes'] / 1e6:.1f} MB raw, JPEG "
            f"q{JPEG_QUALITY} {size['jpeg_bytes'] // 1024} KiB)",
            "",
            "### (a) One hop, round trip (paths timed in turns)",
            "",
            "| path | median ms | p90 ms | min ms | overhead ms | CPU ms/req | page faults/frame "
            "(server) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, label in HOP_LABELS:
            r = size["hop"][name]
            lines.append(f"| {label} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['min_ms']:.2f} | {r['overhead_ms']:.2f} | "
                         f"{r['cpu_ms_per_request']:.2f} | {r['page_faults_per_frame']:.0f} "
                         f"({r['server_page_faults_per_frame']:.0f}) |")
        for name, chain in size.get("chains", {}).items():
            first = chain["in_process"]
            lines += [
                "",
                f"### (b) {name} chain ({' -> '.join(chain['kernels'])}), {first['clients']} "
                f"clients, {first['requests']} requests per path in alternating turns",
                "",
                "| path | throughput req/s | single-request median ms | CPU ms/req | "
                "page faults/req |",
                "|---|---:|---:|---:|---:|",
            ]
            for path, label in CHAIN_LABELS:
                r = chain[path]
                lines.append(f"| {label} | {r['rps']:.2f} | {r['latency']['median_ms']:.1f} | "
                             f"{r['cpu_ms_per_request']:.1f} | {r['page_faults_per_frame']:.0f} |")
    lines += ["", "## Figures", "", "| figure | measured | target | met |", "|---|---:|---:|---|"]
    for row in res["summary"]:
        lines.append(f"| {row['figure']} | {row['measured']:.3f} | {row['target']} | "
                     f"{'yes' if row['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench chain",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=image_size,
                        default=[(1920, 1080), (3840, 2160)],
                        help="image sizes for the hop figures (default 1920x1080 3840x2160)")
    parser.add_argument("--chain-sizes", nargs="*", type=image_size, default=[(1920, 1080)],
                        help="sizes (of --sizes) that also run the chains (default 1920x1080)")
    parser.add_argument("--requests", type=int, default=30, help="samples per latency figure")
    parser.add_argument("--chain-requests", type=int, default=48,
                        help="requests per throughput figure")
    parser.add_argument("--chains", nargs="*", choices=sorted(CHAINS), default=["light", "heavy"],
                        help="which 3-step chains to measure (default both)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="turns the throughput paths take (evens out load changes)")
    parser.add_argument("--clients", type=int, default=max(2, 2 * (os.cpu_count() or 1)),
                        help="concurrent callers for throughput (default 2 x CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per kernel call")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    res = run(args)
    save_results(args.out, "chain", res, table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what a gRPC hop costs, and a step chain against one process and HTTP+JPEG hops.

Side by side in one run, on one 1920x1080 RGB image (``--width/--height`` to change):

(a) hop overhead: round trip through an ``identity`` step minus a direct in-process
    ``native.identity`` call — for a step server inside this process (loopback) and for a
    separate ``stepchain step serve`` process; the same for an HTTP step that receives a JPEG,
    decodes, runs identity, re-encodes and answers a JPEG (what Flask-style pipelines do).
(b) throughput at saturation (``--clients`` concurrent callers) of a 3-step chain of step
    processes (gaussian_blur -> sharpen -> edges, raw pixels between steps) against the same
    three kernels called one after another in this process.
(c) the same 3-step chain as HTTP servers that POST the image re-encoded to JPEG at every hop.

Prints a table and writes ``bench/results/chain.json`` and ``chain.md``. Targets: hop
overhead <= 3 ms at 1080p; chain >= 0.85 of in-process throughput; >= 10x less per-hop overhead
than JPEG/HTTP. The numbers depend on the machine (cores, load): they are measurements, not
assertions.

Usage: ``stepchain bench chain [--requests 30] [--clients 4] [--threads 1]``
(or ``python -m bench.chain``).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from stepchain.v1 import step_pb2, step_pb2_grpc

import native
from bench import RESULTS_DIR
from stepsvc import codec
from stepsvc.config import parse_config
from stepsvc.forward import channel_options
from stepsvc.ports import free_port
from stepsvc.server import ServerSettings, build_server

RESULTS = RESULTS_DIR
Kernels = tuple[tuple[str, dict[str, Any]], ...]
#: "light": ~15 ms of kernels per 1080p frame, transport dominates; "heavy": Richardson-Lucy
#: deblur makes the kernels dominate, as in a real restoration pipeline.
CHAINS: dict[str, Kernels] = {
    "light": (("gaussian_blur", {"sigma": 2.0}), ("sharpen", {"amount": 1.0}), ("edges", {})),
    "heavy": (("deblur", {"sigma": 1.5, "iterations": 10}), ("sharpen", {"amount": 1.0}),
              ("edges", {})),
}
JPEG_QUALITY = 90
MAX_MESSAGE = 64 * 1024 * 1024


# -- measuring --------------------------------------------------------------------------------

def stats(samples: list[float]) -> dict[str, float]:
    """Median / p90 / min of millisecond samples."""
    samples = sorted(samples)
    return {"median_ms": round(statistics.median(samples), 3),
            "p90_ms": round(samples[min(len(samples) - 1, int(0.9 * len(samples)))], 3),
            "min_ms": round(samples[0], 3), "n": len(samples)}


def interleaved(paths: dict[str, Callable[[], Any]], n: int, warmup: int = 3
                ) -> dict[str, dict[str, float]]:
    """Times every path `n` times, taking turns, so load changes on a shared machine hit all
    paths alike; returns stats() per path."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: stats(values) for name, values in samples.items()}


def throughput_rounds(paths: dict[str, Callable[[], Any]], clients: int, requests: int,
                      rounds: int) -> dict[str, dict[str, float]]:
    """Requests per second per path with `clients` concurrent callers, `requests` calls in all,
    split into `rounds` turns that alternate between the paths."""
    per_round = max(clients, requests // rounds)
    done = dict.fromkeys(paths, 0)
    elapsed = dict.fromkeys(paths, 0.0)
    with ThreadPoolExecutor(clients) as pool:
        for fn in paths.values():
            list(pool.map(lambda _, f=fn: f(), range(clients)))  # warm every client's path
        for _ in range(rounds):
            for name, fn in paths.items():
                start = time.perf_counter()
                list(pool.map(lambda _, f=fn: f(), range(per_round)))
                elapsed[name] += time.perf_counter() - start
                done[name] += per_round
    return {name: {"rps": round(done[name] / elapsed[name], 3),
                   "seconds": round(elapsed[name], 3), "requests": done[name],
                   "clients": clients} for name in paths}


# -- processes ----------------------------------------------------------------------------------

def child_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OMP_NUM_THREADS"] = str(threads)
    env["STEPCHAIN_LOG_LEVEL"] = "WARNING"
    return env


@contextmanager
def processes(commands: Sequence[Sequence[str]], threads: int) -> Iterator[None]:
    procs = [subprocess.Popen(list(cmd), env=child_env(threads),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for cmd in commands]
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_grpc(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"step at {address} did not become SERVING in {timeout} s")


def wait_tcp(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"HTTP step on port {port} did not start in {timeout} s")


def step_commands(tmp: Path, kernels: Sequence[tuple[str, dict[str, Any]]],
                  threads: int) -> tuple[list[list[str]], list[str]]:
    """`stepchain step serve` command lines for a linear chain, and their addresses."""
    ports = [free_port() for _ in kernels]
    steps = [{"id": i + 1, "type": name, "params": {**params, "threads": threads},
              **({"next_step": i + 2} if i + 1 < len(kernels) else {})}
             for i, (name, params) in enumerate(kernels)]
    discovery = tmp / "discovery.json"
    discovery.write_text(json.dumps({str(i + 1): f"127.0.0.1:{p}" for i, p in enumerate(ports)}))
    commands = []
    for i, port in enumerate(ports):
        cfg = tmp / f"step-{i + 1}.json"
        cfg.write_text(json.dumps({"pipeline_id": "bench", "step_id": i + 1, "steps": steps}))
        commands.append([sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config",
                         str(cfg), "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
                         "0", "--discovery", f"static:{discovery}"])
    return commands, [f"127.0.0.1:{p}" for p in ports]


def http_commands(kernels: Sequence[tuple[str, dict[str, Any]]],
                  threads: int) -> tuple[list[list[str]], list[int]]:
    """HTTP+JPEG step command lines (this script in --http-step mode) for a linear chain."""
    ports = [free_port() for _ in kernels]
    commands = []
    for i, (name, params) in enumerate(kernels):
        nxt = f"http://127.0.0.1:{ports[i + 1]}/" if i + 1 < len(kernels) else ""
        commands.append([sys.executable, "-m", "bench.chain", "--http-step", name,
                         "--http-port", str(ports[i]), "--http-params",
                         json.dumps({**params, "threads": threads}), "--http-next", nxt])
    return commands, ports


# -- the HTTP + JPEG baseline step --------------------------------------------------------------

def jpeg_encode(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    src = img[:, :, 0] if img.shape[2] == 1 else img
    PILImage.fromarray(src).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    arr = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))
    return arr


def serve_http_step(kernel: str, port: int, params: dict[str, Any], next_url: str) -> None:
    """The common Flask-style step: JPEG in, decode, kernel, JPEG out, POST to the next step."""
    local = threading.local()

    def post_next(body: bytes) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            host, _, _path = next_url.removeprefix("http://").partition("/")
            hostname, _, p = host.partition(":")
            conn = local.conn = http.client.HTTPConnection(hostname, int(p), timeout=120)
        conn.request("POST", "/", body=body, headers={"Content-Type": "image/jpeg"})
        reply = conn.getresponse()
        return reply.read()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            img = jpeg_decode(body)
            out = native.run(kernel, img, **params)
            data = jpeg_encode(out)
            if next_url:
                data = post_next(data)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


class HttpClient:
    """One keep-alive HTTP connection per calling thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, body: bytes) -> bytes:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                timeout=120)
        conn.request("POST", "/", body=body, headers={"Content-Type": "image/jpeg"})
        return conn.getresponse().read()


# -- the loopback floor -------------------------------------------------------------------------

@contextmanager
def tcp_echo() -> Iterator[Callable[[bytes], bytes]]:
    """A plain-socket echo server in a thread: what moving the bytes both ways costs at least."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while True:
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                size = int.from_bytes(head, "big")
                buf = bytearray(size)
                view, got = memoryview(buf), 0
                while got < size:
                    got += conn.recv_into(view[got:])
                conn.sendall(buf)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = socket.create_connection(listener.getsockname())

    def echo(data: bytes) -> bytes:
        client.sendall(len(data).to_bytes(8, "big") + data)
        buf = bytearray(len(data))
        view, got = memoryview(buf), 0
        while got < len(data):
            got += client.recv_into(view[got:])
        return bytes(buf)

    try:
        yield echo
    finally:
        client.close()
        listener.close()
        thread.join(5)


# -- the benchmark ------------------------------------------------------------------------------

def grpc_caller(address: str, request: step_pb2.ProcessRequest) -> Callable[[], np.ndarray]:
    channel = grpc.insecure_channel(address, options=channel_options(MAX_MESSAGE))
    stub = step_pb2_grpc.StepServiceStub(channel)

    def call() -> np.ndarray:
        return codec.decode_image(stub.Process(request, timeout=120).image)
    return call


def bench_image(width: int, height: int) -> tuple[np.ndarray, str]:
    """A real photograph (scikit-image's astronaut) resized to width x height, or noise."""
    try:
        from skimage import data
        photo = np.ascontiguousarray(data.astronaut())
        return native.resize(photo, width=width, height=height, method="bicubic"), "astronaut"
    except ImportError:  # scikit-image is a test extra; noise is the worst case for JPEG
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "noise"


def run_chain(kernels: Kernels, img: np.ndarray, raw_request: step_pb2.ProcessRequest,
              jpeg_input: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """(b) and (c) for one chain: in-process kernels, gRPC step processes, HTTP+JPEG processes,
    all started at once and measured in alternating turns."""
    threads = args.threads

    def in_process() -> np.ndarray:
        x = img
        for name, params in kernels:
            x = native.run(name, x, threads=threads, **params)
        return x

    with tempfile.TemporaryDirectory() as tmp:
        cmds, addrs = step_commands(Path(tmp), kernels, threads)
        hcmds, hports = http_commands(kernels, threads)
        with processes(cmds + hcmds, threads):
            for a in addrs:
                wait_grpc(a)
            for p in hports:
                wait_tcp(p)
            grpc_chain = grpc_caller(addrs[0], raw_request)
            np.testing.assert_array_equal(grpc_chain(), in_process())  # same work, same result
            http_client = HttpClient(hports[0])

            def http_chain() -> np.ndarray:
                return jpeg_decode(http_client.post(jpeg_input))

            paths = {"in_process": in_process, "grpc_chain": grpc_chain,
                     "http_jpeg_chain": http_chain}
            rates = throughput_rounds(paths, args.clients, args.chain_requests, args.rounds)
            latency = interleaved(paths, max(5, args.requests // 3))
    return {"kernels": [f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})"
                        for name, params in kernels],
            **{k: {**rates[k], "latency": latency[k]} for k in paths}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    img, source = bench_image(args.width, args.height)
    threads = args.threads
    raw_request = step_pb2.ProcessRequest(image=codec.raw_image(img))
    jpeg_input = jpeg_encode(img)
    n = args.requests
    out: dict[str, Any] = {
        "image": f"{args.width}x{args.height}x3", "image_source": source,
        "bytes": int(img.nbytes), "jpeg_bytes": len(jpeg_input),
        "threads_per_kernel": threads, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "grpc": grpc.__version__, "load_average_before": list(os.getloadavg()),
    }

    # (a) hop overhead: every path up at once, timed in turns --------------------------------
    pixels = img.tobytes()
    identity_cfg = parse_config(json.dumps({"pipeline_id": "bench", "step_id": 1, "steps": [
        {"id": 1, "type": "identity", "params": {"threads": threads}}]}))

    class _NoSteps:
        def active(self) -> dict[int, str]:
            return {}

    server = build_server(identity_cfg, _NoSteps(), ServerSettings(host="127.0.0.1", port=0))
    server.start()
    with tempfile.TemporaryDirectory() as tmp, tcp_echo() as echo:
        cmds, addrs = step_commands(Path(tmp), [("identity", {})], threads)
        hcmds, hports = http_commands([("identity", {})], threads)
        with processes(cmds + hcmds, threads):
            wait_grpc(addrs[0])
            wait_tcp(hports[0])
            http_client = HttpClient(hports[0])
            hop = interleaved({
                "direct_identity": lambda: native.identity(img, threads=threads),
                "tcp_echo_floor": lambda: echo(pixels),
                "grpc_in_process": grpc_caller(server.address, raw_request),
                "grpc_separate_process": grpc_caller(addrs[0], raw_request),
                "http_jpeg_separate_process": lambda: jpeg_decode(http_client.post(jpeg_input)),
            }, n)
    server.stop(0)
    direct = hop["direct_identity"]
    overhead: dict[str, Any] = {"direct_identity": direct}
    for key, value in hop.items():
        if key != "direct_identity":
            base = 0.0 if key == "tcp_echo_floor" else 1.0
            overhead[key] = {
                **value,
                "overhead_ms": round(value["median_ms"] - base * direct["median_ms"], 3),
                "overhead_min_ms": round(value["min_ms"] - base * direct["min_ms"], 3)}
    out["hop_overhead"] = overhead

    # (b) chain vs one process, (c) HTTP+JPEG chain ------------------------------------------
    out["chains"] = {name: run_chain(CHAINS[name], img, raw_request, jpeg_input, args)
                     for name in args.chains}
    g_over = overhead["grpc_separate_process"]["overhead_ms"]
    h_over = overhead["http_jpeg_separate_process"]["overhead_ms"]
    out["summary"] = {
        "hop_overhead_ms_in_process": overhead["grpc_in_process"]["overhead_ms"],
        "hop_overhead_ms_separate_process": g_over,
        "http_jpeg_hop_overhead_ms": h_over,
        "http_over_grpc_hop_overhead": round(h_over / g_over, 2) if g_over > 0 else None,
        "http_over_grpc_hop_overhead_min": round(
            overhead["http_jpeg_separate_process"]["overhead_min_ms"]
            / overhead["grpc_separate_process"]["overhead_min_ms"], 2),
        **{f"chain_vs_in_process_throughput_{name}": round(
            c["grpc_chain"]["rps"] / c["in_process"]["rps"], 3) for name, c in out["chains"].items()},
        **{f"grpc_chain_vs_http_chain_throughput_{name}": round(
            c["grpc_chain"]["rps"] / c["http_jpeg_chain"]["rps"], 3)
           for name, c in out["chains"].items()},
        "targets": {"hop_overhead_ms_max": 3.0, "chain_ratio_min": 0.85,
                    "http_over_grpc_min": 10.0},
    }
    out["load_average_after"] = list(os.getloadavg())
    return out


def table(res: dict[str, Any]) -> str:
    """The Markdown table printed and written to chain.md."""
    h = res["hop_overhead"]
    s = res["summary"]
    lines = [
        f"# Chain benchmark ({res['image']} RGB '{res['image_source']}', JPEG q{JPEG_QUALITY} "
        f"{res['jpeg_bytes'] // 1024} KiB, {res['threads_per_kernel']} thread(s) per kernel, "
        f"{res['cpu_count']} CPUs, load {res['load_average_before'][0]:.1f})",
        "",
        "## (a) Hop overhead: identity step round trip minus direct `native.identity` "
        "(paths timed in turns)",
        "",
        "| path | median ms | p90 ms | min ms | overhead ms (median) | overhead ms (min) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| direct `native.identity` | {h['direct_identity']['median_ms']:.2f} | "
        f"{h['direct_identity']['p90_ms']:.2f} | {h['direct_identity']['min_ms']:.2f} | - | - |",
    ]
    for key, label in (("tcp_echo_floor", "floor: plain TCP echo of the raw pixels, no gRPC"),
                       ("grpc_in_process", "gRPC, step in this process (loopback)"),
                       ("grpc_separate_process", "gRPC, `stepchain step serve` process"),
                       ("http_jpeg_separate_process", "HTTP POST + JPEG re-encode, process")):
        r = h[key]
        lines.append(f"| {label} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['min_ms']:.2f} "
                     f"| {r['overhead_ms']:.2f} | {r['overhead_min_ms']:.2f} |")
    for name, c in res["chains"].items():
        lines += [
            "",
            f"## (b, c) {name} 3-step chain ({' -> '.join(c['kernels'])}), "
            f"{c['in_process']['clients']} concurrent clients, {c['in_process']['requests']} "
            "requests per path in alternating turns",
            "",
            "| path | throughput req/s | single-request latency median ms |",
            "|---|---:|---:|",
        ]
        for key, label in (("in_process", "same 3 kernels in one process"),
                           ("grpc_chain", "gRPC chain of 3 step processes (raw pixels)"),
                           ("http_jpeg_chain", "HTTP chain of 3 processes (JPEG every hop)")):
            r = c[key]
            lines.append(f"| {label} | {r['rps']:.2f} | {r['latency']['median_ms']:.1f} |")
    lines += [
        "",
        "| figure | measured | target |",
        "|---|---:|---:|",
        f"| hop overhead, separate process (ms) | {s['hop_overhead_ms_separate_process']:.2f} | <= 3 |",
        f"| hop overhead, in-process server (ms) | {s['hop_overhead_ms_in_process']:.2f} | <= 3 |",
        *[f"| {name} chain / in-process throughput | "
          f"{s[f'chain_vs_in_process_throughput_{name}']:.2f} | >= 0.85 |" for name in res["chains"]],
        f"| JPEG/HTTP hop overhead / gRPC hop overhead (medians) | {s['http_over_grpc_hop_overhead']} | >= 10 |",
        f"| JPEG/HTTP hop overhead / gRPC hop overhead (minimums) | {s['http_over_grpc_hop_overhead_min']} | >= 10 |",
        *[f"| {name} gRPC chain / HTTP+JPEG chain throughput | "
          f"{s[f'grpc_chain_vs_http_chain_throughput_{name}']:.2f} | - |" for name in res["chains"]],
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--requests", type=int, default=30, help="samples per latency figure")
    parser.add_argument("--chain-requests", type=int, default=48,
                        help="requests per throughput figure")
    parser.add_argument("--chains", nargs="+", choices=sorted(CHAINS), default=["light", "heavy"],
                        help="which 3-step chains to measure (default both)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="turns the throughput paths take (evens out load changes)")
    parser.add_argument("--clients", type=int, default=max(2, 2 * (os.cpu_count() or 1)),
                        help="concurrent callers for throughput (default 2 x CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per kernel call")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    # internal: run one HTTP+JPEG baseline step
    parser.add_argument("--http-step", help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--http-next", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.http_step:
        serve_http_step(args.http_step, args.http_port, json.loads(args.http_params),
                        args.http_next)
        return 0
    res = run(args)
    text = table(res)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chain.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "chain.md").write_text(text)
    print(f"wrote {args.out / 'chain.json'} and {args.out / 'chain.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
from stepchain.v1 import step_pb2

import native
from bench import RESULTS_DIR
from stepsvc.frames import codec, wire
from stepsvc.frames.shm import FrameStore
from stepsvc.ports import free_port
from stepsvc.protocol import PROCESS_METHOD
from stepsvc.routing.channels import channel_options
from topology.local.supervisor import stop_all

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
def processes(commands: Sequence[Sequence[str]], threads: int,
              env: dict[str, str] | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(list(cmd), env={**child_env(threads), **(env or {})},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in commands]
    try:
        yield procs
    finally:
        stop_all(procs, grace_s=13.0)  # SIGTERM all, SIGKILL what is left after 15 s


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
                  threads: int, *extra: str) -> tuple[list[list[str]], list[str]]:
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
                         "0", "--discovery", f"static:{discovery}", *extra])
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


# -- the floors: raw TCP echo and pure-bytes gRPC echo, each its own process --------------------

def serve_tcp_echo(port: int) -> None:
    """Echoes length-prefixed messages: what moving the bytes both ways costs at least."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def serve(conn: socket.socket) -> None:
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

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def tcp_echo_client(port: int) -> Callable[[bytes], bytes]:
    client = socket.create_connection(("127.0.0.1", port))

    def echo(data: bytes) -> bytes:
        client.sendall(len(data).to_bytes(8, "big"))
        client.sendall(data)
        buf = bytearray(len(data))
        view, got = memoryview(buf), 0
        while got < len(data):
            got += client.recv_into(view[got:])
        return bytes(buf)
    return echo


def serve_grpc_echo(port: int) -> None:
    """StepService/Process that answers the request's own bytes (no parsing, no kernel)."""
    from concurrent import futures

    from stepsvc.routing.channels import transport_options

    codec.keep_large_buffers()
    server = grpc.server(futures.ThreadPoolExecutor(8),
                         options=transport_options(MAX_MESSAGE))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    service, _, method = PROCESS_METHOD.lstrip("/").rpartition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def raw_stub(address: str) -> grpc.UnaryUnaryMultiCallable:
    """Process with no serializers: bytes in, bytes out (what the steps' forwarder uses)."""
    channel = grpc.insecure_channel(address, options=channel_options(MAX_MESSAGE))
    return channel.unary_unary(PROCESS_METHOD, None, None)


# -- CPU and page faults ------------------------------------------------------------------------

def _proc_counters(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor + major page faults) of process `pid` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[7]) + int(fields[9])


def _self_counters() -> tuple[float, int]:
    import resource

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


# -- the benchmark ------------------------------------------------------------------------------

def bench_image(width: int, height: int) -> tuple[np.ndarray, str]:
    """A real photograph (scikit-image's astronaut) resized to width x height, or noise."""
    try:
        from skimage import data
        photo = np.ascontiguousarray(data.astronaut())
        return native.resize(photo, width=width, height=height, method="bicubic"), "astronaut"
    except ImportError:  # scikit-image is a test extra; noise is the worst case for JPEG
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "noise"


def raw_request_bytes(img: np.ndarray) -> bytes:
    return step_pb2.ProcessRequest(image=codec.raw_image(img)).SerializeToString()


def grpc_caller(address: str, payload: bytes) -> Callable[[], bytes]:
    """A caller sending pre-serialized bytes; the answer's image header is read, no copy."""
    stub = raw_stub(address)

    def call() -> bytes:
        raw: bytes = stub(payload, timeout=120)
        wire.response_image(raw)
        return raw
    return call


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
    floors = [[sys.executable, "-m", "bench.chain", "--tcp-echo", str(tcp_port)],
              [sys.executable, "-m", "bench.chain", "--grpc-echo", str(echo_port)]]
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


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


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
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[(1920, 1080), (3840, 2160)],
                        help="image sizes for the hop figures (default 1920x1080 3840x2160)")
    parser.add_argument("--chain-sizes", nargs="*", type=parse_size, default=[(1920, 1080)],
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
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    # internal: the helper processes this benchmark starts
    parser.add_argument("--http-step", help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--http-next", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tcp-echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.http_step:
        serve_http_step(args.http_step, args.http_port, json.loads(args.http_params),
                        args.http_next)
        return 0
    if args.tcp_echo:
        serve_tcp_echo(args.tcp_echo)
        return 0
    if args.grpc_echo:
        serve_grpc_echo(args.grpc_echo)
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

"""What the benchmarks share: results on disk, timing in turns, step processes, requests.

- results: :data:`RESULTS_DIR`, :func:`save_results` / :func:`write_results` (JSON + Markdown,
  with the machine's load);
- measuring: :func:`stats`, :func:`percentile`, :func:`interleaved` (paths take turns, so load
  changes on a shared machine hit them alike), :func:`throughput_rounds`;
- processes: ``stepchain step serve`` chains on loopback (:func:`step_commands`,
  :func:`processes`, :func:`wait_grpc`);
- requests: a photo or noise of a size (:func:`bench_image`, :func:`frame`), raw gRPC callers.

Not a benchmark (the leading underscore keeps it out of ``stepchain bench``).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepchain.v1 import step_pb2

import native
from stepsvc.frames import codec, wire
from stepsvc.limits import DEFAULT_MAX_MESSAGE_BYTES
from stepsvc.ports import free_port
from stepsvc.protocol import PROCESS_METHOD
from stepsvc.routing.channels import channel_options
from topology.local.supervisor import stop_all

#: Default output folder: ``bench/results`` beside this package (the checkout's folder in the
#: editable install ``make venv`` makes).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def save_results(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """Prints `markdown` and writes it as ``<name>.md`` beside ``<name>.json`` (`result`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


def write_results(out: Path, name: str, result: dict[str, Any], title: str, command: str,
                  body: str) -> None:
    """Prints `body` with the load line and writes ``<name>.json`` (`result`) and ``<name>.md``.

    `result` carries ``load_average_before``; ``load_average_after`` is added here. Every
    result says the machine was shared, since these figures were taken beside other work."""
    result.setdefault("machine", os.uname().machine)
    result.setdefault("cpus", os.cpu_count())
    result["shared_machine"] = True
    result["load_average_after"] = list(os.getloadavg())
    load = (f"load average before {result['load_average_before']}, after "
            f"{result['load_average_after']} ({os.cpu_count()} CPUs, shared machine)")
    print(load)
    save_results(out, name, result, f"# {title}\n\n`{command}`; {load}.\n\n{body}\n")


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


def raw_stub(address: str) -> grpc.UnaryUnaryMultiCallable:
    """Process with no serializers: bytes in, bytes out (what the steps' forwarder uses)."""
    channel = grpc.insecure_channel(address, options=channel_options(DEFAULT_MAX_MESSAGE_BYTES))
    return channel.unary_unary(PROCESS_METHOD, None, None)


#: The 3-step chain `bench overload` and `bench soak` load (each step a process).
CHAIN: tuple[tuple[str, dict[str, Any]], ...] = (("grayscale", {}), ("gaussian_blur", {"sigma": 2.0}), ("identity", {}))




def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def frame(width: int, height: int) -> bytes:
    """A serialized ProcessRequest with a noisy RGB frame (serialized once, sent as bytes)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    from stepchain.v1 import step_pb2

    request = step_pb2.ProcessRequest()
    codec.write_image(request.image, img, codec.RAW)
    return request.SerializeToString()

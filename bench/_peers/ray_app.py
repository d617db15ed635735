"""Ray Serve's side of ``stepchain bench peers``: one deployment per step, an ingress composing
their handles, run by a host process of its own.

The application follows Ray's "Deploy Compositions of Models" guide: ``Step`` deployments are
bound and passed to the ``Ingress`` constructor, which Ray turns into ``DeploymentHandle`` s;
the ingress calls the first step's handle with the image and passes each ``DeploymentResponse``
straight to the next handle (not awaited in between), so the steps exchange object references
and read the pixels from the node's shared-memory object store; only the last result comes
back to the ingress. Steps are sync methods (Ray runs them on a thread pool); every replica
calls the same ``native`` kernel with the same thread count as the other systems. Ray's logical
CPUs only decide placement, so replicas ask for none: 4 replicas on a 2-core host could not be
placed otherwise.

``python -m bench._peers.ray_app --port P --temp-dir DIR`` (with the chain in the environment,
:func:`bench._peers.chains.to_env`) starts a Ray head on loopback (``ray start --head --block``
as a child, so the GCS, the raylet and its workers are in this process's tree), connects to it,
starts Serve's HTTP proxy on 127.0.0.1:P and deploys the application; on SIGTERM it calls
``serve.shutdown()`` and ``ray.shutdown()``, stops the head and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from bench._peers.chains import Kernels, from_body, from_env, run_kernel, shape_headers
from stepsvc.ports import free_port

APP_NAME = "peers"
#: Ray's logical CPUs only place actors: 4 replicas asking one each would not fit 2 cores.
NO_CPUS = {"num_cpus": 0}


class Step:
    """One step of the chain: its kernel on the image it is handed (an object from the store)."""

    def __init__(self, kernels: Kernels, index: int, threads: int) -> None:
        self.kernels, self.index, self.threads = kernels, index, threads

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return run_kernel(self.kernels, self.index, img, self.threads)


class Ingress:
    """HTTP in (raw pixels, shape headers), the steps composed through their handles."""

    def __init__(self, *steps: DeploymentHandle) -> None:
        self.steps = steps

    async def __call__(self, request: Request) -> Response:
        try:
            img = from_body(await request.body(), request.headers)
        except ValueError as exc:
            return Response(str(exc), status_code=400)
        response: Any = img
        for step in self.steps:  # each response handed on unresolved: a reference, not pixels
            response = step.remote(response)
        out: np.ndarray = await response
        return Response(out.tobytes(), media_type="application/octet-stream",
                        headers=shape_headers(out))


def application(kernels: Kernels, threads: int) -> Any:
    """``Ingress.bind(step1, step2, step3)``: the application ``serve.run`` deploys."""
    step = serve.deployment(ray_actor_options=NO_CPUS)(Step)
    steps = [step.options(name=f"step{i + 1}").bind(kernels, i, threads)
             for i in range(len(kernels))]
    return serve.deployment(ray_actor_options=NO_CPUS)(Ingress).bind(*steps)


def head_command(temp_dir: str) -> tuple[list[str], int]:
    """``ray start --head --block`` on loopback with every port chosen here, and the GCS port.

    Ports Ray would pick itself are reported through files its components write once they are
    up, and the raylet gives up on the metrics agent's after a fixed wait (a crash, "Timed
    out waiting for file .../metrics_agent_port_...", on a loaded 2-core host); ports given
    up front are not waited for. No dashboard; usage stats off. Run it with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (single-node mode): Ray then resolves 127.0.0.1
    to itself instead of to this host's network address."""
    gcs, agent_grpc, agent_http, runtime_env, metrics, client = (free_port() for _ in range(6))
    ray_cli = Path(sys.executable).parent / "ray"
    return [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(gcs), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--dashboard-agent-listen-port", str(agent_http),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--ray-client-server-port", str(client), "--include-dashboard", "false",
            "--temp-dir", temp_dir, "--disable-usage-stats"], gcs


def _wait_port(port: int, head: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    """Until the head's GCS accepts connections (ray.init gives up after a few tries)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise SystemExit(f"ray start exited with {head.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"Ray's GCS did not listen on 127.0.0.1:{port} in {timeout_s} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._peers.ray_app")
    parser.add_argument("--port", type=int, required=True, help="Serve's HTTP port (127.0.0.1)")
    parser.add_argument("--temp-dir", required=True, help="Ray's session folder (short path)")
    args = parser.parse_args(argv)
    kernels, threads = from_env()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    command, gcs = head_command(args.temp_dir)
    head = subprocess.Popen(command)  # the GCS, the raylet and its workers: its children
    try:
        _wait_port(gcs, head)
        ray.init(address=f"127.0.0.1:{gcs}", logging_level=logging.WARNING,
                 log_to_driver=False)
        # after ray.init, which installs its own SIGTERM handler (it would exit at once,
        # leaving Serve's actors behind): stop Serve, then Ray, in order instead
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(application(kernels, threads), name=APP_NAME, route_prefix="/")
        print("ready", flush=True)
        while not stop.wait(0.5):
            if head.poll() is not None:
                raise SystemExit(f"ray start exited with {head.returncode}")
        with suppress(Exception):
            serve.shutdown()
    finally:
        with suppress(Exception):
            ray.shutdown()
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

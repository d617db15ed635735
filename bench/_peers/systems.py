"""How each system of ``stepchain bench peers`` starts, is called and stops.

Every system runs the same chain (:mod:`bench._peers.chains`), one process per step, the same
OpenMP threads per kernel call, on loopback. :func:`start` starts one, measures the time from
launching it to its first correct answer, and yields a :class:`Running` (its root processes,
a caller factory for the client); leaving the block stops it and checks that none of the
processes it started is left (any that is, is killed by pid and reported).

- ``stepchain``: ``stepchain topology serve --backend local`` and ``POST /pipeline``, as a user
  runs it (the README's tour): step processes that pass frames through shared memory; the
  client sends raw pixels in a gRPC ``ProcessRequest`` to the entry step;
- ``stepchain-tcp``: the same ``stepchain step serve`` processes with ``--no-shm`` (the local
  backend has no switch for it): every hop carries the pixels inside the gRPC message;
- ``flask-jpeg``: the Flask-era shape, HTTP between steps with a JPEG decode and re-encode at
  every hop (:func:`bench._echo.serve_http_step`);
- ``ray-serve``: :mod:`bench._peers.ray_app` (an ingress composing a deployment per step);
- ``bentoml``: :mod:`bench._peers.bento_app` (a service per step, ``bentoml.depends``).
The HTTP peers get raw pixels with the shape in headers (:mod:`bench._peers.chains`).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from bench._echo import HttpClient, http_commands, jpeg_decode, jpeg_encode
from bench._harness import child_env, processes, raw_request_bytes, raw_stub, step_commands
from bench._peers.chains import Kernels, from_body, shape_headers, to_env
from bench._peers.load import Caller, CallerFactory, Refused
from bench._peers.meter import tree, wait_gone
from stepsvc.frames import codec, wire
from stepsvc.ports import free_port

#: The systems, in the order they take turns.
SYSTEMS = ("stepchain", "stepchain-tcp", "ray-serve", "bentoml", "flask-jpeg")
LABELS = {
    "stepchain": "stepchain, local backend (gRPC, shared memory between steps)",
    "stepchain-tcp": "stepchain, TCP only (step serve --no-shm)",
    "ray-serve": "Ray Serve, ingress + deployment per step (object refs)",
    "bentoml": "BentoML, service per step (bentoml.depends)",
    "flask-jpeg": "Flask-era HTTP, JPEG re-encoded every hop",
}
#: The Python package each peer needs (``make bench-peers`` installs them in .venv-peers).
NEEDS = {"ray-serve": "ray", "bentoml": "bentoml"}
START_TIMEOUT_S = 300.0
#: What an HTTP peer answers while its routes or replicas come up.
NOT_READY_STATUS = (404, 502)
#: What an HTTP peer answers when it sheds load (and Serve while a deployment comes up).
REFUSED_STATUS = (429, 503)
STOP_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0


def missing(system: str) -> str | None:
    """Why `system` cannot run here (its package is not installed), or None."""
    package = NEEDS.get(system)
    if package and importlib.util.find_spec(package) is None:
        return (f"{package} is not installed here: `make bench-peers` runs this benchmark from "
                f".venv-peers, with the versions in .ci/peers-constraints.txt")
    return None


@dataclass
class Running:
    """A started system: its root processes (the meter follows their trees) and its client."""

    name: str
    roots: list[int]
    caller: CallerFactory
    startup_s: float
    verified: str
    #: processes found still running after the stop (then killed by pid)
    left_behind: list[int] = field(default_factory=list)


def expected_answer(result: np.ndarray, expected: np.ndarray, lossy: bool) -> str:
    """'exact' / 'shape' (JPEG hops: only the shape can match) or raises naming the mismatch."""
    if lossy:
        if result.shape[:2] != expected.shape[:2]:
            raise RuntimeError(f"answer {result.shape} differs from the chain's "
                               f"{expected.shape}")
        return "shape (JPEG is lossy)"
    if result.shape != expected.shape or not np.array_equal(result, expected):
        raise RuntimeError(f"answer {result.shape} differs from the chain run in process "
                           f"{expected.shape}")
    return "exact"


# -- callers ------------------------------------------------------------------------------------

class NotReady(Exception):
    """The system does not answer yet (connection refused, UNAVAILABLE, 404 or 503 while its
    routes or deployments come up): :func:`first_answer` retries; anything else is a failure."""


def grpc_caller(address: str, payload: bytes) -> CallerFactory:
    """Raw pixels in a serialized ProcessRequest; the answer's pixels decoded (one copy, as the
    HTTP callers make one reading the body)."""
    def factory() -> Caller:
        stub = raw_stub(address)

        def call() -> np.ndarray:
            try:
                raw: bytes = stub(payload, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise NotReady(str(exc)) from exc
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the step sheds load
                    raise Refused(exc.details()) from exc  # type: ignore[attr-defined]
                raise
            return codec.decode_image(wire.parse_response(raw).image)
        return call
    return factory


def raw_http_caller(port: int, path: str, img: np.ndarray) -> CallerFactory:
    """POST raw pixels (shape in headers) on a keep-alive connection of the caller's own."""
    body = img.tobytes()
    headers = {**shape_headers(img), "Content-Type": "application/octet-stream"}

    def factory() -> Caller:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT_S)

        def call() -> np.ndarray:
            try:
                conn.request("POST", path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
            except (ConnectionError, http.client.HTTPException) as exc:
                conn.close()
                raise NotReady(repr(exc)) from exc
            if reply.status in NOT_READY_STATUS:
                raise NotReady(f"HTTP {reply.status}: {data[:200]!r}")
            if reply.status in REFUSED_STATUS:
                raise Refused(f"HTTP {reply.status}: {data[:200]!r}")
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
            return from_body(data, {k.lower(): v for k, v in reply.getheaders()})
        return call
    return factory


def jpeg_caller(port: int, img: np.ndarray) -> CallerFactory:
    data = jpeg_encode(img)

    def factory() -> Caller:
        client = HttpClient(port)

        def call() -> np.ndarray:
            try:
                answer = client.post(data)
            except ConnectionError as exc:
                client.local.conn = None
                raise NotReady(repr(exc)) from exc
            return jpeg_decode(answer)
        return call
    return factory


def first_answer(factory: CallerFactory, expected: np.ndarray, lossy: bool, started: float,
                 alive: Callable[[], str | None]) -> tuple[float, str]:
    """Calls until the first answer (retrying while the system comes up): (seconds since
    `started`, how it matched). `alive` says why the system is gone, if it is."""
    deadline = started + START_TIMEOUT_S
    last: Exception | None = None
    while time.perf_counter() < deadline:
        try:
            result = factory()()
        except (NotReady, Refused) as exc:  # not up yet: refused connection, 404, 503, ...
            last = exc
            gone = alive()
            if gone:
                raise RuntimeError(gone) from exc
            time.sleep(0.1)
            continue
        return time.perf_counter() - started, expected_answer(result, expected, lossy)
    raise RuntimeError(f"no answer within {START_TIMEOUT_S} s; last error: {last!r}")


# -- starting and stopping --------------------------------------------------------------------------

@contextmanager
def start(system: str, kernels: Kernels, threads: int, img: np.ndarray,
          expected: np.ndarray, workdir: Path) -> Iterator[Running]:
    """Starts `system` running `kernels`, waits for its first correct answer, yields it, and
    stops it on the way out."""
    starters: dict[str, Callable[..., Any]] = {
        "stepchain": _stepchain_local, "stepchain-tcp": _stepchain_tcp,
        "flask-jpeg": _flask_jpeg, "ray-serve": _ray_serve, "bentoml": _bentoml,
    }
    with starters[system](kernels, threads, img, expected, workdir) as running:
        yield running


def _pipeline_json(name: str, kernels: Kernels, threads: int) -> dict[str, Any]:
    steps = [{"step_id": i + 1, "type": kernel, "params": params, "threads": threads,
              **({"next_step": i + 2} if i + 1 < len(kernels) else {})}
             for i, (kernel, params) in enumerate(kernels)]
    return {"name": name, "steps": steps}


def _stepchain_command() -> list[str]:
    beside = Path(sys.executable).parent / "stepchain"
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "stepsvc.cli"]


@contextmanager
def _stepchain_local(kernels: Kernels, threads: int, img: np.ndarray, expected: np.ndarray,
                     workdir: Path) -> Iterator[Running]:
    from topology.service.auth import auth_header, token_path

    state = workdir / "stepchain-state"
    port = free_port()
    log = workdir / "topology.log"
    with _host_process([*_stepchain_command(), "topology", "serve", "--backend", "local",
                        "--port", str(port), "--state-dir", str(state)], child_env(threads),
                       log) as host:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=CALL_TIMEOUT_S) as api:
            _wait_http(api, "/healthz", host.proc, log)
            token = token_path(state).read_text(encoding="utf-8").strip()
            answer = api.post("/pipeline", json=_pipeline_json("peers", kernels, threads),
                              headers=auth_header(token))
            if answer.status_code != 201:
                raise RuntimeError(f"POST /pipeline: {answer.status_code} {answer.text}")
            entry = answer.json()["entrypoint"]
        factory = grpc_caller(entry, raw_request_bytes(img))
        startup, verified = first_answer(factory, expected, False, host.started,
                                         lambda: _host_exited(host, "topology serve"))
        host.running = Running("stepchain", [host.proc.pid], factory, startup, verified)
        yield host.running


@contextmanager
def _stepchain_tcp(kernels: Kernels, threads: int, img: np.ndarray, expected: np.ndarray,
                   workdir: Path) -> Iterator[Running]:
    folder = workdir / "stepchain-tcp"
    folder.mkdir()
    commands, addresses = step_commands(folder, kernels, threads, "--no-shm")
    with _step_processes("stepchain-tcp", commands, threads,
                         grpc_caller(addresses[0], raw_request_bytes(img)), expected,
                         lossy=False, what="step serve") as running:
        yield running


@contextmanager
def _flask_jpeg(kernels: Kernels, threads: int, img: np.ndarray, expected: np.ndarray,
                workdir: Path) -> Iterator[Running]:
    commands, ports = http_commands(kernels, threads)
    with _step_processes("flask-jpeg", commands, threads, jpeg_caller(ports[0], img), expected,
                         lossy=True, what="HTTP step") as running:
        yield running


@contextmanager
def _step_processes(system: str, commands: list[list[str]], threads: int,
                    factory: CallerFactory, expected: np.ndarray, *, lossy: bool,
                    what: str) -> Iterator[Running]:
    """A system of one process per step started here: running once the first answer is right;
    afterwards, which of its processes outlived the stop."""
    started = time.perf_counter()
    with processes(commands, threads) as procs:
        startup, verified = first_answer(factory, expected, lossy, started,
                                         lambda: _first_exited(procs, what))
        running = Running(system, [p.pid for p in procs], factory, startup, verified)
        yield running
    running.left_behind = wait_gone(running.roots, 5.0)


@contextmanager
def _ray_serve(kernels: Kernels, threads: int, img: np.ndarray, expected: np.ndarray,
               workdir: Path) -> Iterator[Running]:
    port = free_port()
    # Ray's session folder holds Unix sockets: a short path (108-byte limit)
    session = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    env = {**child_env(threads), **to_env(kernels, threads), "RAY_USAGE_STATS_ENABLED": "0",
           # one node: addresses stay on loopback (else Ray swaps 127.0.0.1 for this host's
           # network address when it connects)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # no token to share between the head and the driver (Ray keeps it in ~/.ray):
           # every address is loopback
           "RAY_AUTH_MODE": "disabled"}
    with _host_process([sys.executable, "-m", "bench._peers.ray_app", "--port", str(port),
                        "--temp-dir", str(session)], env, workdir / "ray.log") as host:
        try:
            factory = raw_http_caller(port, "/", img)
            startup, verified = first_answer(factory, expected, False, host.started,
                                             lambda: _host_exited(host, "the Ray host"))
            host.running = Running("ray-serve", [host.proc.pid], factory, startup, verified)
            yield host.running
        finally:
            host.cleanup.append(lambda: shutil.rmtree(session, ignore_errors=True))


@contextmanager
def _bentoml(kernels: Kernels, threads: int, img: np.ndarray, expected: np.ndarray,
             workdir: Path) -> Iterator[Running]:
    port = free_port()
    env = {**child_env(threads), **to_env(kernels, threads), "BENTOML_DO_NOT_TRACK": "True",
           "BENTOML_HOME": str(workdir / "bentoml-home")}
    with _host_process([sys.executable, "-m", "bentoml", "serve", "bench._peers.bento_app:Step1",
                        "--host", "127.0.0.1", "--port", str(port)], env,
                       workdir / "bentoml.log") as host:
        factory = raw_http_caller(port, "/process", img)
        startup, verified = first_answer(factory, expected, False, host.started,
                                         lambda: _host_exited(host, "bentoml serve"))
        host.running = Running("bentoml", [host.proc.pid], factory, startup, verified)
        yield host.running


@dataclass
class _Host:
    proc: subprocess.Popen[bytes]
    started: float
    log_path: Path
    running: Running | None = None
    cleanup: list[Callable[[], Any]] = field(default_factory=list)


@contextmanager
def _host_process(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[_Host]:
    """A peer's host process in a session (process group) of its own: SIGTERM to the group on
    the way out (Serve and Ray shut down in order; BentoML's arbiter stops its workers), then
    every process of its tree must be gone."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    host = _Host(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True), time.perf_counter(), log_path)
    try:
        yield host
    finally:
        pids = [p.pid for p in tree([host.proc.pid])]
        if host.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(host.proc.pid, signal.SIGTERM)
        try:
            host.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.proc.wait()
        left = wait_gone(pids, 30.0)
        if host.running is not None:
            host.running.left_behind = left
        for step in host.cleanup:
            step()
        log.close()


def _wait_http(api: httpx.Client, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if api.get(path, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{api.base_url}{path} did not answer in {START_TIMEOUT_S} s")


def _exited(proc: subprocess.Popen[bytes], what: str) -> str | None:
    code = proc.poll()
    return None if code is None else f"{what} exited with {code} before its first answer"


def _host_exited(host: _Host, what: str) -> str | None:
    """Why the host is gone, with the end of its log."""
    gone = _exited(host.proc, what)
    if gone is None:
        return None
    return f"{gone}: {host.log_path.read_text(errors='replace')[-1500:]}"


def _first_exited(procs: list[subprocess.Popen[bytes]], what: str) -> str | None:
    return next((m for p in procs if (m := _exited(p, what))), None)


def describe_pipeline(kernels: Kernels, threads: int) -> str:
    """The pipeline JSON the stepchain system submits (for the report)."""
    return json.dumps(_pipeline_json("peers", kernels, threads))

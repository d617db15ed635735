"""Launching one replica of a step: a supervised ``stepchain step serve`` on loopback ports.

:func:`start_step` writes the step's PIPELINE_CONFIG, builds its command line and environment
(the installed ``stepchain`` command, threads, its name, the lifeline) and starts it under
:class:`~topology.local.supervisor.SupervisedProcess`; :func:`wait_ready` waits for the steps'
gRPC health and says why one did not come up, with the end of its log (:class:`PortTaken` when
another process took its port first). The addresses a backend reports are built here too.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stepsvc.step.lifeline import LIFELINE_ENV
from topology.backend import BackendError
from topology.local.supervisor import RestartPolicy, SupervisedProcess, stop_all
from topology.pipeline.graph import Pipeline, Step
from topology.pipeline.model import step_name


def installed_stepchain() -> tuple[str, ...]:
    """The installed ``stepchain`` console script: beside this interpreter (a virtual
    environment's ``bin/``, also when it is not activated), else on ``PATH``; else this
    interpreter running the installed CLI module."""
    beside = Path(sys.executable).parent / "stepchain"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    found = shutil.which("stepchain")
    return (found,) if found else (sys.executable, "-m", "stepsvc.cli")


#: How a step server process is launched: the installed `stepchain` command.
STEP_LAUNCHER: tuple[str, ...] = installed_stepchain()
#: What a step's log says when its port is in use (the step server's and gRPC's words).
PORT_TAKEN_SIGNS = ("cannot listen", "Failed to bind", "Address already in use")
HEALTH_TIMEOUT_S = 1.0


class PortTaken(BackendError):
    """A step exited because its port was in use."""

    def __init__(self, step_id: int, message: str) -> None:
        super().__init__(message)
        self.step_id = step_id


@dataclass
class StepProcess:
    """One replica of a step: a supervised `step serve` process on its own ports."""

    step_id: int
    replica: int
    type: str
    port: int
    metrics_port: int
    http_port: int
    config_path: Path
    config_text: str
    threads: int
    child: SupervisedProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_address(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the step's HTTP face (POST it or its /process an image)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.metrics_port, self.http_port


def step_target(procs: list[StepProcess]) -> str:
    """The gRPC target naming every replica: host:port for one, an ipv4: list for more ("" for
    none: a step scaled to zero)."""
    if not procs:
        return ""
    if len(procs) == 1:
        return procs[0].address
    return "ipv4:" + ",".join(p.address for p in procs)


def entry_details(procs: list[StepProcess] | None) -> dict[str, str]:
    """With several entry replicas: ``entry_target``, the ``ipv4:`` round_robin target naming
    them all (``entrypoint`` stays one ``host:port``, what grpcurl and curl take)."""
    return {"entry_target": step_target(procs)} if procs and len(procs) > 1 else {}


def discovery_entry(procs: list[StepProcess]) -> str | list[str]:
    """The step's entry in the static discovery file: its address, or every replica's."""
    return procs[0].address if len(procs) == 1 else [p.address for p in procs]


def process_name(pipeline_id: str, step_id: int, replicas: int, replica: int = 0) -> str:
    """``<pipeline>-step-<N>``, with ``-<r>`` per replica when the step has more than one."""
    name = step_name(pipeline_id, step_id)
    return name if replicas == 1 else f"{name}-{replica}"


@dataclass(frozen=True)
class Launch:
    """What every step process of a backend is started with."""

    drain_grace_s: int
    restart_policy: Callable[[], RestartPolicy]
    #: The read end of the lifeline pipe the steps inherit (:mod:`stepsvc.step.lifeline`).
    lifeline_fd: int
    otel_env: Mapping[str, str]


def start_step(launch: Launch, pipeline: Pipeline, step: Step, replica: int,
               ports: tuple[int, int, int], text: str, directory: Path,
               discovery: Path) -> StepProcess:
    """Writes the step's PIPELINE_CONFIG `text` and starts replica `replica` of it on
    `ports` (gRPC, metrics, HTTP), logging to ``step-<N>[-<r>].log`` in `directory`."""
    port, metrics_port, http_port = ports
    config_path = directory / f"step-{step.id}.yaml"
    config_path.write_text(text, encoding="utf-8")
    name = process_name(pipeline.pipeline_id, step.id, step.replicas, replica)
    # Replicas tell themselves apart like pods do: by name (the timings' host column).
    env = {**os.environ, **launch.otel_env, "OMP_NUM_THREADS": str(step.threads),
           "POD_NAME": name, "OTEL_SERVICE_NAME": step_name(pipeline.pipeline_id, step.id),
           LIFELINE_ENV: str(launch.lifeline_fd)}
    command = [*STEP_LAUNCHER, "step", "serve",
               "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
               "--discovery", f"static:{discovery}", "--metrics-port", str(metrics_port),
               "--http-port", str(http_port), "--grace", str(launch.drain_grace_s)]
    log_name = f"step-{step.id}.log" if step.replicas == 1 else f"step-{step.id}-{replica}.log"
    what = f"step {step.id} ({step.type})" + (f" replica {replica}" if step.replicas > 1 else "")
    child = SupervisedProcess.start(
        f"{what} of pipeline {pipeline.pipeline_id}", command, env, directory,
        directory / log_name, launch.restart_policy(), pass_fds=(launch.lifeline_fd,))
    return StepProcess(step_id=step.id, replica=replica, type=step.type, port=port,
                       metrics_port=metrics_port, http_port=http_port, config_path=config_path,
                       config_text=text, threads=step.threads, child=child)


def wait_ready(pipeline_id: str, procs: list[StepProcess], timeout_s: float) -> None:
    """Returns once every process answers SERVING on its gRPC health; BackendError (PortTaken
    when its port was in use) naming the step and showing the end of its log otherwise."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending:
        for proc in list(pending):
            code = proc.child.process.poll()
            if code is not None:
                tail = proc.child.tail()
                message = (f"step {proc.step_id} ({proc.type}) of pipeline {pipeline_id} exited "
                           f"with code {code} before it was ready; its log ends with:\n{tail}")
                if any(sign in tail for sign in PORT_TAKEN_SIGNS):
                    raise PortTaken(proc.step_id, message)
                raise BackendError(message)
            if serving(proc.address):
                pending.remove(proc)
        if pending and time.monotonic() > deadline:
            names = ", ".join(str(p.step_id) for p in pending)
            raise BackendError(
                f"step(s) {names} of pipeline {pipeline_id} were not healthy within "
                f"{timeout_s:.0f} s; last log lines of step {pending[0].step_id}:\n"
                f"{pending[0].child.tail()}")
        if pending:
            time.sleep(0.1)


def serving(address: str) -> bool:
    """Whether the step at `address` answers SERVING on its gRPC health."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def stop_steps(procs: list[StepProcess], grace_s: float) -> None:
    """SIGTERM to every process, SIGKILL after `grace_s` to those still running."""
    stop_all([proc.child.process for proc in procs], grace_s)

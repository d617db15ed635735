"""A pipeline whose steps each run on a host of their own (a namespace of a
:class:`~topology.netns.network.Network`), as pods on separate nodes do.

Each step is a real ``stepchain step serve`` process on its host's address and one fixed port
(hosts do not share ports, as pods do not), with the config the topology service would give it
and a static discovery file of its own, so one link can be sent through a proxy
(:meth:`HostedPipeline.route`) without changing the others — or, with :class:`KubeDiscovery`,
the ConfigMap watch of a real API server reached over the network, and Service names that
resolve to the steps' hosts. Steps never share memory across
hosts (``--no-shm``): every frame crosses the network. A lifeline pipe stops the steps if the
process that started them dies before it could.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from stepsvc.routing.discovery import write_static_discovery
from stepsvc.step.lifeline import LIFELINE_ENV
from topology.local.launch import STEP_LAUNCHER
from topology.local.supervisor import log_tail
from topology.netns.network import Host, NetnsError, Network, port_open
from topology.pipeline.dump import step_config_text
from topology.pipeline.graph import Pipeline, parse_pipeline
from topology.pipeline.model import step_name

#: The port every step listens on inside its own host.
STEP_PORT = 50051
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class KubeDiscovery:
    """Steps find each other through a Kubernetes API server (``--discovery kubernetes``: a
    ConfigMap watch) reached inside the network on `api_host`, under the name its certificate
    carries, ``kubernetes.default.svc`` (`kubeconfig` names that server, e.g.
    ``https://kubernetes.default.svc:6443``); each step's Service name resolves to its host."""

    kubeconfig: Path
    namespace: str
    api_host: Host
    domain: str = "cluster.local"

    def service_name(self, pipeline_id: str, step_id: int) -> str:
        return f"{step_name(pipeline_id, step_id)}.{self.namespace}.svc.{self.domain}"


#: The API server's name inside the network (one of the names its serving certificate holds).
API_SERVER_NAME = "kubernetes.default.svc"


@dataclass
class HostedStep:
    """One step on its host: where it listens, its files and its process."""

    step_id: int
    type: str
    host: Host
    config_path: Path
    discovery_path: Path
    log_path: Path
    process: Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host.address}:{STEP_PORT}"


class HostedPipeline:
    """Starts, stops, freezes and restarts the steps of `pipeline` on hosts of `network`.

    `step_args` are extra ``step serve`` flags for every step (e.g. ``--max-inflight``).
    """

    def __init__(self, network: Network, pipeline: Mapping[str, Any] | Pipeline,
                 workdir: Path, *, step_args: Sequence[str] = (),
                 kube: KubeDiscovery | None = None) -> None:
        self.network = network
        #: None: each step reads a static discovery file of its own.
        self.kube = kube
        self.pipeline = (pipeline if isinstance(pipeline, Pipeline)
                         else parse_pipeline(dict(pipeline)))
        self.workdir = workdir
        self.step_args = tuple(step_args)
        workdir.mkdir(parents=True, exist_ok=True)
        for step in self.pipeline.steps:
            if step.replicas != 1:
                raise ValueError(f"step {step.id}: a hosted pipeline runs one replica per step "
                                 f"(one host each), got replicas={step.replicas}")
        self.steps: dict[int, HostedStep] = {}
        for step in self.pipeline.steps:
            host = network.add_host(f"step-{step.id}")
            self.steps[step.id] = HostedStep(
                step_id=step.id, type=step.type, host=host,
                config_path=workdir / f"step-{step.id}.yaml",
                discovery_path=workdir / f"discovery-step-{step.id}.json",
                log_path=workdir / f"step-{step.id}.log")
        #: Per step: next step id -> the address it dials (the next step's, or a proxy's).
        self.routes: dict[int, dict[int, str]] = {
            sid: {nxt: self.steps[nxt].address for s in self.pipeline.steps if s.id == sid
                  for nxt in s.next_step}
            for sid in self.steps}
        self._lifeline_read, self._lifeline_write = os.pipe()
        os.set_inheritable(self._lifeline_read, True)

    @property
    def entry(self) -> HostedStep:
        return self.steps[self.pipeline.entry_step]

    def step(self, step_id: int) -> HostedStep:
        return self.steps[step_id]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, ready_timeout: float = READY_TIMEOUT_S) -> None:
        """Starts every step and waits until each accepts connections on its address."""
        for sid, hosted in self.steps.items():
            hosted.config_path.write_text(step_config_text(self.pipeline, sid),
                                          encoding="utf-8")
            self._write_discovery(sid)
            if self.kube is not None:  # what the cluster's DNS would answer
                names = {self.kube.service_name(self.pipeline.pipeline_id, other): s.host.address
                         for other, s in self.steps.items()}
                self.network.name_hosts(hosted.host, {
                    **names, API_SERVER_NAME: self.kube.api_host.address})
        for sid in self.steps:
            self._spawn(sid, append_log=False)
        self.wait_ready(list(self.steps), timeout=ready_timeout)

    def _write_discovery(self, step_id: int) -> None:
        write_static_discovery(self.steps[step_id].discovery_path, self.routes[step_id])

    def _spawn(self, step_id: int, *, append_log: bool) -> None:
        hosted = self.steps[step_id]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "POD_NAME": hosted.host.name,
               "OTEL_SERVICE_NAME": step_name(self.pipeline.pipeline_id, step_id),
               LIFELINE_ENV: str(self._lifeline_read)}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # no collector inside the namespaces
        discovery = [f"static:{hosted.discovery_path}"]
        if self.kube is not None:
            discovery = ["kubernetes", "--namespace", self.kube.namespace]
            env.update(KUBECONFIG=str(self.kube.kubeconfig),
                       STEPCHAIN_CLUSTER_DOMAIN=self.kube.domain)
        command = [*STEP_LAUNCHER, "step", "serve", "--config", str(hosted.config_path),
                   "--host", "0.0.0.0", "--port", str(STEP_PORT),
                   "--discovery", *discovery, "--metrics-port", "0",
                   "--http-port", "0", "--no-shm", "--grace", "1", *self.step_args]
        hosted.process = self.network.spawn(hosted.host, command, log_path=hosted.log_path,
                                            env=env, cwd=self.workdir,
                                            pass_fds=(self._lifeline_read,),
                                            append_log=append_log)

    def wait_ready(self, step_ids: Sequence[int], *, timeout: float = READY_TIMEOUT_S) -> float:
        """Waits until each step accepts TCP connections on its address (from its own host);
        returns the monotonic time when the last one did. NetnsError with the log's end when a
        step exits or is not ready in time."""
        deadline = time.monotonic() + timeout
        pending = list(step_ids)
        while pending:
            for sid in list(pending):
                hosted = self.steps[sid]
                code = hosted.process.poll() if hosted.process else None
                if code is not None:
                    raise NetnsError(f"step {sid} exited with code {code} before it was ready; "
                                     f"its log ends with:\n{log_tail(hosted.log_path)}")
                if port_open(hosted.host.namespace, hosted.host.address, STEP_PORT,
                             timeout=0.5):
                    pending.remove(sid)
            if pending and time.monotonic() > deadline:
                sid = pending[0]
                raise NetnsError(f"step {sid} did not listen within {timeout:.0f} s; its log "
                                 f"ends with:\n{log_tail(self.steps[sid].log_path)}")
            if pending:
                time.sleep(0.05)
        return time.monotonic()

    def route(self, from_step: int, to_step: int, address: str | None) -> None:
        """Step `from_step` dials `to_step` at `address` (e.g. a Toxiproxy listening in its
        host); None: at the step's own address again. Picked up within discovery's reload."""
        self.routes[from_step][to_step] = address or self.steps[to_step].address
        self._write_discovery(from_step)

    def kill(self, step_id: int) -> None:
        """SIGKILL: the process is gone at once (its host's kernel answers with resets)."""
        process = self.steps[step_id].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self, step_id: int, *, ready_timeout: float = READY_TIMEOUT_S) -> float:
        """Starts the step again on the same host and address (after :meth:`kill`); returns
        the monotonic time it listens."""
        self.kill(step_id)
        self._spawn(step_id, append_log=True)
        return self.wait_ready([step_id], timeout=ready_timeout)

    def freeze(self, step_id: int) -> None:
        """SIGSTOP: the process stops mid-request; its kernel still accepts and ACKs TCP."""
        self._signal(step_id, signal.SIGSTOP)

    def thaw(self, step_id: int) -> None:
        self._signal(step_id, signal.SIGCONT)

    def _signal(self, step_id: int, signum: int) -> None:
        process = self.steps[step_id].process
        if process is None or process.poll() is not None:
            raise NetnsError(f"step {step_id} is not running")
        os.kill(process.pid, signum)

    def pid(self, step_id: int) -> int:
        process = self.steps[step_id].process
        if process is None:
            raise NetnsError(f"step {step_id} was never started")
        return process.pid

    def usage(self, step_id: int) -> tuple[int, float]:
        """The step process's thread count and resident memory (MiB), from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.pid(step_id)}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()
        return int(fields["Threads"][0]), int(fields["VmRSS"][0]) / 1024

    def close(self) -> None:
        """Closes the lifeline (steps still running stop themselves); the network stops and
        removes everything else."""
        for fd in (self._lifeline_read, self._lifeline_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lifeline_read = self._lifeline_write = -1

"""Local backend: `replicas` `stepchain step serve` processes per step on free loopback ports.

What the Kubernetes backend keeps in ConfigMaps lives on disk under the state directory::

    <state-dir>/<pipeline_id>/step-<N>.yaml     the step's PIPELINE_CONFIG
    <state-dir>/<pipeline_id>/discovery.json    {"0": "127.0.0.1:PORT", ...} (static discovery;
                                                a step with replicas lists every one's address)
    <state-dir>/<pipeline_id>/step-<N>.log      the step's stdout and stderr (step-<N>-<r>.log
                                                per replica when it has more than one)
    <state-dir>/<pipeline_id>/processes.json    pids and ports, so a later service can clean up
                                                orphans and start the steps on the same ports
    <state-dir>/<pipeline_id>/pipeline.json     the pipeline, so a restarted service brings it
                                                back (same id; same ports where they are free)
    <state-dir>/<pipeline_id>/spec.json         the pipeline JSON as submitted (GET's `spec`)

Each step serves Prometheus ``/metrics`` on a loopback port of its own, reported with its
status (``metrics``), which the console, ``stepchain top`` and the advice API scrape, and its
HTTP face (``POST /process``) on another; the entry step's is the pipeline's
``http_entrypoint``. A step that an update changes restarts on the ports it had, so the
entry addresses stay what clients were given.

A step with ``replicas: R`` runs R processes, each on its own port; discovery lists all of
them, so upstream steps' round_robin channels (``ipv4:127.0.0.1:p1,127.0.0.1:p2``) spread
requests over them, and the entry point of a pipeline whose entry step has replicas is such a
list too. Steps are started with the installed ``stepchain`` command. Readiness is the steps'
gRPC health. The process supervision lives in :mod:`topology.local.supervisor`: a step whose process exited
on its own is restarted on the same port (so the discovery file stays right; each replica on
its own), after a backoff
that doubles with each restart; a step that exits more than MAX_RESTARTS times within
RESTART_WINDOW_S is left stopped and reported as failed with the end of its log. Processes are
stopped (SIGTERM, then SIGKILL after the drain grace) on DELETE and when the service shuts down.

Steps never outlive the service, however it ends: each inherits the read end of a lifeline pipe
whose only write end the service holds (:mod:`stepsvc.step.lifeline`); when the service dies (SIGKILL
included) the kernel closes it and every step stops within about two seconds. A service that
starts on the same state dir stops whatever a predecessor still left running, then brings back
the pipelines it had (DELETE forgets a pipeline; a shutdown does not). A step with
``replicas: 0`` runs no process and is absent from discovery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stepsvc.ports import free_ports, port_free
from stepsvc.step.lifeline import LIFELINE_ENV
from topology.backend import ApplyResult, BackendError, PipelineStatus, StepStatus
from topology.kube.manifests import step_config, step_config_text, step_name
from topology.local.supervisor import (
    RestartPolicy,
    SupervisedProcess,
    SupervisorLoop,
    process_alive,
    reap,
    stop_all,
)
from topology.pipeline.graph import Pipeline, Step, parse_pipeline
from topology.pipeline.model import PipelineInvalid

__all__ = ["LocalBackend", "RestartPolicy", "process_alive"]


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
STATE_FILE = "processes.json"
PIPELINE_FILE = "pipeline.json"
SPEC_FILE = "spec.json"
DISCOVERY_FILE = "discovery.json"
#: Seconds a local step drains after SIGTERM before it is killed.
LOCAL_DRAIN_GRACE_S = 5
READY_TIMEOUT_S = 60.0
#: Tries to start a step whose free port was taken before it could bind.
PORT_ATTEMPTS = 3
#: What a step's log says when its port is in use (the step server's and gRPC's words).
PORT_TAKEN_SIGNS = ("cannot listen", "Failed to bind", "Address already in use")
HEALTH_TIMEOUT_S = 1.0
#: How often the supervisor looks for step processes that exited.
SUPERVISE_INTERVAL_S = 0.5

log = logging.getLogger(__name__)


class _PortTaken(BackendError):
    """A step exited because its port was in use."""

    def __init__(self, step_id: int, message: str) -> None:
        super().__init__(message)
        self.step_id = step_id


@dataclass
class _StepProcess:
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


def _target(procs: list[_StepProcess]) -> str:
    """The gRPC target naming every replica: host:port for one, an ipv4: list for more ("" for
    none: a step scaled to zero)."""
    if not procs:
        return ""
    if len(procs) == 1:
        return procs[0].address
    return "ipv4:" + ",".join(p.address for p in procs)


def _entry_details(procs: list[_StepProcess] | None) -> dict[str, str]:
    """With several entry replicas: ``entry_target``, the ``ipv4:`` round_robin target naming
    them all (``entrypoint`` stays one ``host:port``, what grpcurl and curl take)."""
    return {"entry_target": _target(procs)} if procs and len(procs) > 1 else {}


def _discovery_entry(procs: list[_StepProcess]) -> str | list[str]:
    return procs[0].address if len(procs) == 1 else [p.address for p in procs]


@dataclass
class _LocalPipeline:
    pipeline: Pipeline
    directory: Path
    #: step id -> its replicas, in replica order
    steps: dict[int, list[_StepProcess]]

    def processes(self) -> list[_StepProcess]:
        return [proc for procs in self.steps.values() for proc in procs]


class LocalBackend:
    """Runs pipelines as local step server processes (the embedded default)."""

    name = "local"

    def __init__(self, state_dir: Path, *, namespace: str = "default",
                 otel_env: Mapping[str, str] | None = None,
                 drain_grace_s: int = LOCAL_DRAIN_GRACE_S,
                 ready_timeout_s: float = READY_TIMEOUT_S,
                 restart_policy: Callable[[], RestartPolicy] = RestartPolicy,
                 supervise_interval_s: float = SUPERVISE_INTERVAL_S) -> None:
        # Local processes have no namespace; this is the one the service says it manages, so
        # that answers name the namespace a pipeline was checked against.
        self.namespace = namespace
        self.state_dir = Path(state_dir)
        self.otel_env = dict(otel_env or {})
        self.drain_grace_s = drain_grace_s
        self.ready_timeout_s = ready_timeout_s
        self.restart_policy = restart_policy
        self._pipelines: dict[str, _LocalPipeline] = {}
        self._lock = threading.RLock()
        # Steps read the lifeline; only this process holds its write end (not inheritable).
        self._lifeline_read, self._lifeline_write = os.pipe()
        #: pipeline id -> (step id, replica) -> (port, metrics port) to reuse when restoring
        self._preferred_ports: dict[str, dict[tuple[int, int], tuple[int, int, int]]] = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.reap_orphans()
        self._supervisor = SupervisorLoop(self.supervise, supervise_interval_s,
                                          name="stepchain-local-supervisor")
        #: Ids of the pipelines brought back from the state dir at start.
        self.restored = self.restore()

    # -- the Backend protocol ------------------------------------------------------------------

    def apply(self, pipeline: Pipeline) -> ApplyResult:
        """Starts the steps that are new or changed, stops removed ones, waits for readiness.

        If a step does not become ready, the whole pipeline is stopped and BackendError says
        which step failed and shows the end of its log.
        """
        with self._lock:
            directory = self.state_dir / pipeline.pipeline_id
            directory.mkdir(parents=True, exist_ok=True)
            current = self._pipelines.get(pipeline.pipeline_id)
            old = current.steps if current else {}
            wanted = {s.id: s for s in pipeline.steps}
            texts = {s.id: step_config_text(pipeline, s.id) for s in pipeline.steps}
            keep = {sid: procs for sid, procs in old.items()
                    if sid in wanted and all(p.child.running() for p in procs)
                    and len(procs) == wanted[sid].replicas
                    and all(p.config_text == texts[sid] and p.threads == wanted[sid].threads
                            for p in procs)}
            _stop_steps([p for sid, procs in old.items() if sid not in keep for p in procs],
                        self.drain_grace_s)
            for sid in old:
                if sid not in keep:
                    for stale in directory.glob(f"step-{sid}[.-]*"):
                        stale.unlink(missing_ok=True)
            # Every process gets the discovery file, which only lists steps once all are known.
            discovery = directory / DISCOVERY_FILE
            new_ids = [sid for sid in sorted(wanted) if sid not in keep]
            started = dict(keep)
            entry = _LocalPipeline(pipeline, directory, started)
            self._pipelines[pipeline.pipeline_id] = entry
            from stepsvc.routing.discovery import write_static_discovery

            # A changed step comes back on the ports it had: clients keep their addresses.
            reuse = {sid: [p.ports for p in procs] for sid, procs in old.items()
                     if sid in wanted and sid not in keep}
            to_start, attempt = new_ids, 1
            preferred = self._preferred_ports.get(pipeline.pipeline_id, {})
            (directory / PIPELINE_FILE).write_text(json.dumps(pipeline_json(pipeline)),
                                                   encoding="utf-8")
            if pipeline.source is not None:  # what GET answers as `spec`, also after a restart
                (directory / SPEC_FILE).write_text(json.dumps(pipeline.source), encoding="utf-8")
            while True:
                fresh = iter(free_ports(3 * sum(wanted[sid].replicas for sid in to_start)))
                for sid in to_start:
                    had = reuse.pop(sid, [])
                    started[sid] = [
                        self._start(pipeline, wanted[sid], replica,
                                    had[replica] if replica < len(had)
                                    else _reuse(preferred.get((sid, replica)) if attempt == 1
                                                else None, fresh),
                                    texts[sid], directory, discovery)
                        for replica in range(wanted[sid].replicas)]
                self._write_state(entry)
                # A step scaled to zero replicas is inactive: absent from discovery.
                write_static_discovery(discovery, {sid: _discovery_entry(procs)
                                                   for sid, procs in started.items() if procs})
                try:
                    self._wait_ready(entry, [p for sid in new_ids for p in started[sid]])
                    break
                except _PortTaken as exc:
                    # Another process took the free port between our check and the step's
                    # bind: start that step's replicas again on other ports.
                    if attempt >= PORT_ATTEMPTS:
                        self._remove(pipeline.pipeline_id)
                        raise BackendError(str(exc)) from None
                    _stop_steps(started[exc.step_id], self.drain_grace_s)
                    to_start, attempt = [exc.step_id], attempt + 1
                except BackendError:
                    self._remove(pipeline.pipeline_id)
                    raise
            resources: list[dict[str, Any]] = [
                {"kind": "Process", "name": _process_name(pipeline.pipeline_id, p, len(procs)),
                 "pid": p.child.pid, "address": p.address, "config": str(p.config_path)}
                for sid, procs in sorted(started.items()) for p in procs]
            resources.append({"kind": "DiscoveryFile", "name": str(discovery)})
            return ApplyResult(pipeline_id=pipeline.pipeline_id, resources=resources,
                               entrypoint=(started[pipeline.entry_step][0].address
                                           if started[pipeline.entry_step] else None),
                               http_entrypoint=(started[pipeline.entry_step][0].http_url
                                                if started[pipeline.entry_step] else None),
                               details={"state_dir": str(directory),
                                        **_entry_details(started[pipeline.entry_step])})

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        """Readiness of each step from its gRPC health (and whether its process runs)."""
        with self._lock:
            entry = self._pipelines.get(pipeline_id)
            if entry is None:
                return None
            steps = []
            for sid, procs in sorted(entry.steps.items()):
                ready = sum(p.child.running() and _serving(p.address) for p in procs)
                failures = [p.child.failure for p in procs if p.child.failure]
                # replicas: 0 -> no process, not ready, no address (as a Deployment scaled to 0)
                steps.append(StepStatus(step_id=sid, type=entry.pipeline.step(sid).type,
                                        ready=bool(procs) and ready == len(procs),
                                        ready_replicas=ready,
                                        replicas=len(procs), address=_target(procs) or None,
                                        restarts=sum(p.child.restarts for p in procs),
                                        error="\n".join(failures) or None,
                                        metrics=tuple(p.metrics_address for p in procs)))
            entry_procs = entry.steps.get(entry.pipeline.entry_step)
            return PipelineStatus(
                pipeline_id=pipeline_id, namespace=self.namespace,
                fingerprint=entry.pipeline.fingerprint,
                entrypoint=entry_procs[0].address if entry_procs else None, steps=tuple(steps),
                http_entrypoint=entry_procs[0].http_url if entry_procs else None,
                graph=tuple(step_config(entry.pipeline, entry.pipeline.entry_step).steps),
                spec=entry.pipeline.source,
                entry_step=entry.pipeline.entry_step,
                details={"state_dir": str(entry.directory), **_entry_details(entry_procs),
                         "pids": {str(s): (ps[0].child.pid if len(ps) == 1
                                           else [p.child.pid for p in ps])
                                  for s, ps in entry.steps.items()}})

    def list_pipelines(self) -> list[PipelineStatus]:
        """Every running pipeline, sorted by id."""
        with self._lock:
            ids = sorted(self._pipelines)
            return [s for s in (self.status(pid) for pid in ids) if s is not None]

    def delete(self, pipeline_id: str) -> bool:
        """Stops the pipeline's processes and removes its state directory."""
        with self._lock:
            return self._remove(pipeline_id)

    def running_step_processes(self) -> int:
        """How many step processes of this backend run now (crashed ones excluded)."""
        # No lock: an apply holds it while steps start (up to READY_TIMEOUT_S) and a metrics
        # scrape must not wait for that; copying the dicts is atomic under the GIL.
        pipelines = list(self._pipelines.values())
        return sum(proc.child.running() for entry in pipelines for proc in entry.processes())

    def close(self) -> None:
        """Stops the supervisor, then every step process this backend started; the pipelines
        stay in the state dir, so a service started on it brings them back."""
        self._supervisor.close()  # not under the lock: the supervisor may be waiting for it
        with self._lock:
            for pipeline_id in list(self._pipelines):
                self._remove(pipeline_id, forget=False)
            for fd in (self._lifeline_write, self._lifeline_read):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def restore(self) -> list[str]:
        """Starts the pipelines a previous service on this state dir had (same ids, the same
        ports where they are free); returns their ids. One that cannot start is logged and
        forgotten, the others come back."""
        restored = []
        for saved in sorted(self.state_dir.glob(f"*/{PIPELINE_FILE}")):
            directory = saved.parent
            if directory.name in self._pipelines:
                continue
            try:
                pipeline = parse_pipeline(json.loads(saved.read_text(encoding="utf-8")))
                pipeline = replace(pipeline, source=_saved_spec(directory))
                self._preferred_ports[pipeline.pipeline_id] = _saved_ports(directory)
                self.apply(pipeline)
            except (OSError, ValueError, PipelineInvalid, BackendError) as exc:
                log.error("cannot bring back the pipeline saved in %s; forgetting it: %s",
                          directory, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            finally:
                self._preferred_ports.pop(directory.name, None)
            log.info("brought back pipeline %s from %s", pipeline.pipeline_id, directory)
            restored.append(pipeline.pipeline_id)
        return restored

    # -- supervision ---------------------------------------------------------------------------

    def supervise(self, now: float | None = None) -> None:
        """Restarts step processes that exited on their own (backoff and bound: RestartPolicy);
        a step over the bound is marked failed with the end of its log."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for entry in self._pipelines.values():
                # each replica is restarted on its own port: the discovery file stays right
                restarted = [proc.child.supervise(now) for proc in entry.processes()]
                if any(restarted):  # new pids, so a later service can reap them
                    self._write_state(entry)

    # -- processes -----------------------------------------------------------------------------

    def _start(self, pipeline: Pipeline, step: Step, replica: int,
               ports: tuple[int, int, int], text: str, directory: Path,
               discovery: Path) -> _StepProcess:
        port, metrics_port, http_port = ports
        config_path = directory / f"step-{step.id}.yaml"
        config_path.write_text(text, encoding="utf-8")
        name = _process_name(pipeline.pipeline_id, step, step.replicas, replica)
        # Replicas tell themselves apart like pods do: by name (the timings' host column).
        env = {**os.environ, **self.otel_env, "OMP_NUM_THREADS": str(step.threads),
               "POD_NAME": name, "OTEL_SERVICE_NAME": step_name(pipeline.pipeline_id, step.id),
               LIFELINE_ENV: str(self._lifeline_read)}
        command = [*STEP_LAUNCHER, "step", "serve",
                   "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
                   "--discovery", f"static:{discovery}", "--metrics-port", str(metrics_port),
                   "--http-port", str(http_port), "--grace", str(self.drain_grace_s)]
        log_name = f"step-{step.id}.log" if step.replicas == 1 else f"step-{step.id}-{replica}.log"
        what = f"step {step.id} ({step.type})" + (
            f" replica {replica}" if step.replicas > 1 else "")
        child = SupervisedProcess.start(
            f"{what} of pipeline {pipeline.pipeline_id}", command, env, directory,
            directory / log_name, self.restart_policy(), pass_fds=(self._lifeline_read,))
        return _StepProcess(step_id=step.id, replica=replica, type=step.type, port=port,
                            metrics_port=metrics_port, http_port=http_port,
                            config_path=config_path, config_text=text, threads=step.threads,
                            child=child)

    def _wait_ready(self, entry: _LocalPipeline, procs: list[_StepProcess]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(procs)
        while pending:
            for proc in list(pending):
                code = proc.child.process.poll()
                if code is not None:
                    tail = proc.child.tail()
                    message = (f"step {proc.step_id} ({proc.type}) of pipeline "
                               f"{entry.pipeline.pipeline_id} exited with code {code} before it "
                               f"was ready; its log ends with:\n{tail}")
                    if any(sign in tail for sign in PORT_TAKEN_SIGNS):
                        raise _PortTaken(proc.step_id, message)
                    raise BackendError(message)
                if _serving(proc.address):
                    pending.remove(proc)
            if pending and time.monotonic() > deadline:
                names = ", ".join(str(p.step_id) for p in pending)
                raise BackendError(
                    f"step(s) {names} of pipeline {entry.pipeline.pipeline_id} were not healthy "
                    f"within {self.ready_timeout_s:.0f} s; last log lines of step "
                    f"{pending[0].step_id}:\n{pending[0].child.tail()}")
            if pending:
                time.sleep(0.1)

    def _remove(self, pipeline_id: str, *, forget: bool = True) -> bool:
        entry = self._pipelines.pop(pipeline_id, None)
        if entry is None:
            return False
        _stop_steps(entry.processes(), self.drain_grace_s)
        if forget:
            shutil.rmtree(entry.directory, ignore_errors=True)
        return True

    def _write_state(self, entry: _LocalPipeline) -> None:
        state = {"owner_pid": os.getpid(), "pipeline_id": entry.pipeline.pipeline_id,
                 "steps": {(str(p.step_id) if p.replica == 0 else f"{p.step_id}/{p.replica}"):
                           {"pid": p.child.pid, "config": str(p.config_path),
                            "port": p.port, "metrics_port": p.metrics_port,
                            "http_port": p.http_port}
                           for p in entry.processes()}}
        (entry.directory / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")

    def reap_orphans(self) -> list[int]:
        """Stops step processes a dead topology service left under the state dir; returns pids.

        A process is only touched if its command line still names the config file recorded
        for it (pids get reused) and the service that started it is gone.
        """
        reaped: list[int] = []
        for state_file in self.state_dir.glob(f"*/{STATE_FILE}"):
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            owner = int(state.get("owner_pid", 0))
            if owner != os.getpid() and process_alive(owner):
                continue  # another running service owns these steps
            for step in (state.get("steps") or {}).values():
                pid, config = int(step.get("pid", 0)), str(step.get("config", ""))
                if reap(pid, config, self.drain_grace_s):
                    reaped.append(pid)
            if not (state_file.parent / PIPELINE_FILE).exists():  # nothing to bring back
                shutil.rmtree(state_file.parent, ignore_errors=True)
        return reaped


def _process_name(pipeline_id: str, step: Step | _StepProcess, replicas: int,
                  replica: int | None = None) -> str:
    """``<pipeline>-step-<N>``, with ``-<r>`` per replica when the step has more than one."""
    name = step_name(pipeline_id, step.step_id if isinstance(step, _StepProcess) else step.id)
    if replica is None:
        replica = step.replica if isinstance(step, _StepProcess) else 0
    return name if replicas == 1 else f"{name}-{replica}"


def pipeline_json(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as pipeline JSON that parses back to the same pipeline (same fingerprint)."""
    steps = []
    for s in pipeline.steps:
        step: dict[str, Any] = {"id": s.id, "type": s.type, "params": s.params,
                                "next_step": list(s.next_step), "replicas": s.replicas,
                                "threads": s.threads, "gpu": s.gpu}
        if s.preferred_next is not None:
            step["preferred_next"] = s.preferred_next
        if s.route:
            step["route"] = s.route
        if s.resources is not None:
            step["resources"] = s.resources.model_dump(exclude_none=True)
        if s.volumes:
            step["volumes"] = [v.model_dump(exclude_none=True) for v in s.volumes]
        if s.node_selector:
            step["nodeSelector"] = s.node_selector
        if s.autoscale is not None:
            step["autoscale"] = s.autoscale.model_dump()
        steps.append(step)
    data: dict[str, Any] = {"name": pipeline.pipeline_id, "steps": steps}
    for key, value in (("namespace", pipeline.namespace), ("image", pipeline.image)):
        if value is not None:
            data[key] = value
    if pipeline.colocate:
        data["colocate"] = True
    return data


def _saved_spec(directory: Path) -> dict[str, Any] | None:
    """The pipeline JSON as submitted, saved by the previous service (None if it was not)."""
    try:
        spec = json.loads((directory / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _saved_ports(directory: Path) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(step id, replica) -> (port, metrics port, HTTP port) recorded by the previous
    service."""
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ports = {}
    for key, step in (state.get("steps") or {}).items():
        sid, _, replica = str(key).partition("/")
        if sid.isdigit() and (replica or "0").isdigit() and "port" in step:
            ports[(int(sid), int(replica or 0))] = (int(step["port"]),
                                                    int(step.get("metrics_port", 0)),
                                                    int(step.get("http_port", 0)))
    return ports


def _reuse(ports: tuple[int, int, int] | None, fresh: Any) -> tuple[int, int, int]:
    """The saved ports when all are free now, else three fresh ones."""
    if ports is not None and all(p and port_free(p) for p in ports):
        return ports
    return next(fresh), next(fresh), next(fresh)


def _serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _stop_steps(procs: list[_StepProcess], grace_s: float) -> None:
    stop_all([proc.child.process for proc in procs], grace_s)

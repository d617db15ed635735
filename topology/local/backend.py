"""Local backend: `replicas` `stepchain step serve` processes per step on free loopback ports.

What the Kubernetes backend keeps in ConfigMaps lives on disk under the state directory
(:mod:`topology.local.state`); each step replica is a process started by
:mod:`topology.local.launch`.

Each step serves Prometheus ``/metrics`` on a loopback port of its own, reported with its
status (``metrics``), which the console, ``stepchain top`` and the advice API scrape, and its
HTTP face (``POST /process``) on another; the entry step's is the pipeline's
``http_entrypoint``. A step that an update changes restarts on the ports it had, so the
entry addresses stay what clients were given.

A step with ``replicas: R`` runs R processes, each on its own port; discovery lists all of
them, so upstream steps' round_robin channels (``ipv4:127.0.0.1:p1,127.0.0.1:p2``) spread
requests over them, and the entry point of a pipeline whose entry step has replicas is such a
list too. Steps are started with the installed ``stepchain`` command. Readiness is the steps'
gRPC health. The process supervision lives in :mod:`topology.local.supervisor`: a step whose
process exited on its own is restarted on the same port (so the discovery file stays right;
each replica on its own), after a backoff that doubles with each restart; a step that exits more than MAX_RESTARTS times within
RESTART_WINDOW_S is left stopped and reported as failed with the end of its log. Processes are
stopped (SIGTERM, then SIGKILL after the drain grace) on DELETE and when the service shuts down.

Steps never outlive the service, however it ends: each inherits the read end of a lifeline pipe
whose only write end the service holds (:mod:`stepsvc.step.lifeline`); when the service dies
(SIGKILL included) the kernel closes it and every step stops within about two seconds. A service that
starts on the same state dir stops whatever a predecessor still left running, then brings back
the pipelines it had (DELETE forgets a pipeline; a shutdown does not). A step with
``replicas: 0`` runs no process and is absent from discovery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepsvc.ports import free_ports, port_free
from topology.backend import ApplyResult, BackendError, PipelineStatus, StepStatus
from topology.local import state
from topology.local.launch import (
    Launch,
    PortTaken,
    StepProcess,
    discovery_entry,
    entry_details,
    process_name,
    serving,
    start_step,
    step_target,
    stop_steps,
    wait_ready,
)
from topology.local.supervisor import RestartPolicy, SupervisorLoop
from topology.pipeline.dump import step_config, step_config_text
from topology.pipeline.graph import Pipeline
from topology.pipeline.model import PipelineInvalid

__all__ = ["LocalBackend"]

#: Seconds a local step drains after SIGTERM before it is killed.
LOCAL_DRAIN_GRACE_S = 5
READY_TIMEOUT_S = 60.0
#: Tries to start a step whose free port was taken before it could bind.
PORT_ATTEMPTS = 3
#: How often the supervisor looks for step processes that exited.
SUPERVISE_INTERVAL_S = 0.5

log = logging.getLogger(__name__)


@dataclass
class _LocalPipeline:
    pipeline: Pipeline
    directory: Path
    #: step id -> its replicas, in replica order
    steps: dict[int, list[StepProcess]]

    def processes(self) -> list[StepProcess]:
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
        self.state_dir = Path(state_dir).resolve()  # steps run in sub-folders of it
        self.otel_env = dict(otel_env or {})
        self.drain_grace_s = drain_grace_s
        self.ready_timeout_s = ready_timeout_s
        self.restart_policy = restart_policy
        self._pipelines: dict[str, _LocalPipeline] = {}
        self._lock = threading.RLock()
        # Steps read the lifeline; only this process holds its write end (not inheritable).
        self._lifeline_read, self._lifeline_write = os.pipe()
        self._launch = Launch(drain_grace_s=drain_grace_s, restart_policy=restart_policy,
                              lifeline_fd=self._lifeline_read, otel_env=self.otel_env)
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
            stop_steps([p for sid, procs in old.items() if sid not in keep for p in procs],
                       self.drain_grace_s)
            for sid in old:
                if sid not in keep:
                    for stale in directory.glob(f"step-{sid}[.-]*"):
                        stale.unlink(missing_ok=True)
            # Every process gets the discovery file, which only lists steps once all are known.
            discovery = directory / state.DISCOVERY_FILE
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
            state.save_pipeline(directory, pipeline)
            while True:
                fresh = iter(free_ports(3 * sum(wanted[sid].replicas for sid in to_start)))
                for sid in to_start:
                    had = reuse.pop(sid, [])
                    started[sid] = [
                        start_step(self._launch, pipeline, wanted[sid], replica,
                                   had[replica] if replica < len(had)
                                   else _reuse(preferred.get((sid, replica)) if attempt == 1
                                               else None, fresh),
                                   texts[sid], directory, discovery)
                        for replica in range(wanted[sid].replicas)]
                self._write_state(entry)
                # A step scaled to zero replicas is inactive: absent from discovery.
                write_static_discovery(discovery, {sid: discovery_entry(procs)
                                                   for sid, procs in started.items() if procs})
                try:
                    wait_ready(pipeline.pipeline_id,
                               [p for sid in new_ids for p in started[sid]], self.ready_timeout_s)
                    break
                except PortTaken as exc:
                    # Another process took the free port between our check and the step's
                    # bind: start that step's replicas again on other ports.
                    if attempt >= PORT_ATTEMPTS:
                        self._remove(pipeline.pipeline_id)
                        raise BackendError(str(exc)) from None
                    stop_steps(started[exc.step_id], self.drain_grace_s)
                    to_start, attempt = [exc.step_id], attempt + 1
                except BackendError:
                    self._remove(pipeline.pipeline_id)
                    raise
            resources: list[dict[str, Any]] = [
                {"kind": "Process",
                 "name": process_name(pipeline.pipeline_id, p.step_id, len(procs), p.replica),
                 "pid": p.child.pid, "address": p.address, "config": str(p.config_path)}
                for sid, procs in sorted(started.items()) for p in procs]
            resources.append({"kind": "DiscoveryFile", "name": str(discovery)})
            return ApplyResult(pipeline_id=pipeline.pipeline_id, resources=resources,
                               entrypoint=(started[pipeline.entry_step][0].address
                                           if started[pipeline.entry_step] else None),
                               http_entrypoint=(started[pipeline.entry_step][0].http_url
                                                if started[pipeline.entry_step] else None),
                               details={"state_dir": str(directory),
                                        **entry_details(started[pipeline.entry_step])})

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        """Readiness of each step from its gRPC health (and whether its process runs)."""
        with self._lock:
            entry = self._pipelines.get(pipeline_id)
            if entry is None:
                return None
            steps = []
            for sid, procs in sorted(entry.steps.items()):
                ready = sum(p.child.running() and serving(p.address) for p in procs)
                failures = [p.child.failure for p in procs if p.child.failure]
                # replicas: 0 -> no process, not ready, no address (as a Deployment scaled to 0)
                steps.append(StepStatus(step_id=sid, type=entry.pipeline.step(sid).type,
                                        ready=bool(procs) and ready == len(procs),
                                        ready_replicas=ready,
                                        replicas=len(procs), address=step_target(procs) or None,
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
                details={"state_dir": str(entry.directory), **entry_details(entry_procs),
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
        for directory in state.saved_pipelines(self.state_dir):
            if directory.name in self._pipelines:
                continue
            try:
                pipeline = state.load_pipeline(directory)
                self._preferred_ports[pipeline.pipeline_id] = state.saved_ports(directory)
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

    def _remove(self, pipeline_id: str, *, forget: bool = True) -> bool:
        entry = self._pipelines.pop(pipeline_id, None)
        if entry is None:
            return False
        stop_steps(entry.processes(), self.drain_grace_s)
        if forget:
            shutil.rmtree(entry.directory, ignore_errors=True)
        return True

    def _write_state(self, entry: _LocalPipeline) -> None:
        state.write_processes(entry.directory, entry.pipeline.pipeline_id, entry.processes())

    def reap_orphans(self) -> list[int]:
        """Stops step processes a dead topology service left under the state dir; returns pids
        (see :func:`topology.local.state.reap_orphans`)."""
        return state.reap_orphans(self.state_dir, self.drain_grace_s)


def _reuse(ports: tuple[int, int, int] | None, fresh: Any) -> tuple[int, int, int]:
    """The saved ports when all are free now, else three fresh ones."""
    if ports is not None and all(p and port_free(p) for p in ports):
        return ports
    return next(fresh), next(fresh), next(fresh)

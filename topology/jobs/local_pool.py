"""A job's workers as local processes: ``stepchain jobs run`` per share, supervised.

The local backend's way to run a job: worker ``i`` of ``n`` is a ``stepchain jobs run --index i
--count n`` process calling the pipeline's entry step on loopback. A worker that exits non-zero
(or is SIGKILLed) is restarted with the local backend's backoff (:mod:`topology.supervisor`);
one that exits 0 finished its share and stays stopped; one that keeps exiting fails the job
with the end of its log. Like the step processes, workers hold the read end of a lifeline pipe
whose write end only the service has, so they stop when the service dies, however it dies;
the next service starts them again and they do what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from stepsvc.lifeline import LIFELINE_ENV
from topology.backend import PipelineStatus
from topology.jobs.manifest import JobManifest
from topology.local_backend import installed_stepchain
from topology.supervisor import RestartPolicy, SupervisedProcess, SupervisorLoop, stop_all

log = logging.getLogger(__name__)

#: Seconds a stopped worker gets to finish its requests in flight before SIGKILL.
STOP_GRACE_S = 10.0
SUPERVISE_INTERVAL_S = 0.5
#: Workers a job gets on this machine when it does not ask (at most its concurrency).
DEFAULT_WORKERS = 2


class LocalWorkerPool:
    """Worker processes of the jobs of one service (see the module)."""

    name = "local"
    default_workers = DEFAULT_WORKERS

    def __init__(self, log_dir: Path, environ: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.environ = dict(environ)
        self._lock = threading.Lock()
        self._jobs: dict[str, list[SupervisedProcess]] = {}
        self._lifeline_read, self._lifeline_write = os.pipe()
        os.set_inheritable(self._lifeline_write, False)
        self._loop = SupervisorLoop(self._supervise, SUPERVISE_INTERVAL_S, "job-workers")

    def command(self, manifest: JobManifest, index: int, count: int, target: str) -> list[str]:
        """The command line of one worker."""
        return [*installed_stepchain(), "jobs", "run", "--output", manifest.output,
                "--job", manifest.id, "--index", str(index), "--count", str(count),
                "--target", target]

    def start(self, manifest: JobManifest, pipeline: PipelineStatus) -> None:
        if pipeline.entrypoint is None:
            raise RuntimeError(f"pipeline {pipeline.pipeline_id!r} runs no entry process")
        count = max(1, manifest.options.workers)
        directory = self.log_dir / manifest.id
        directory.mkdir(parents=True, exist_ok=True)
        env = {**self.environ, LIFELINE_ENV: str(self._lifeline_read),
               "PYTHONUNBUFFERED": "1"}
        with self._lock:
            if self._running(manifest.id):
                return
            self._jobs[manifest.id] = [
                SupervisedProcess.start(
                    f"worker {i} of job {manifest.id}",
                    self.command(manifest, i, count, pipeline.entrypoint), env, directory,
                    directory / f"worker-{i}.log", RestartPolicy(max_restarts=8),
                    pass_fds=(self._lifeline_read,))
                for i in range(count)]
        log.info("job %s: started %d worker(s) against %s", manifest.id, count,
                 pipeline.entrypoint)

    def stop(self, job_id: str) -> None:
        with self._lock:
            processes = self._jobs.pop(job_id, [])
        if processes:
            stop_all([p.process for p in processes], STOP_GRACE_S)

    def running(self, job_id: str) -> bool:
        with self._lock:
            return self._running(job_id)

    def _running(self, job_id: str) -> bool:
        return any(p.failure is None and p.process.poll() != 0
                   for p in self._jobs.get(job_id, []))

    def failure(self, job_id: str) -> str | None:
        with self._lock:
            return next((p.failure for p in self._jobs.get(job_id, []) if p.failure), None)

    def pids(self, job_id: str) -> list[int]:
        """The pids of the job's running workers (for tests and the chaos example)."""
        with self._lock:
            return [p.pid for p in self._jobs.get(job_id, []) if p.running()]

    def _supervise(self) -> None:
        now = time.monotonic()
        with self._lock:
            processes = [p for group in self._jobs.values() for p in group]
        for process in processes:
            if process.process.poll() == 0:
                continue  # its share is done
            process.supervise(now)

    def close(self) -> None:
        self._loop.close()
        with self._lock:
            jobs, self._jobs = self._jobs, {}
        stop_all([p.process for group in jobs.values() for p in group], STOP_GRACE_S)
        for fd in (self._lifeline_write, self._lifeline_read):
            with contextlib.suppress(OSError):
                os.close(fd)

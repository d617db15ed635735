"""A job's workers as local processes: ``stepchain jobs run`` per share, supervised.

The local backend's way to run a job: worker ``i`` of ``n`` is a ``stepchain jobs run --index i
--count n`` process calling the pipeline's entry step on loopback. A worker that exits non-zero
(or is SIGKILLed) is restarted with the local backend's backoff (:mod:`topology.local.supervisor`);
one that exits 0 finished its share and stays stopped; one that keeps exiting fails the job
with the end of its log. Like the step processes, workers hold the read end of a lifeline pipe
whose write end only the service has, so they stop when the service dies, however it dies;
the next service starts them again and they do what is left.

A job's first output should not wait for an interpreter to start and import NumPy, gRPC and
the store library (seconds on a busy machine): the pool keeps ``default_workers`` *standby*
workers (``stepchain jobs run --standby``) that have imported everything and wait on their
stdin for an assignment; a job takes them and new standbys are started behind it. A standby
that is assigned becomes an ordinary supervised worker (a restart runs the full command line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from stepsvc.step.lifeline import LIFELINE_ENV
from topology.backend import PipelineStatus
from topology.jobs.manifest import JobManifest
from topology.local.launch import installed_stepchain
from topology.local.supervisor import RestartPolicy, SupervisedProcess, SupervisorLoop, stop_all

#: Restarts of one worker within the supervisor's window before the job fails.
MAX_WORKER_RESTARTS = 8

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

    def __init__(self, log_dir: Path, environ: Mapping[str, str], *,
                 standby: int | None = None) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.environ = dict(environ)
        self.standby = self.default_workers if standby is None else standby
        self._lock = threading.Lock()
        self._jobs: dict[str, list[SupervisedProcess]] = {}
        self._standbys: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._serial = 0
        self._closed = False
        self._lifeline_read, self._lifeline_write = os.pipe()
        os.set_inheritable(self._lifeline_write, False)
        self._env = {**self.environ, LIFELINE_ENV: str(self._lifeline_read),
                     "PYTHONUNBUFFERED": "1"}
        self._loop = SupervisorLoop(self._supervise, SUPERVISE_INTERVAL_S, "job-workers")

    def _spawn_standby(self) -> None:
        """One more standby worker (under the lock)."""
        self._serial += 1
        log_path = self.log_dir / f"standby-{os.getpid()}-{self._serial}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [*installed_stepchain(), "jobs", "run", "--standby"], stdin=subprocess.PIPE,
                stdout=log_file, stderr=subprocess.STDOUT, env=self._env, cwd=self.log_dir,
                start_new_session=True, pass_fds=(self._lifeline_read,))
        self._standbys.append((process, log_path))

    def _take_standby(self, assignment: dict[str, object], log_path: Path
                      ) -> subprocess.Popen[bytes] | None:
        """A standby worker given `assignment` (its log moved to `log_path`); None when none
        is ready."""
        while self._standbys:
            process, standby_log = self._standbys.pop(0)
            if process.poll() is not None or process.stdin is None:
                continue
            try:
                process.stdin.write((json.dumps(assignment) + "\n").encode())
                process.stdin.close()
            except OSError:
                continue
            with contextlib.suppress(OSError):
                standby_log.replace(log_path)  # it writes on into the job's worker log
            return process
        return None

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
        warm = 0
        with self._lock:
            if self._running(manifest.id):
                return
            workers = []
            for i in range(count):
                command = self.command(manifest, i, count, pipeline.entrypoint)
                name = f"worker {i} of job {manifest.id}"
                log_path = directory / f"worker-{i}.log"
                policy = RestartPolicy(max_restarts=MAX_WORKER_RESTARTS)
                process = self._take_standby(
                    {"output": manifest.output, "job": manifest.id, "index": i,
                     "count": count, "target": pipeline.entrypoint}, log_path)
                if process is None:
                    workers.append(SupervisedProcess.start(
                        name, command, self._env, directory, log_path, policy,
                        pass_fds=(self._lifeline_read,)))
                    continue
                warm += 1
                workers.append(SupervisedProcess(
                    name=name, command=command, env=self._env, cwd=directory,
                    log_path=log_path, policy=policy, process=process,
                    pass_fds=(self._lifeline_read,)))
            self._jobs[manifest.id] = workers
        log.info("job %s: started %d worker(s) (%d from standby) against %s", manifest.id,
                 count, warm, pipeline.entrypoint)

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
            if self._closed:
                return
            self._standbys = [(p, path) for p, path in self._standbys if p.poll() is None]
            while len(self._standbys) < self.standby:
                self._spawn_standby()
            processes = [p for group in self._jobs.values() for p in group]
        for process in processes:
            if process.process.poll() == 0:
                continue  # its share is done
            process.supervise(now)

    def close(self) -> None:
        self._loop.close()
        with self._lock:
            self._closed = True
            jobs, self._jobs = self._jobs, {}
            standbys, self._standbys = self._standbys, []
        for process, _ in standbys:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # end of input: a standby exits
        stop_all([p.process for group in jobs.values() for p in group]
                 + [p for p, _ in standbys], STOP_GRACE_S)
        for _, log_path in standbys:
            with contextlib.suppress(OSError):
                log_path.unlink()
        for fd in (self._lifeline_write, self._lifeline_read):
            with contextlib.suppress(OSError):
                os.close(fd)

"""The service's side of jobs: submit, look up, list, cancel, and see each job to its end.

The controller holds no job state of its own that a crash could lose: it finds the jobs in the
registry, reads each one's state from its output store, and drives it forward on a monitor
thread (:meth:`JobsController.tick`, every second):

- a job without running workers and not finished gets its workers started (after a restart of
  the service this *is* the resume: the workers list what is done and do the rest);
- when every worker has marked its share done, the job's end state is written
  (``succeeded`` when every input has an output, else ``failed``);
- a canceled job's workers are stopped, then ``canceled`` is written;
- a job whose workers cannot run (they keep exiting, the pipeline is gone) ends ``failed``
  with the reason.

Where workers run is a :class:`WorkerPool`: processes of the local backend
(:mod:`topology.jobs.local_pool`) or a Kubernetes Indexed Job (:mod:`topology.jobs.kube_job`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from topology.backend import PipelineStatus
from topology.jobs.locations import Location, LocationInvalid, parse_location
from topology.jobs.manifest import TERMINAL, JobFiles, JobManifest, JobOptions, new_job_id
from topology.jobs.plan import Progress, end_state, job_progress
from topology.jobs.registry import JobRecord, JobRegistry, request_digest
from topology.jobs.store import Store, StoreError, open_store
from topology.jobs.submission import JobConflict, JobInvalid, create_job, with_defaults

log = logging.getLogger(__name__)

TICK_S = 1.0
#: Failed items listed in a job's status (the count covers them all).
FAILED_ITEMS_SHOWN = 50
#: A status is recomputed from the store at most this often.
STATUS_TTL_S = 0.5


class WorkerPool(Protocol):
    """Where a job's workers run."""

    name: str
    #: Workers a job gets when it does not ask for a number.
    default_workers: int

    def start(self, manifest: JobManifest, pipeline: PipelineStatus) -> None:
        """Starts the job's workers (all of ``manifest.options.workers``); idempotent."""
        ...

    def stop(self, job_id: str) -> None:
        """Stops the job's workers (SIGTERM: in-flight requests finish); idempotent."""
        ...

    def running(self, job_id: str) -> bool:
        """Whether any worker of the job runs or is about to be restarted."""
        ...

    def failure(self, job_id: str) -> str | None:
        """Why the job's workers cannot run any more (None while they can)."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class JobRequest:
    """A job as asked for."""

    pipeline: str
    input: str
    output: str
    options: JobOptions = field(default_factory=JobOptions)


@dataclass(frozen=True)
class JobStatus:
    """A job as the API shows it."""

    manifest: JobManifest
    progress: Progress
    failed_items: list[dict[str, Any]]
    error: str | None = None
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        m, p = self.manifest, self.progress
        return {
            "id": m.id, "pipeline": m.pipeline, "input": m.input, "output": m.output,
            "state": p.state, "created": m.created, "finished": self.finished,
            "counts": {"total": p.total, "done": p.done, "failed": p.failed,
                       "retried": p.retried, "remaining": p.remaining},
            "throughput_per_s": None if p.throughput is None else round(p.throughput, 3),
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
            "failed_items": self.failed_items, "error": self.error,
            "options": asdict(m.options),
        }


class JobNotFound(KeyError):
    """No job has this id."""


class JobsController:
    """Jobs of one topology service (see the module)."""

    def __init__(self, registry: JobRegistry, pool: WorkerPool,
                 pipelines: Callable[[str], PipelineStatus | None],
                 environ: Mapping[str, str], *, tick_s: float = TICK_S) -> None:
        self.registry = registry
        self.pool = pool
        self.pipelines = pipelines
        self.environ = dict(environ)
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._active: dict[str, JobManifest] = {}
        self._manifests: dict[str, JobManifest] = {}
        self._expected: dict[str, frozenset[str]] = {}
        self._status: dict[str, tuple[float, JobStatus]] = {}
        self._stores: dict[tuple[str, str], Store] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Finds the jobs a previous service left and starts the monitor (which resumes the
        unfinished ones)."""
        for record in self.registry.all():
            try:
                files = self._files(record.id, record.output)
                manifest = files.read_manifest()
                self._manifests[record.id] = manifest
                if files.final() is None:
                    self._active[record.id] = manifest
            except StoreError as exc:
                log.warning("job %s: cannot read its state (%s); skipped", record.id, exc)
        if self._active:
            log.info("resuming %d unfinished job(s): %s", len(self._active),
                     ", ".join(sorted(self._active)))
        self._thread = threading.Thread(target=self._run, name="jobs-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the monitor and the workers this service started (they resume next start)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.pool.close()

    def _run(self) -> None:
        while not self._closed.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # the monitor must outlive one bad round (a store hiccup)
                log.exception("jobs monitor round failed; retrying")

    # -- the API --------------------------------------------------------------------------

    def submit(self, request: JobRequest, idempotency_key: str | None = None,
               body: dict[str, Any] | None = None) -> tuple[JobStatus, bool]:
        """Creates the job (or, for a repeated Idempotency-Key, returns the one it made).

        Returns the status and whether it was created. JobInvalid names the field to fix;
        JobConflict when the key came with another request before.
        """
        pipeline = self.pipelines(request.pipeline)
        if pipeline is None:
            raise JobInvalid("pipeline", f"no pipeline {request.pipeline!r}; create it first "
                                         "(POST /pipeline) or fix the id (GET /pipelines)")
        options = with_defaults(request.options, workers=self.pool.default_workers)
        job_id = new_job_id()
        if idempotency_key is not None:
            digest = request_digest(body if body is not None else asdict(request))
            bound, bound_digest = self.registry.claim_key(idempotency_key, job_id, digest)
            if bound_digest != digest:
                raise JobConflict(f"Idempotency-Key {idempotency_key!r} was used for another "
                                  f"request (job {bound}); use a new key for a new job")
            if bound != job_id:
                existing = self.status(bound)
                if existing is not None:
                    return existing, False
                job_id = bound  # claimed by a request that has not written its job yet
        try:
            manifest = create_job(pipeline=request.pipeline, input_uri=request.input,
                                  output_uri=request.output, options=options,
                                  environ=self.environ, job_id=job_id,
                                  idempotency_key=idempotency_key)
        except JobInvalid:
            if idempotency_key is not None:
                self.registry.release_key(idempotency_key)
            raise
        self.registry.add(JobRecord(id=manifest.id, output=manifest.output,
                                    created=manifest.created))
        with self._lock:
            self._manifests[manifest.id] = manifest
            self._active[manifest.id] = manifest
        # Start the workers now, not at the next tick: a fresh job has no state to read yet.
        try:
            self.pool.start(manifest, pipeline)
        except Exception as exc:  # the monitor tries again and ends the job if it cannot
            log.warning("job %s: starting its workers failed (%s); retrying", manifest.id, exc)
        return JobStatus(manifest=manifest, progress=Progress(
            state="queued", total=manifest.total, done=0, failed=0, retried=0,
            throughput=None, eta_s=None), failed_items=[]), True

    def status(self, job_id: str, *, fresh: bool = False) -> JobStatus | None:
        """The job's status from its store; None when there is no such job."""
        manifest = self._manifest(job_id)
        if manifest is None:
            return None
        now = time.time()
        with self._lock:
            cached = self._status.get(job_id)
        if cached is not None and not fresh and (
                now - cached[0] < STATUS_TTL_S or cached[1].progress.state in TERMINAL):
            return cached[1]
        status = self._compute(manifest, now)
        with self._lock:
            self._status[job_id] = (now, status)
        return status

    def list(self) -> list[JobStatus]:
        """Every job, newest first."""
        out = []
        for record in reversed(self.registry.all()):
            status = self.status(record.id)
            if status is not None:
                out.append(status)
        return out

    def cancel(self, job_id: str) -> JobStatus:
        """Asks the job to stop (its workers finish or abandon what is in flight; nothing
        half-written becomes an output); a finished job stays as it ended."""
        manifest = self._manifest(job_id)
        if manifest is None:
            raise JobNotFound(job_id)
        files = self._files(job_id, manifest.output)
        if files.final() is None:
            files.request_cancel()
            self.pool.stop(job_id)
            self._advance(manifest)
        status = self.status(job_id, fresh=True)
        assert status is not None
        return status

    # -- the monitor ----------------------------------------------------------------------

    def tick(self) -> None:
        """One round over the unfinished jobs (see the module)."""
        with self._lock:
            active = list(self._active.values())
        for manifest in active:
            try:
                self._advance(manifest)
            except Exception as exc:  # a store or API server hiccup: the next round retries
                log.warning("job %s: %s (retrying next round)", manifest.id, exc)

    def _advance(self, manifest: JobManifest) -> None:
        files = self._files(manifest.id, manifest.output)
        if files.final() is not None:
            self._finished(manifest.id)
            return
        if files.cancel_requested():
            self.pool.stop(manifest.id)
            if not self.pool.running(manifest.id):
                self._end(manifest, files, "canceled")
            return
        if len(files.shards_done()) >= manifest.options.workers:
            done, failed = self._counts(manifest, files)
            self._end(manifest, files, end_state(manifest.total, done, failed) or "failed",
                      error=None if done + failed >= manifest.total else
                      f"the workers finished with {manifest.total - done - failed} input(s) "
                      "neither written nor failed")
            return
        failure = self.pool.failure(manifest.id)
        if failure is not None:
            self._end(manifest, files, "failed", error=failure)
            return
        if not self.pool.running(manifest.id):
            pipeline = self.pipelines(manifest.pipeline)
            if pipeline is None:
                self._end(manifest, files, "failed",
                          error=f"pipeline {manifest.pipeline!r} no longer exists")
                return
            self.pool.start(manifest, pipeline)

    def _end(self, manifest: JobManifest, files: JobFiles, state: str,
             error: str | None = None) -> None:
        self.pool.stop(manifest.id)
        done, failed = self._counts(manifest, files)
        files.write_final(state, {"done": done, "failed": failed, "error": error})
        files.store.sweep_staging(files.output.prefix, older_than_s=0)
        files.store.delete_prefix(files.key("tiles/"))
        log.info("job %s %s: %d of %d written, %d failed%s", manifest.id, state, done,
                 manifest.total, failed, f" ({error})" if error else "")
        self._finished(manifest.id)

    def _finished(self, job_id: str) -> None:
        with self._lock:
            self._active.pop(job_id, None)
            self._status.pop(job_id, None)
        self.pool.stop(job_id)

    # -- reading a job's state ------------------------------------------------------------

    def _manifest(self, job_id: str) -> JobManifest | None:
        with self._lock:
            manifest = self._manifests.get(job_id)
        if manifest is not None:
            return manifest
        record = self.registry.get(job_id)
        if record is None:
            return None
        manifest = self._files(job_id, record.output).read_manifest()
        with self._lock:
            self._manifests[job_id] = manifest
        return manifest

    def _files(self, job_id: str, output_uri: str) -> JobFiles:
        try:
            output = parse_location(output_uri, field="output").as_prefix()
        except LocationInvalid as exc:
            raise StoreError(str(exc)) from None
        return JobFiles(self._store(output), output, job_id)

    def _store(self, location: Location) -> Store:
        key = (location.scheme, location.bucket)
        with self._lock:
            if key not in self._stores:
                self._stores[key] = open_store(location, self.environ)
            return self._stores[key]

    def _expected_outputs(self, manifest: JobManifest, files: JobFiles) -> frozenset[str]:
        with self._lock:
            expected = self._expected.get(manifest.id)
        if expected is None:
            expected = frozenset(item.output_key for item in files.items(manifest.total))
            with self._lock:
                self._expected[manifest.id] = expected
        return expected

    def _counts(self, manifest: JobManifest, files: JobFiles) -> tuple[int, int]:
        expected = self._expected_outputs(manifest, files)
        done = sum(1 for key in files.output_times() if key in expected)
        return done, len(files.failed_keys())

    def _compute(self, manifest: JobManifest, now: float) -> JobStatus:
        files = self._files(manifest.id, manifest.output)
        final = files.final()
        workers = files.workers()
        failed_keys = files.failed_keys()
        progress = job_progress(
            total=manifest.total, output_times=files.output_times(),
            expected_outputs=self._expected_outputs(manifest, files),
            failed_inputs=len(failed_keys), retried=sum(int(w.get("retried", 0))
                                                        for w in workers),
            created=manifest.created, now=now,
            final_state=None if final is None else str(final["state"]),
            cancel_requested=final is None and files.cancel_requested(),
            started=bool(workers))
        if final is not None:
            progress = replace(progress, throughput=_final_rate(progress, manifest, final),
                               eta_s=0.0 if progress.remaining == 0 else None)
        return JobStatus(manifest=manifest, progress=progress,
                         failed_items=files.failures(limit=FAILED_ITEMS_SHOWN),
                         error=None if final is None else final.get("error"),
                         finished=None if final is None else float(final["at"]))


def _final_rate(progress: Progress, manifest: JobManifest, final: dict[str, Any]) -> float | None:
    """A finished job's average rate: outputs over its whole run."""
    elapsed = float(final["at"]) - manifest.created
    return progress.done / elapsed if elapsed > 0 and progress.done else None

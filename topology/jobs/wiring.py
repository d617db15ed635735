"""The jobs of a topology service: its controller, built for its backend.

Settings (environment of the service; the chart sets them):

=============================  =================================================================
``STEPCHAIN_JOBS_STORE``       where the service indexes its jobs (default
                               ``file://<state-dir>/jobs/``; in Kubernetes an ``s3://`` prefix,
                               so a restarted pod finds its jobs again)
``STEPCHAIN_STORE_SECRET``     Kubernetes: the Secret with ``AWS_ACCESS_KEY_ID`` and
                               ``AWS_SECRET_ACCESS_KEY`` the worker pods get
``STEPCHAIN_JOB_PARALLELISM``  workers of a job that does not ask (default 2)
``STEPCHAIN_JOB_CPU``,         Kubernetes: a worker pod's CPU request and memory limit
``STEPCHAIN_JOB_MEMORY``       (default ``500m``, ``512Mi``)
``AWS_*``                      the stores' endpoint, region and credentials (:mod:`.aws`)
=============================  =================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from topology.backend import Backend, PipelineStatus
from topology.jobs.controller import JobsController, WorkerPool
from topology.jobs.locations import LocationInvalid, parse_location
from topology.jobs.registry import JobRegistry
from topology.jobs.store import open_store

JOBS_STORE_ENV = "STEPCHAIN_JOBS_STORE"


def jobs_store_uri(state_dir: Path, environ: Mapping[str, str]) -> str:
    """The jobs store: ``STEPCHAIN_JOBS_STORE``, else ``file://<state-dir>/jobs/``."""
    return environ.get(JOBS_STORE_ENV) or f"file://{state_dir.resolve()}/jobs/"


def _workers(environ: Mapping[str, str], default: int) -> int:
    text = environ.get("STEPCHAIN_JOB_PARALLELISM", "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"STEPCHAIN_JOB_PARALLELISM: {text!r} is not a positive integer")
    return int(text)


def make_pool(backend: Backend, state_dir: Path, environ: Mapping[str, str], *,
              step_image: str) -> WorkerPool:
    """Local processes for the local backend, Indexed Jobs for the Kubernetes one."""
    if backend.name == "kubernetes":
        from stepsvc.routing.kubernetes import load_api_client
        from topology.jobs.kube_job import JobPodOptions, KubeJobPool

        options = JobPodOptions(
            namespace=backend.namespace, image=step_image,
            store_secret=environ.get("STEPCHAIN_STORE_SECRET", ""),
            store_env=dict(environ), default_workers=_workers(environ, 2),
            cpu=environ.get("STEPCHAIN_JOB_CPU") or "500m",
            memory=environ.get("STEPCHAIN_JOB_MEMORY") or "512Mi")
        api_client = getattr(backend, "api_client", None) or load_api_client(
            "the jobs of the kubernetes backend")
        return KubeJobPool(api_client, options)
    from topology.jobs.local_pool import LocalWorkerPool

    pool = LocalWorkerPool(state_dir / "job-logs", environ)
    pool.default_workers = _workers(environ, pool.default_workers)
    return pool


def make_controller(backend: Backend, state_dir: Path, environ: Mapping[str, str], *,
                    step_image: str,
                    pipelines: Callable[[str], PipelineStatus | None] | None = None
                    ) -> JobsController:
    """The controller over `backend`'s pipelines (ValueError for unusable settings)."""
    uri = jobs_store_uri(state_dir, environ)
    try:
        location = parse_location(uri, field=JOBS_STORE_ENV).as_prefix()
    except LocationInvalid as exc:
        raise ValueError(f"{JOBS_STORE_ENV}: {exc}") from None
    registry = JobRegistry(open_store(location, environ), location)
    return JobsController(registry, make_pool(backend, state_dir, environ,
                                              step_image=step_image),
                          pipelines or backend.status, environ)

"""A job's workers on Kubernetes: one Indexed Job, pod ``i`` running worker ``i`` of ``n``.

:func:`render_job` is pure: the Job the service creates for a job (``completionMode:
Indexed``, ``completions = parallelism = workers``; each pod's ``JOB_COMPLETION_INDEX`` is its
share; ``backoffLimitPerIndex`` lets the Job controller restart a failed pod of one share
without failing the others). The pods run the step image's ``stepchain jobs run`` against the
pipeline's entry Service, with the store's endpoint and region from the service's own
environment and the credentials from the store Secret the chart makes (``envFrom``), under the
restricted security profile and without a service-account token (they call no Kubernetes API).

:class:`KubeJobPool` creates, reads and deletes that Job: the store holds the job's progress,
the Job controller keeps its pods running; nothing else queues work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from topology.backend import BackendError, PipelineStatus
from topology.jobs.manifest import JobManifest
from topology.kube.names import MANAGED_BY
from topology.kube.objects import DEFAULT_STEP_IMAGE, RUN_AS_USER

log = logging.getLogger(__name__)

#: Store settings the pods get from the service's environment (the credentials come from the
#: Secret instead).
STORE_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
JOB_ID_LABEL = "stepchain.io/job-id"
OUTPUT_ANNOTATION = "stepchain.io/output"
#: Times the Job controller restarts the pod of one share before that share fails.
BACKOFF_LIMIT_PER_INDEX = 6
#: A finished Job is removed after this long even if the service never does it.
TTL_AFTER_FINISHED_S = 3600
#: Seconds a deleted worker pod gets to finish the requests it has in flight.
GRACE_S = 30
STATUS_TTL_S = 2.0


@dataclass(frozen=True)
class JobPodOptions:
    """What the Job's pods depend on besides the job."""

    namespace: str = "default"
    image: str = DEFAULT_STEP_IMAGE
    #: The Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the chart's store
    #: Secret); empty: none (credentials from the node or web identity).
    store_secret: str = ""
    #: AWS_* settings (endpoint, region) passed to the pods.
    store_env: Mapping[str, str] = field(default_factory=dict)
    #: Workers when the job does not ask (the chart's jobs.parallelism).
    default_workers: int = 2
    cpu: str = "500m"
    memory: str = "512Mi"


def job_name(job_id: str) -> str:
    """The Kubernetes Job's name: ``stepchain-job-<id>``."""
    return f"stepchain-job-{job_id}"


def render_job(manifest: JobManifest, target: str, options: JobPodOptions) -> dict[str, Any]:
    """The Indexed Job running `manifest`'s workers against the entry step at `target`."""
    count = max(1, manifest.options.workers)
    labels = {"app.kubernetes.io/name": "stepchain-job", "app.kubernetes.io/part-of": "stepchain",
              "app.kubernetes.io/managed-by": MANAGED_BY, JOB_ID_LABEL: manifest.id,
              "pipeline_id": manifest.pipeline}
    env: list[dict[str, Any]] = [{"name": k, "value": options.store_env[k]}
                                 for k in STORE_ENV if options.store_env.get(k)]
    env.append({"name": "AWS_EC2_METADATA_DISABLED",
                "value": "true" if options.store_secret else "false"})
    container: dict[str, Any] = {
        "name": "worker",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["stepchain"],
        "args": ["jobs", "run", "--output", manifest.output, "--job", manifest.id,
                 "--count", str(count), "--target", target],
        "env": env,
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory},
                      "limits": {"memory": options.memory}},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if options.store_secret:
        container["envFrom"] = [{"secretRef": {"name": options.store_secret}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(manifest.id), "namespace": options.namespace,
                     "labels": labels, "annotations": {OUTPUT_ANNOTATION: manifest.output}},
        "spec": {
            "completionMode": "Indexed",
            "completions": count,
            "parallelism": count,
            "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": GRACE_S,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                        "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def job_failure(job: Mapping[str, Any]) -> str | None:
    """The Job's ``Failed`` condition as a sentence (None when it has not failed)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return (f"Kubernetes Job {job['metadata']['name']} failed: "
                    f"{condition.get('reason', '')}: {condition.get('message', '')}").strip()
    return None


def job_finished(job: Mapping[str, Any]) -> bool:
    """Whether the Job is Complete or Failed."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class KubeJobPool:
    """Workers as Indexed Jobs in one namespace (see the module)."""

    name = "kubernetes"

    def __init__(self, api_client: Any, options: JobPodOptions) -> None:
        from kubernetes import client

        self.options = options
        self.default_workers = options.default_workers
        self._batch = client.BatchV1Api(api_client)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def _read(self, job_id: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(job_id)
        if cached is not None and now - cached[0] < STATUS_TTL_S:
            return cached[1]
        try:
            job = self._batch.read_namespaced_job(job_name(job_id), self.options.namespace)
            body: dict[str, Any] | None = self._batch.api_client.sanitize_for_serialization(job)
        except ApiException as exc:
            if exc.status != 404:
                raise BackendError(f"reading Job {job_name(job_id)}: {exc.reason}") from None
            body = None
        with self._lock:
            self._seen[job_id] = (now, body)
        return body

    def start(self, manifest: JobManifest, pipeline: PipelineStatus) -> None:
        from kubernetes.client.exceptions import ApiException

        if pipeline.entrypoint is None:
            raise BackendError(f"pipeline {pipeline.pipeline_id!r} has no entry Service")
        body = render_job(manifest, pipeline.entrypoint, self.options)
        try:
            self._batch.create_namespaced_job(self.options.namespace,
                                              body)  # type: ignore[arg-type]
            log.info("job %s: created Kubernetes Job %s (%d pods)", manifest.id,
                     job_name(manifest.id), body["spec"]["parallelism"])
        except ApiException as exc:
            if exc.status != 409:  # 409: it exists already (created before a restart)
                raise BackendError(f"creating Job {job_name(manifest.id)}: {exc.status} "
                                   f"{exc.reason}: {exc.body}") from None
        with self._lock:
            self._seen.pop(manifest.id, None)

    def stop(self, job_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._batch.delete_namespaced_job(job_name(job_id), self.options.namespace,
                                              propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise BackendError(f"deleting Job {job_name(job_id)}: {exc.reason}") from None
        with self._lock:
            self._seen.pop(job_id, None)

    def running(self, job_id: str) -> bool:
        job = self._read(job_id)
        return job is not None and not job_finished(job)

    def failure(self, job_id: str) -> str | None:
        job = self._read(job_id)
        return None if job is None else job_failure(job)

    def close(self) -> None:
        """Nothing to stop: the Job controller keeps the pods running without the service."""

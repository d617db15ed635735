"""A job on Kubernetes: one Indexed Job whose pods each run a share, validated against the
Kubernetes schema; the Job's conditions read back as the pool's state."""

from __future__ import annotations

import kubernetes_validate
import pytest

from topology.jobs.kube_job import JobPodOptions, job_failure, job_finished, job_name, render_job
from topology.jobs.manifest import JobManifest, JobOptions

#: backoffLimitPerIndex (per-share restarts) is GA from Kubernetes 1.33.
KUBERNETES_VERSION = ".".join(kubernetes_validate.latest_version().split(".")[:2])
MANIFEST = JobManifest(id="j0123456789ab", pipeline="demo", input="s3://photos/in/",
                       output="s3://photos/out/", options=JobOptions(concurrency=8, workers=4),
                       total=200)
OPTIONS = JobPodOptions(namespace="stepchain", image="stepchain-step:0.1.0",
                        store_secret="stepchain-store",
                        store_env={"AWS_ENDPOINT_URL": "http://minio.storage:9000",
                                   "AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "no"})


def test_renders_an_indexed_job_that_validates_with_a_share_per_pod() -> None:
    job = render_job(MANIFEST, "demo-step-0.stepchain.svc:50051", OPTIONS)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    spec = job["spec"]
    assert job["metadata"]["name"] == job_name(MANIFEST.id) == "stepchain-job-j0123456789ab"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", 4, 4)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"] == ["jobs", "run", "--output", "s3://photos/out/", "--job",
                                 MANIFEST.id, "--count", "4", "--target",
                                 "demo-step-0.stepchain.svc:50051"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials only from the Secret
    assert container["envFrom"] == [{"secretRef": {"name": "stepchain-store"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(("conditions", "finished", "failure"), [
    ([], False, None),
    ([{"type": "Complete", "status": "True"}], True, None),
    ([{"type": "Failed", "status": "True", "reason": "FailedIndexes",
       "message": "Job has failed indexes"}], True,
     "Kubernetes Job stepchain-job-j1 failed: FailedIndexes: Job has failed indexes"),
])
def test_reads_the_jobs_conditions(conditions: list[dict[str, str]], finished: bool,
                                   failure: str | None) -> None:
    job = {"metadata": {"name": "stepchain-job-j1"}, "status": {"conditions": conditions}}
    assert job_finished(job) is finished
    assert job_failure(job) == failure

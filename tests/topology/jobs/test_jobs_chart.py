"""The chart's store settings for jobs: the Secret with the keys, the service's AWS_* and job
variables, and the Role's permission on Indexed Jobs."""

from __future__ import annotations

import kubernetes_validate
import pytest
from helm_fixtures import env_of, render

VERSION = ".".join(kubernetes_validate.latest_version().split(".")[:2])
KEYS = ("--set", "store.endpoint=http://minio.storage:9000", "--set", "store.region=eu-west-1",
        "--set", "store.accessKeyId=AKIDEXAMPLE", "--set", "store.secretAccessKey=s3cr3t",
        "--set", "jobs.store=s3://state/jobs/", "--set", "jobs.parallelism=3")

pytestmark = pytest.mark.slow  # runs the real Helm binary


def test_store_keys_become_a_secret_the_service_reads_and_passes_to_worker_pods() -> None:
    rendering = render("defaults", *KEYS)
    secret = rendering.one("Secret", "store")
    kubernetes_validate.validate(secret, VERSION, strict=True)
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                                    "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    [container] = rendering.one("Deployment", "topology")["spec"]["template"]["spec"][
        "containers"]
    env = {name: entry.get("value") for name, entry in env_of(container).items()}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["STEPCHAIN_JOBS_STORE"] == "s3://state/jobs/"
    assert env["STEPCHAIN_JOB_PARALLELISM"] == "3"
    assert env["STEPCHAIN_STORE_SECRET"] == secret["metadata"]["name"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert "AWS_SECRET_ACCESS_KEY" not in env  # only through the Secret


def test_without_keys_no_secret_and_jobs_are_indexed_in_tmp() -> None:
    rendering = render("defaults")
    assert all(m["metadata"]["labels"].get("app.kubernetes.io/component") != "store"
               for m in rendering.of_kind("Secret"))
    [container] = rendering.one("Deployment", "topology")["spec"]["template"]["spec"][
        "containers"]
    env = {name: entry.get("value") for name, entry in env_of(container).items()}
    assert env["STEPCHAIN_JOBS_STORE"] == "file:///tmp/stepchain-jobs/"
    assert "STEPCHAIN_STORE_SECRET" not in env and "envFrom" not in container
    rules = rendering.one("Role", "topology")["rules"]
    assert {"apiGroups": ["batch"], "resources": ["jobs"],
            "verbs": ["create", "delete", "get"]} in rules

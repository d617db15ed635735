"""``/v1/jobs`` on the local backend: a bucket-to-bucket job through a real pipeline and real
worker processes; 202 + Location, Idempotency-Key, 4xx naming the field, cancel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from store_fixtures import bucket_store, photo_bytes, unique_prefix
from topology_fixtures import api_client

from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.settings import Settings

pytestmark = pytest.mark.slow

PIPELINE = {"name": "jobsapi", "steps": [
    {"type": "grayscale"}, {"type": "gaussian_blur", "params": {"sigma": 1.0}},
    {"type": "sharpen", "params": {"amount": 1.0}}]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[TestClient]:
    """One service (local backend, S3 settings in its environment) with the pipeline up."""
    state = tmp_path_factory.mktemp("jobs-service")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        app = create_app(Settings(state_dir=state), LocalBackend(state))
        with api_client(app) as client:
            created = client.post("/pipeline", json=PIPELINE)
            assert created.status_code == 201, created.text
            yield client


def wait_done(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "canceled"):
            return dict(job)
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {job}")


def test_a_bucket_to_bucket_job_writes_one_output_per_input_and_reports_the_non_image(
        service: TestClient, s3_server: Any) -> None:
    photos = bucket_store(s3_server.env, "photos")
    src, dst = unique_prefix("api-in"), unique_prefix("api-out")
    for i in range(5):
        photos.put(f"{src}p{i}.jpg", photo_bytes(i, fmt="JPEG"))
    photos.put(f"{src}notes.txt", b"no image")
    body = {"pipeline": "jobsapi", "input": f"s3://photos/{src}",
            "output": f"s3://outputs/{dst}", "concurrency": 2}
    response = service.post("/v1/jobs", json=body, headers={"Idempotency-Key": src})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["counts"]["total"] == 6 and job["state"] in ("queued", "running")
    again = service.post("/v1/jobs", json=body, headers={"Idempotency-Key": src})
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = service.post("/v1/jobs", json={**body, "concurrency": 3},
                         headers={"Idempotency-Key": src})
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    final = wait_done(service, job["id"])
    assert final["state"] == "failed"  # every image written; the text file failed alone
    assert final["counts"] == {"total": 6, "done": 5, "failed": 1, "retried": 0,
                               "remaining": 0}
    [item] = final["failed_items"]
    assert item["input"] == f"{src}notes.txt" and item["code"] == "INVALID_ARGUMENT"
    outputs = sorted(o.key for o in bucket_store(s3_server.env, "outputs").list(dst)
                     if "/_stepchain/" not in o.key)
    assert outputs == [f"{dst}p{i}.jpg" for i in range(5)]
    listed = service.get("/v1/jobs").json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    page = service.get("/console/jobs").text  # the console shows progress and failures
    row = page[page.index(job["id"]):]
    assert '<progress max="6" value="6">' in row and "notes.txt" in row
    assert "INVALID_ARGUMENT" in row


def test_refusals_are_4xx_naming_the_field(service: TestClient, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(photo_bytes(1))
    good = {"pipeline": "jobsapi", "input": f"file://{tmp_path}/in/",
            "output": f"file://{tmp_path}/out/"}
    cases = [
        ({**good, "pipeline": "nope"}, "pipeline", "no pipeline 'nope'"),
        ({**good, "input": "s3://no-such-bucket/x/"}, "input", "bucket does not exist"),
        ({**good, "input": f"file://{tmp_path}/empty/"}, "input", "no objects"),
        ({**good, "output": "s3://no-such-bucket/out/"}, "output", "bucket does not exist"),
        ({**good, "concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({**good, "colour": "red"}, "colour", "Extra inputs"),
    ]
    for body, field, words in cases:
        response = service.post("/v1/jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        detail = response.json()["detail"][0]
        assert detail["loc"][-1] == field and words in detail["msg"], detail
    assert service.get("/v1/jobs/j000000000000").status_code == 404
    anonymous = TestClient(service.app)
    assert anonymous.post("/v1/jobs", json=good).status_code == 401
    assert anonymous.delete("/v1/jobs/j000000000000").status_code == 401


def test_a_canceled_job_stops_and_leaves_only_whole_outputs(
        service: TestClient, tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    # Each input costs real work (256x256, 20 passes of each step) and the cancel is sent the
    # moment the first output lands (seen in the output folder, not through the status'
    # cache): 39 inputs are left then however fast the machine.
    for i in range(40):
        (src / f"p{i:02d}.png").write_bytes(photo_bytes(i, size=(256, 256)))
    job = service.post("/v1/jobs", json={"pipeline": "jobsapi", "input": f"file://{src}/",
                                         "output": f"file://{dst}/", "concurrency": 1,
                                         "passes": 20}).json()

    def written() -> int:
        return sum(1 for p in dst.iterdir() if p.suffix == ".png") if dst.is_dir() else 0

    deadline = time.monotonic() + 60
    while written() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    at_cancel = written()
    canceled = service.delete(f"/v1/jobs/{job['id']}")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    final = wait_done(service, job["id"])
    # One worker at concurrency 1: at most the input in flight when the stop came, and one
    # finishing while the DELETE travelled, are written after the count.
    assert final["state"] == "canceled" and final["counts"]["done"] <= at_cancel + 2 < 40
    time.sleep(1.0)
    names = sorted(p.name for p in dst.iterdir() if p.name != "_stepchain")
    assert len(names) == final["counts"]["done"]  # nothing written after the end, no '#' file
    assert all(n.endswith(".png") and "#" not in n for n in names)

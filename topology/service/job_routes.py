"""``/v1/jobs``: batch jobs over object storage (the HTTP face of :mod:`topology.jobs`).

``POST /v1/jobs`` (token required) answers ``202 Accepted`` with ``Location: /v1/jobs/{id}``
and the job's status; an ``Idempotency-Key`` header makes a retried POST return the same job
(``Idempotent-Replayed: true``), and the same key with another body is a 422. Every refused
field is a 422 whose ``detail[].loc`` names it: an unknown pipeline, a bucket that does not
exist, credentials the store refuses, an input prefix without images. ``GET /v1/jobs/{id}``,
``GET /v1/jobs`` and ``DELETE /v1/jobs/{id}`` (cancel) complete it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Path, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from topology.jobs.controller import JobNotFound, JobRequest, JobsController
from topology.jobs.manifest import JobOptions
from topology.jobs.store import StoreError
from topology.jobs.submission import JobConflict, JobInvalid

JobId = Annotated[str, Path(pattern=r"^j[0-9a-f]{12}$", description="job id")]
MAX_IDEMPOTENCY_KEY = 255


class JobBody(BaseModel):
    """A job: every object under `input` through `pipeline`, one output per input in
    `output`."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=63, description="pipeline id")
    input: str = Field(min_length=1, max_length=2048,
                       description="s3://bucket/prefix/ (or one object's key), file:///dir/")
    output: str = Field(min_length=1, max_length=2048,
                        description="s3://bucket/prefix/ or file:///dir/ for the outputs")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight, all workers")
    workers: int = Field(0, ge=0, le=64,
                         description="worker processes or pods; 0 = the service's default")
    tile_size: int = Field(0, ge=0, le=65536,
                           description="send images as SIZE x SIZE tiles kept in the store "
                                       "(huge images); 0 = whole")
    output_encoding: Literal["same", "png", "jpeg", "npy"] = Field(
        "same", description="same: JPEG stays JPEG, other inputs become PNG")
    jpeg_quality: int = Field(0, ge=0, le=100)
    threads: int = Field(0, ge=0, le=1024, description="override: OpenMP threads per step")
    passes: int = Field(0, ge=0, le=1000, description="override: kernel passes per step")
    attempts: int = Field(8, ge=1, le=100,
                          description="tries per request on UNAVAILABLE, RESOURCE_EXHAUSTED, "
                                      "DEADLINE_EXCEEDED")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="seconds one request may take")

    def request(self) -> JobRequest:
        options = JobOptions(**self.model_dump(exclude={"pipeline", "input", "output"}))
        return JobRequest(pipeline=self.pipeline, input=self.input, output=self.output,
                          options=options)


class JobCounts(BaseModel):
    total: int
    done: int = Field(description="inputs with an output")
    failed: int = Field(description="inputs that failed for good (see failed_items)")
    retried: int = Field(description="requests retried after a retryable gRPC status")
    remaining: int


class FailedItem(BaseModel):
    input: str
    output: str
    code: str = Field(description="gRPC status code, e.g. INVALID_ARGUMENT")
    message: str
    at: float


class JobOut(BaseModel):
    """A job's state and progress."""

    id: str
    pipeline: str
    input: str
    output: str = Field(description="where the outputs are written")
    state: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created: float
    finished: float | None
    counts: JobCounts
    throughput_per_s: float | None = Field(description="outputs per second, recent window")
    eta_s: float | None = Field(description="seconds left at that rate")
    failed_items: list[FailedItem]
    error: str | None = Field(description="why the job as a whole failed")
    options: dict[str, Any]


class JobList(BaseModel):
    jobs: list[JobOut]


def _invalid(exc: JobInvalid) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": ["body", exc.field], "msg": str(exc), "type": "job_invalid"}]})


def job_router(controller: JobsController, writer: list[Depends]) -> APIRouter:
    """The routes over `controller`; writes depend on `writer` (the bearer token)."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post("", status_code=202, response_model=JobOut, dependencies=writer,
                 responses={422: {"description": "a field to fix; detail[].loc names it"}})
    def submit_job(body: JobBody, request: Request,
                   idempotency_key: Annotated[str | None, Header(
                       max_length=MAX_IDEMPOTENCY_KEY)] = None) -> Any:
        """Starts a job (202 + Location); a repeated Idempotency-Key returns the same job."""
        try:
            status, created = controller.submit(body.request(), idempotency_key,
                                                body.model_dump())
        except JobInvalid as exc:
            return _invalid(exc)
        except JobConflict as exc:
            return JSONResponse(status_code=422, content={"detail": [
                {"loc": ["header", "Idempotency-Key"], "msg": str(exc),
                 "type": "idempotency_key_reused"}]})
        except StoreError as exc:
            raise HTTPException(502, f"the store failed: {exc}") from None
        headers = {"Location": f"/v1/jobs/{status.manifest.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(status.to_json(), status_code=202, headers=headers)

    @router.get("", response_model=JobList)
    def list_jobs() -> Any:
        """Every job, newest first."""
        return {"jobs": [s.to_json() for s in controller.list()]}

    @router.get("/{job_id}", response_model=JobOut,
                responses={404: {"description": "no such job"}})
    def get_job(job_id: JobId) -> Any:
        """A job's state, counts, throughput, time left and failed items."""
        status = controller.status(job_id)
        if status is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /v1/jobs lists them")
        return status.to_json()

    @router.delete("/{job_id}", response_model=JobOut, dependencies=writer,
                   responses={404: {"description": "no such job"}})
    def cancel_job(job_id: JobId) -> Any:
        """Cancels the job: its workers stop; nothing half-written is left as an output."""
        try:
            return controller.cancel(job_id).to_json()
        except JobNotFound:
            raise HTTPException(404, f"no job {job_id!r}; GET /v1/jobs lists them") from None

    return router

"""Creating a job: check the request against the stores, snapshot the inputs, write the manifest.

Everything a user can get wrong is found here, before anything runs, and raised as
:class:`JobInvalid` naming the request field (the API answers 422 with it): a URI that names
no location, a bucket that does not exist, credentials the store refuses, an input prefix with
no objects or no images, two inputs that would share an output, an output inside the input
prefix. An object that is no image is not refused here: it fails on its own when its turn
comes, and the job goes on.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Mapping
from dataclasses import replace

from topology.jobs.locations import (
    OUTPUT_ENCODINGS,
    Location,
    LocationInvalid,
    NameClash,
    is_input_key,
    output_names,
    parse_location,
    relative_key,
)
from topology.jobs.manifest import JobFiles, JobManifest, JobOptions, new_job_id
from topology.jobs.store import AccessDenied, Store, StoreError, open_store

#: Suffixes that count as images when telling an input prefix holds none.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".tif", ".tiff", ".bmp", ".webp", ".gif")
MAX_CONCURRENCY = 256
MAX_WORKERS = 64


class JobInvalid(ValueError):
    """The request cannot become a job; `field` is the request field to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class JobConflict(ValueError):
    """The Idempotency-Key was used before with another request."""


def check_options(options: JobOptions) -> None:
    """JobInvalid naming the first option out of range."""
    checks = (
        ("concurrency", 1 <= options.concurrency <= MAX_CONCURRENCY,
         f"between 1 and {MAX_CONCURRENCY}"),
        ("workers", 0 <= options.workers <= MAX_WORKERS,
         f"between 0 (the backend's default) and {MAX_WORKERS}"),
        ("tile_size", options.tile_size == 0 or 16 <= options.tile_size <= 65536,
         "0 (whole images) or between 16 and 65536 pixels"),
        ("output_encoding", options.output_encoding in OUTPUT_ENCODINGS,
         f"one of {', '.join(OUTPUT_ENCODINGS)}"),
        ("jpeg_quality", 0 <= options.jpeg_quality <= 100, "between 0 (default) and 100"),
        ("threads", 0 <= options.threads <= 1024, "between 0 (the step's) and 1024"),
        ("passes", 0 <= options.passes <= 1000, "between 0 (the step's) and 1000"),
        ("attempts", 1 <= options.attempts <= 100, "between 1 and 100"),
        ("timeout_s", 0 < options.timeout_s <= 3600, "between 0 and 3600 seconds"),
    )
    for name, ok, allowed in checks:
        if not ok:
            raise JobInvalid(name, f"{name} must be {allowed}, got {getattr(options, name)!r}")


def _store(location: Location, field: str, environ: Mapping[str, str],
           cache: dict[tuple[str, str], Store]) -> Store:
    key = (location.scheme, location.bucket)
    if key not in cache:
        try:
            cache[key] = open_store(location, environ)
        except AccessDenied as exc:
            raise JobInvalid(field, str(exc)) from None
    return cache[key]


def _field_error(field: str, exc: StoreError) -> JobInvalid:
    return JobInvalid(field, str(exc))


def snapshot_inputs(store: Store, location: Location) -> tuple[Location, list[str]]:
    """The input keys, sorted, and the location read as a prefix or as one object.

    A URI without a trailing ``/`` names one object when an object has exactly that key,
    else the prefix. JobInvalid (field ``input``) for a missing bucket or directory, refused
    credentials, or a prefix holding nothing.
    """
    try:
        if not location.is_prefix and store.exists(location.prefix):
            return location, [location.prefix]
        prefix = location.as_prefix()
        keys = sorted(o.key for o in store.list(prefix.prefix) if is_input_key(prefix, o.key))
    except StoreError as exc:
        raise _field_error("input", exc) from None
    if not keys:
        raise JobInvalid("input", f"{prefix.uri}: no objects under this prefix; upload the "
                                  "images first or fix the prefix")
    if not any(posixpath.splitext(k)[1].lower() in IMAGE_SUFFIXES for k in keys):
        raise JobInvalid("input", f"{prefix.uri}: {len(keys)} object(s) but no images "
                                  f"({', '.join(IMAGE_SUFFIXES)})")
    return prefix, keys


def create_job(*, pipeline: str, input_uri: str, output_uri: str, options: JobOptions,
               environ: Mapping[str, str], job_id: str | None = None,
               idempotency_key: str | None = None, now: float | None = None) -> JobManifest:
    """Checks the request, snapshots the inputs and writes the job into the output store.

    Returns the manifest as written. With an existing `job_id` whose manifest is already in
    the store (a retried submission), returns that one. JobInvalid names the field to fix.
    """
    check_options(options)
    try:
        input_location = parse_location(input_uri, field="input")
        output_location = parse_location(output_uri, field="output").as_prefix()
    except LocationInvalid as exc:
        raise JobInvalid(exc.field, str(exc)) from None
    stores: dict[tuple[str, str], Store] = {}
    input_store = _store(input_location, "input", environ, stores)
    output_store = _store(output_location, "output", environ, stores)
    input_location, keys = snapshot_inputs(input_store, input_location)
    if input_location.is_prefix and (input_location.contains(output_location)
                                     or output_location.contains(input_location)):
        raise JobInvalid("output", f"{output_location.uri} overlaps the input prefix "
                                   f"{input_location.uri}: outputs would become inputs; "
                                   "choose an output prefix outside it")
    try:
        relatives = output_names((relative_key(input_location, k) for k in keys),
                                 options.output_encoding)
    except NameClash as exc:
        raise JobInvalid("output_encoding", str(exc)) from None
    job_id = job_id or new_job_id()
    manifest = JobManifest(id=job_id, pipeline=pipeline, input=input_location.uri,
                           output=output_location.uri, options=options,
                           created=time.time() if now is None else now, total=len(keys),
                           idempotency_key=idempotency_key)
    files = JobFiles(output_store, output_location, job_id)
    try:
        # A listing finds a missing bucket even on stores that create buckets on a PUT.
        next(iter(output_store.list(output_location.prefix)), None)
        files.write_inputs([(k, output_location.key(r)) for k, r in zip(keys, relatives,
                                                                          strict=True)])
        if not files.write_manifest(manifest):
            return files.read_manifest()
    except StoreError as exc:  # a missing bucket, refused credentials, a store down
        raise _field_error("output", exc) from None
    return manifest


def with_defaults(options: JobOptions, *, workers: int) -> JobOptions:
    """`options` with the backend's worker count filled in (never more workers than
    requests in flight)."""
    chosen = options.workers or workers
    return replace(options, workers=max(1, min(chosen, options.concurrency)))

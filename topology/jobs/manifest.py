"""A job as it is kept in the store: its manifest, its input snapshot and where each fact lives.

Everything of job ``J`` lies under ``_stepchain/J/`` of its output location, beside the outputs::

    manifest.json          the job: pipeline, input, output, options, created (written once)
    inputs/00000.json ...  the input snapshot, taken at submission: [input key, output key] pairs
                           in a fixed order, 1000 per object; worker i of n takes every n-th
    failed/<h>.json        an input that failed for good: key, gRPC code, message
    workers/<i>.json       worker i's tallies (done, retried), rewritten as it goes
    shards/<i>.done        worker i finished its share (written once)
    tiles/<h>/<n>.npy      tile n's result of a huge input, until its output is written
    cancel                 DELETE asked the job to stop (written once)
    final.json             the state the job ended in (written once)

An input is done when its output object exists: the outputs themselves are the progress, so a
runner that starts lists them and does only the rest. ``<h>`` is a digest of the input key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from topology.jobs.locations import Location, parse_location
from topology.jobs.store import ObjectMissing, Store

#: Input pairs per snapshot object.
CHUNK = 1000
MANIFEST = "manifest.json"
FINAL = "final.json"
CANCEL = "cancel"
STATES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL = ("succeeded", "failed", "canceled")


def new_job_id() -> str:
    """A fresh job id: ``j`` and 12 hex digits (valid in object keys and Kubernetes names)."""
    return "j" + secrets.token_hex(6)


def key_digest(key: str) -> str:
    """A short, stable digest of an object key (file names of per-input state)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class JobOptions:
    """How a job runs; every field has a default."""

    #: Requests in flight at once, over all workers.
    concurrency: int = 4
    #: Worker processes (local) or pods (Kubernetes); 0 = the backend's default.
    workers: int = 0
    #: Tile huge images into SIZE x SIZE tiles (kept in the store until assembled); 0 = whole.
    tile_size: int = 0
    #: ``same`` (JPEG stays JPEG, other inputs become PNG), ``png``, ``jpeg`` or ``npy``.
    output_encoding: str = "same"
    jpeg_quality: int = 0
    #: Per-request overrides of every step: OpenMP threads and kernel passes (0 = the step's).
    threads: int = 0
    passes: int = 0
    #: Tries per request on UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED.
    attempts: int = 8
    #: Seconds one request may take.
    timeout_s: float = 120.0


@dataclass(frozen=True)
class JobManifest:
    """What was asked: written once at submission, read by every worker."""

    id: str
    pipeline: str
    input: str
    output: str
    options: JobOptions
    created: float = field(default_factory=time.time)
    total: int = 0
    idempotency_key: str | None = None

    @property
    def output_location(self) -> Location:
        return parse_location(self.output, field="output").as_prefix()

    @property
    def input_location(self) -> Location:
        return parse_location(self.input, field="input")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> JobManifest:
        doc = json.loads(data)
        doc["options"] = JobOptions(**doc.get("options", {}))
        return cls(**doc)


@dataclass(frozen=True)
class Item:
    """One input and the output it becomes."""

    position: int
    input_key: str
    output_key: str


class JobFiles:
    """The keys of one job's state in its output store."""

    def __init__(self, store: Store, output: Location, job_id: str) -> None:
        self.store = store
        self.output = output.as_prefix()
        self.job_id = job_id

    def key(self, relative: str) -> str:
        return self.output.state_key(self.job_id, relative)

    # -- manifest and snapshot ------------------------------------------------------------

    def write_manifest(self, manifest: JobManifest) -> bool:
        """Writes the manifest once; False when this job id already has one."""
        return self.store.put_new(self.key(MANIFEST), manifest.to_json())

    def read_manifest(self) -> JobManifest:
        return JobManifest.from_json(self.store.get(self.key(MANIFEST)))

    def write_inputs(self, pairs: list[tuple[str, str]]) -> None:
        """The input snapshot, CHUNK pairs an object (rewritten identically on a retry)."""
        for start in range(0, len(pairs), CHUNK):
            body = json.dumps(pairs[start:start + CHUNK]).encode("utf-8")
            self.store.put(self.key(f"inputs/{start // CHUNK:05d}.json"), body)

    def items(self, total: int) -> Iterator[Item]:
        """The snapshot's items in order."""
        position = 0
        for chunk in range((total + CHUNK - 1) // CHUNK):
            for input_key, output_key in json.loads(
                    self.store.get(self.key(f"inputs/{chunk:05d}.json"))):
                yield Item(position, input_key, output_key)
                position += 1

    # -- progress -------------------------------------------------------------------------

    def output_times(self) -> dict[str, float]:
        """Every output object's key and when it was written (job state excluded)."""
        state = self.output.key("_stepchain/")
        return {o.key: o.modified for o in self.store.list(self.output.prefix)
                if not o.key.startswith(state)}

    def record_failure(self, item: Item, code: str, message: str) -> None:
        body = {"input": item.input_key, "output": item.output_key, "code": code,
                "message": message, "at": time.time()}
        self.store.put(self.key(f"failed/{key_digest(item.input_key)}.json"),
                       json.dumps(body).encode("utf-8"))

    def failed_keys(self) -> list[str]:
        """The keys of the failure records (one per failed input)."""
        return [info.key for info in self.store.list(self.key("failed/"))]

    def failures(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The failure records (the first `limit`), sorted by input key."""
        out = []
        for key in self.failed_keys()[:limit]:
            try:
                out.append(json.loads(self.store.get(key)))
            except (ObjectMissing, ValueError):
                continue
        return sorted(out, key=lambda r: str(r.get("input")))

    def failed_inputs(self) -> set[str]:
        return {str(r["input"]) for r in self.failures()}

    def write_worker(self, index: int, tallies: dict[str, Any]) -> None:
        self.store.put(self.key(f"workers/{index}.json"), json.dumps(tallies).encode("utf-8"))

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for info in self.store.list(self.key("workers/")):
            try:
                out.append(json.loads(self.store.get(info.key)))
            except (ObjectMissing, ValueError):
                continue
        return out

    def read_worker(self, index: int) -> dict[str, Any]:
        try:
            return dict(json.loads(self.store.get(self.key(f"workers/{index}.json"))))
        except (ObjectMissing, ValueError):
            return {}

    def mark_shard_done(self, index: int) -> None:
        self.store.put_new(self.key(f"shards/{index}.done"), b"")

    def shards_done(self) -> set[int]:
        prefix = self.key("shards/")
        return {int(o.key[len(prefix):].split(".", 1)[0]) for o in self.store.list(prefix)}

    # -- cancel and end -------------------------------------------------------------------

    def request_cancel(self) -> None:
        self.store.put_new(self.key(CANCEL), json.dumps({"at": time.time()}).encode("utf-8"))

    def cancel_requested(self) -> bool:
        return self.store.exists(self.key(CANCEL))

    def write_final(self, state: str, counts: dict[str, Any]) -> bool:
        body = {"state": state, "at": time.time(), **counts}
        return self.store.put_new(self.key(FINAL), json.dumps(body).encode("utf-8"))

    def final(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.store.get(self.key(FINAL))))
        except ObjectMissing:
            return None

    def tiles_prefix(self, input_key: str) -> str:
        return self.key(f"tiles/{key_digest(input_key)}/")

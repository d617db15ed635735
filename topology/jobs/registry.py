"""The service's index of jobs: which jobs exist and where each keeps its state.

A job's state lives with its outputs (:mod:`topology.jobs.manifest`); the service only needs to
find it again after a restart, and to map an ``Idempotency-Key`` to the job it created. Both are
small objects in a store of their own, the *jobs store* (``--jobs-store``; by default
``file://<state-dir>/jobs/``, in Kubernetes an S3 prefix from the chart)::

    <id>.json            {"id", "output", "created"}
    keys/<sha256>.json   {"id", "request"}: the job an Idempotency-Key made, and a digest of
                         the request it came with (written once, conditionally)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from topology.jobs.locations import Location
from topology.jobs.store import ObjectMissing, Store

KEYS = "keys/"


@dataclass(frozen=True)
class JobRecord:
    """A job the service knows: its id, output location and creation time."""

    id: str
    output: str
    created: float


def request_digest(body: dict[str, Any]) -> str:
    """A digest of a job request (canonical JSON): equal bodies, equal digests."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


class JobRegistry:
    """The jobs store (see the module)."""

    def __init__(self, store: Store, location: Location) -> None:
        self.store = store
        self.location = location.as_prefix()

    def _key(self, relative: str) -> str:
        return self.location.key(relative)

    def add(self, record: JobRecord) -> None:
        self.store.put(self._key(f"{record.id}.json"), json.dumps(
            {"id": record.id, "output": record.output, "created": record.created}).encode())

    def get(self, job_id: str) -> JobRecord | None:
        try:
            doc = json.loads(self.store.get(self._key(f"{job_id}.json")))
        except (ObjectMissing, ValueError):
            return None
        return JobRecord(id=str(doc["id"]), output=str(doc["output"]),
                         created=float(doc["created"]))

    def all(self) -> list[JobRecord]:
        """Every job, oldest first."""
        records = []
        for info in self.store.list(self.location.prefix):
            name = info.key[len(self.location.prefix):]
            if "/" in name or not name.endswith(".json"):
                continue
            record = self.get(name[:-len(".json")])
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.created, r.id))

    def claim_key(self, idempotency_key: str, job_id: str, digest: str) -> tuple[str, str]:
        """Binds `idempotency_key` to `job_id` unless it is bound already; returns the bound
        (job id, request digest) either way."""
        key = self._key(f"{KEYS}{hashlib.sha256(idempotency_key.encode()).hexdigest()}.json")
        body = json.dumps({"id": job_id, "request": digest}).encode()
        if not self.store.put_new(key, body):
            doc = json.loads(self.store.get(key))
            return str(doc["id"]), str(doc["request"])
        return job_id, digest

    def release_key(self, idempotency_key: str) -> None:
        """Unbinds a key whose job could not be created (so a corrected request may use it)."""
        self.store.delete(
            [self._key(f"{KEYS}{hashlib.sha256(idempotency_key.encode()).hexdigest()}.json")])

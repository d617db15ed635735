"""What the gRPC user reports to Locust: entry names, step entries and gRPC failures.

One ``grpc`` entry per request (``Process``, or ``Process <pipeline>`` when several pipelines
are loaded together) and, from each response's ``timings``, custom ``step`` entries per executed
step — ``step-<id>:<type> kernel`` (time in the native kernel) and ``step-<id>:<type> queue``
(time waiting for an in-flight slot) — so Locust's table, charts and CSV show where time goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Locust ``request_type`` of the request entries and of the per-step entries.
REQUEST_TYPE = "grpc"
STEP_TYPE = "step"
#: Per-step entries: suffix -> StepTiming field (milliseconds).
STEP_METRICS = {"kernel": "kernel_ms", "queue": "queue_wait_ms"}


class GrpcStatusError(Exception):
    """A non-OK gRPC status as a Locust failure: ``"RESOURCE_EXHAUSTED: <details>"``.

    Locust groups failures by the exception's repr, so the status code name leads the message
    and shows in the failures table and ``*_failures.csv``.
    """

    def __init__(self, code_name: str, details: str) -> None:
        super().__init__(f"{code_name}: {details}" if details else code_name)
        self.code_name = code_name
        self.details = details


def request_name(label: str | None) -> str:
    """Name of the request entry; ``label`` (the pipeline) when several targets are loaded."""
    return f"Process {label}" if label else "Process"


def step_entries(timings: Iterable[Any], label: str | None = None) -> list[tuple[str, float]]:
    """``(name, milliseconds)`` for each executed step's kernel and queue time, in route order.

    ``timings`` are ``StepTiming`` messages; ``label`` prefixes names (``<label>/step-1:...``)
    when several pipelines are loaded together.
    """
    prefix = f"{label}/" if label else ""
    entries: list[tuple[str, float]] = []
    for timing in timings:
        step = f"{prefix}step-{timing.step_id}:{timing.step_type or 'unknown'}"
        for suffix, field in STEP_METRICS.items():
            entries.append((f"{step} {suffix}", float(getattr(timing, field))))
    return entries

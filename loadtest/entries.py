"""What the gRPC user reports to Locust: entry names and gRPC failures.

One ``grpc`` entry per request (``Process``, or ``Process <pipeline>`` when several pipelines
are loaded together) — Locust's totals count pipeline requests and nothing else. Each answered
request's per-step timings ride in the event's ``context`` (``step_timings``, and
``pipeline_label`` when several pipelines are loaded) for ``loadtest.step_report``.
"""

from __future__ import annotations

#: Locust ``request_type`` of the request entries.
REQUEST_TYPE = "grpc"


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

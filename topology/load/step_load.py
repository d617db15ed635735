"""How loaded a step is over a window: two scrapes of its metrics -> rates, latencies, usage.

Pure: :func:`step_load` takes the samples at the start and the end of the window (see
:mod:`topology.load.scrape`) and answers what ``stepchain top``, the console and the advice API
show for the step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from topology.load.scrape import StepSample


@dataclass(frozen=True)
class StepLoad:
    """One step over a window (every rate per second, every time in seconds)."""

    pipeline_id: str
    step_id: int
    step_type: str
    window_s: float
    replicas: int
    #: Calls that finished in the window (any status).
    requests: float
    requests_per_s: float
    refusals_per_s: float
    #: Calls that failed with another error than a refusal, % of all calls.
    error_pct: float
    p50_s: float | None
    p95_s: float | None
    queue_wait_s: float | None
    kernel_s: float | None
    forward_s: float | None
    #: The step's own work per admitted request: its wall time less queue wait and the wait
    #: for the next steps (decode, kernel, encode, bookkeeping).
    service_s: float | None
    #: Little's law: arrival rate x service time / replicas (1.0 = one replica always busy).
    utilisation: float
    #: At the end of the window.
    in_flight: float
    busy: float | None
    queued: float | None
    max_inflight: float | None
    max_queue: float | None
    cpu_pct: float | None
    rss_bytes: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def step_load(before: StepSample, after: StepSample) -> StepLoad:
    """The load of one step between two samples of it (`after` scraped later)."""
    window = max(after.at - before.at, 1e-9)
    restarted = after.total_requests < before.total_requests
    base = _empty_like(before) if restarted else before
    requests = after.total_requests - base.total_requests
    refused = max(0.0, after.refused - base.refused)
    failed = max(0.0, after.failed - base.failed)
    duration = after.duration - base.duration
    queue = after.queue_wait - base.queue_wait
    kernel = after.kernel - base.kernel
    forward = after.forward - base.forward
    admitted = max(0.0, requests - refused)
    own = max(0.0, duration.sum - queue.sum - forward.sum)
    service = own / admitted if admitted > 0 else None
    arrival = requests / window
    replicas = max(1, after.replicas)
    cpu = None
    if after.cpu_seconds is not None and base.cpu_seconds is not None and not restarted:
        cpu = max(0.0, after.cpu_seconds - base.cpu_seconds) / window * 100.0
    return StepLoad(
        pipeline_id=after.pipeline_id, step_id=after.step_id, step_type=after.step_type,
        window_s=window, replicas=replicas, requests=requests, requests_per_s=arrival,
        refusals_per_s=refused / window,
        error_pct=100.0 * failed / requests if requests > 0 else 0.0,
        p50_s=duration.quantile(0.5), p95_s=duration.quantile(0.95),
        queue_wait_s=queue.mean, kernel_s=kernel.mean, forward_s=forward.mean,
        service_s=service,
        utilisation=arrival * (service or 0.0) / replicas,
        in_flight=after.in_flight, busy=after.busy, queued=after.queued,
        max_inflight=after.max_inflight, max_queue=after.max_queue, cpu_pct=cpu,
        rss_bytes=after.rss_bytes)


def _empty_like(sample: StepSample) -> StepSample:
    return StepSample(pipeline_id=sample.pipeline_id, step_id=sample.step_id,
                      step_type=sample.step_type, at=sample.at)

"""How loaded a step is over a window: two scrapes of its metrics -> rates, latencies, usage.

Pure: :func:`step_load` takes the samples at the start and the end of the window (see
:mod:`topology.load.scrape`) and answers what ``stepchain top``, the console and the advice API
show for the step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from topology.load.scrape import NextHop, StepSample


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
    #: Calls their callers cancelled (clients gone, load-test users stopped): not errors.
    cancelled_per_s: float
    #: Calls that failed with another error than a refusal or a cancel, % of all calls.
    error_pct: float
    p50_s: float | None
    p95_s: float | None
    queue_wait_s: float | None
    kernel_s: float | None
    forward_s: float | None
    #: The step's own work per admitted request: its wall time less queue wait and the wait
    #: for the next steps (decode, kernel, encode, bookkeeping).
    service_s: float | None
    #: How busy a replica is (1.0 = fully): the larger of its CPU and its in-flight slots in
    #: use (``cpu_utilisation``, ``slot_utilisation``); without CPU figures, Little's law on
    #: wall time (arrival rate x service time / replicas), which counts waiting for a core.
    utilisation: float
    #: CPU seconds one admitted request costs (the replicas' CPU over the window / requests).
    cpu_s_per_request: float | None
    #: Cores one replica may use, and where that comes from ("limit", "request", "host").
    cpu_cores: float | None
    cpu_source: str | None
    #: CPU used / cores the replicas have.
    cpu_utilisation: float | None
    #: Mean in-flight slots held for the step's own work / the replicas' --max-inflight.
    slot_utilisation: float | None
    #: How busy the host (every process on it) was, % of its cores; and how many it has.
    host_busy_pct: float | None
    host_cpu_cores: float | None
    #: At the end of the window.
    in_flight: float
    busy: float | None
    queued: float | None
    max_inflight: float | None
    max_queue: float | None
    cpu_pct: float | None
    rss_bytes: float | None
    #: Its next steps as it sees them at the end of the window: can a request go on to each.
    next_steps: tuple[NextHop, ...] = ()

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
    cancelled = max(0.0, after.cancelled - base.cancelled)
    admitted = max(0.0, requests - refused)
    own = max(0.0, duration.sum - queue.sum - forward.sum)
    service = own / admitted if admitted > 0 else None
    arrival = requests / window
    replicas = max(1, after.replicas)
    cpu_busy = None  # cores the replicas kept busy over the window
    if after.cpu_seconds is not None and base.cpu_seconds is not None and not restarted:
        cpu_busy = max(0.0, after.cpu_seconds - base.cpu_seconds) / window
    cores = after.cpu_cores / replicas if after.cpu_cores else None
    cpu_utilisation = cpu_busy / (cores * replicas) if cpu_busy is not None and cores else None
    # Slots held for the step's own work: the wait for the next step is that step's load.
    slot_utilisation = (admitted / window * service / after.max_inflight
                        if service is not None and after.max_inflight else None)
    if cpu_utilisation is not None:
        utilisation = max(cpu_utilisation, slot_utilisation or 0.0)
    else:
        utilisation = arrival * (service or 0.0) / replicas
    host_busy = None
    if (after.host_busy_seconds is not None and before.host_busy_seconds is not None
            and after.host_cpu_cores):
        # The host's counter is read when the step answers, the window timed by the scraper:
        # the two clocks differ by a scrape's latency, so a saturated host can read 105 %.
        host_busy = min(100.0, max(0.0, after.host_busy_seconds - before.host_busy_seconds) / (
            window * after.host_cpu_cores) * 100.0)
    return StepLoad(
        pipeline_id=after.pipeline_id, step_id=after.step_id, step_type=after.step_type,
        window_s=window, replicas=replicas, requests=requests, requests_per_s=arrival,
        refusals_per_s=refused / window, cancelled_per_s=cancelled / window,
        error_pct=100.0 * failed / requests if requests > 0 else 0.0,
        p50_s=duration.quantile(0.5), p95_s=duration.quantile(0.95),
        queue_wait_s=queue.mean, kernel_s=kernel.mean, forward_s=forward.mean,
        service_s=service, utilisation=utilisation,
        cpu_s_per_request=(cpu_busy * window / admitted
                           if cpu_busy is not None and admitted > 0 else None),
        cpu_cores=cores, cpu_source=after.cpu_source, cpu_utilisation=cpu_utilisation,
        slot_utilisation=slot_utilisation, host_busy_pct=host_busy,
        host_cpu_cores=after.host_cpu_cores,
        in_flight=after.in_flight, busy=after.busy, queued=after.queued,
        max_inflight=after.max_inflight, max_queue=after.max_queue,
        cpu_pct=None if cpu_busy is None else cpu_busy * 100.0, rss_bytes=after.rss_bytes,
        next_steps=after.next_steps)


def _empty_like(sample: StepSample) -> StepSample:
    return StepSample(pipeline_id=sample.pipeline_id, step_id=sample.step_id,
                      step_type=sample.step_type, at=sample.at)

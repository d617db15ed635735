"""Scaling advice per step, from its load (pure; advice only, nothing is ever applied).

A step is sized by what one replica consumes against what it has:

- **CPU**: the CPU seconds a request costs x the arrival rate = the cores the step keeps busy;
  divided by the cores one replica may use (its CPU limit, else its pod's request, else the
  host's cores: ``stepchain_step_cpu_cores``) and the target utilisation, that is the replicas
  needed. Wall time per request is not used: it includes waiting for a core, and one replica
  runs up to ``--max-inflight`` requests at once.
- **in-flight slots**: requests/s x the time a request holds a slot for the step's own work,
  against the replicas' ``--max-inflight`` (the wait for the next step is left out: that is
  the next step's load, and more replicas here would not shorten it).

Without CPU figures (steps older than them) it falls back to Little's law on wall time. The
action is

- **host is the limit** when the step is under pressure (refusing, queueing, over the target,
  or its requests mostly waiting for a core: CPU time under CPU_STARVED_FRACTION of their time
  in the step) while the host it runs on is saturated (its cores over HOST_SATURATED busy,
  every process on it together): more replicas there add no CPU;
- **scale up** when it refuses requests (its queue is full), when requests wait in its queue,
  or when its utilisation is over the target;
- **scale down** when it needs fewer replicas than it has and its utilisation is under half
  the target (the gap keeps advice from flapping around the target);
- **maintain** otherwise (and whenever there is no traffic to size it by).

The reason shows the arithmetic. The **bottleneck** is the step with the highest utilisation
per replica. **Confidence** grows with the requests seen and the length of the window: a
handful of requests over two seconds is a hint, hundreds over ten seconds a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from topology.load.step_load import StepLoad
from topology.pipeline.model import step_name

DEFAULT_TARGET_UTILISATION = 0.7
#: Below target x this, a step with spare replicas may scale down.
SCALE_DOWN_FRACTION = 0.5
#: Requests and window length at which confidence is full.
FULL_CONFIDENCE_REQUESTS = 100.0
FULL_CONFIDENCE_WINDOW_S = 10.0
#: Mean queue wait (s) below which a queue is noise, not a sign of saturation.
QUEUE_WAIT_NOISE_S = 0.005
#: A host whose cores are this busy (all processes together) has no CPU to give new replicas.
HOST_SATURATED = 0.9
#: A request whose CPU time is under this share of its time in the step mostly waits for a
#: core (or for I/O): on a saturated host, for a core.
CPU_STARVED_FRACTION = 0.5

SCALE_UP, SCALE_DOWN, MAINTAIN, HOST_LIMIT = ("scale up", "scale down", "maintain",
                                              "host is the limit")


@dataclass(frozen=True)
class StepAdvice:
    """What to do with one step's replicas, and why."""

    step_id: int
    step_type: str
    action: str
    replicas: int
    advised_replicas: int
    #: arrival rate x service time / target utilisation, unrounded.
    needed: float
    utilisation: float
    reason: str
    confidence: str
    confidence_score: float
    bottleneck: bool
    kubectl: str
    hpa: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def confidence(load: StepLoad) -> tuple[str, float]:
    """('low'|'medium'|'high', score 0..1) from the requests and the window seen."""
    score = (min(1.0, load.requests / FULL_CONFIDENCE_REQUESTS)
             * min(1.0, load.window_s / FULL_CONFIDENCE_WINDOW_S))
    label = "high" if score >= 0.6 else "medium" if score >= 0.2 else "low"
    return label, round(score, 2)


def advise_step(load: StepLoad, *, namespace: str = "default",
                target: float = DEFAULT_TARGET_UTILISATION,
                bottleneck: bool = False) -> StepAdvice:
    """The advice for one step under `load`."""
    if not 0 < target <= 1:
        raise ValueError(f"target utilisation must be in (0, 1], got {target}")
    replicas = load.replicas
    sizing = _sizing(load, target)
    needed = sizing.needed
    sized = max(1, math.ceil(needed - 1e-9))
    util_pct = load.utilisation * 100
    queued = (load.queued or 0) > 0 and (load.queue_wait_s or 0.0) > QUEUE_WAIT_NOISE_S
    pressed = load.refusals_per_s > 0 or load.utilisation > target or queued
    starved = (load.cpu_s_per_request is not None and bool(load.service_s)
               and load.cpu_s_per_request < CPU_STARVED_FRACTION * (load.service_s or 0.0))
    host_busy = (load.host_busy_pct or 0.0) / 100
    if load.requests <= 0:
        action, advised = MAINTAIN, replicas
        reason = "no requests in the window: nothing to size it by"
    elif (pressed or starved) and host_busy >= HOST_SATURATED:
        action, advised = HOST_LIMIT, replicas
        reason = (f"its host's {load.host_cpu_cores:g} cores are {host_busy:.0%} busy (every "
                  f"process on it together) while {_pressure(load, target)}; "
                  f"{sizing.arithmetic}. More replicas on this host add no CPU: add a host "
                  "(more nodes), give this step more of the host, or send less load")
    elif load.refusals_per_s > 0:
        action, advised = SCALE_UP, max(sized, replicas + 1)
        reason = (f"refusing {load.refusals_per_s:.1f} req/s (queue full); "
                  f"{sizing.arithmetic}")
    elif load.utilisation > target:
        action, advised = SCALE_UP, max(sized, replicas + 1)
        reason = (f"utilisation {util_pct:.0f}% per replica is over the {target:.0%} target: "
                  f"{sizing.arithmetic}")
    elif queued:
        action, advised = SCALE_UP, replicas + 1
        reason = (f"{load.queued:.0f} request(s) waiting {_ms(load.queue_wait_s)} on average "
                  f"for a slot at {util_pct:.0f}% utilisation: {sizing.arithmetic}")
    elif sized < replicas and load.utilisation < target * SCALE_DOWN_FRACTION:
        action, advised = SCALE_DOWN, sized
        reason = (f"utilisation {util_pct:.0f}% per replica is under half the {target:.0%} "
                  f"target: {sizing.arithmetic}")
    else:
        action, advised = MAINTAIN, replicas
        reason = (f"utilisation {util_pct:.0f}% per replica is within the {target:.0%} target: "
                  f"{sizing.arithmetic}")
    label, score = confidence(load)
    name = step_name(load.pipeline_id, load.step_id)  # its Deployment (and HPA) name
    kubectl = (f"kubectl scale deployment/{name} --replicas={advised} -n {namespace}"
               if advised != replicas else "")
    max_replicas = max(advised * 2, replicas)
    hpa = {"name": name, "minReplicas": advised, "maxReplicas": max_replicas,
           "targetCPUUtilization": round(target * 100),
           "patch": (f"kubectl patch hpa/{name} -n {namespace} -p "
                     f"'{{\"spec\":{{\"minReplicas\":{advised},\"maxReplicas\":{max_replicas}}}}}'"),
           "pipeline_json": {"autoscale": {"minReplicas": advised, "maxReplicas": max_replicas,
                                           "targetCPUUtilization": round(target * 100)}}}
    return StepAdvice(step_id=load.step_id, step_type=load.step_type, action=action,
                      replicas=replicas, advised_replicas=advised, needed=round(needed, 3),
                      utilisation=round(load.utilisation, 4), reason=reason, confidence=label,
                      confidence_score=score, bottleneck=bottleneck, kubectl=kubectl, hpa=hpa)


@dataclass(frozen=True)
class _Sizing:
    #: Replicas needed at the target utilisation, unrounded.
    needed: float
    #: The sum behind it, as the reason shows it.
    arithmetic: str


def _sizing(load: StepLoad, target: float) -> _Sizing:
    """Replicas needed by CPU and by in-flight slots (the larger wins), with the arithmetic."""
    admitted = max(0.0, load.requests_per_s - load.refusals_per_s)
    parts: list[tuple[float, str]] = []
    if load.cpu_s_per_request is not None and load.cpu_cores:
        busy = admitted * load.cpu_s_per_request
        needed = busy / (load.cpu_cores * target)
        parts.append((needed, (
            f"{admitted:.1f} req/s x {_ms(load.cpu_s_per_request)} CPU per request = "
            f"{busy:.2f} cores busy; a replica has {load.cpu_cores:g} core(s) "
            f"({_SOURCES.get(load.cpu_source or '', 'cores')}): {busy:.2f} / "
            f"({load.cpu_cores:g} x {target:.0%}) = {needed:.2f} -> "
            f"{_replicas(needed)}")))
    if load.slot_utilisation is not None and load.max_inflight:
        slots_busy = load.slot_utilisation * load.max_inflight
        per_replica = load.max_inflight / load.replicas
        needed = slots_busy / (per_replica * target)
        parts.append((needed, (
            f"{slots_busy:.1f} of {load.max_inflight:.0f} in-flight slots busy "
            f"({load.slot_utilisation:.0%}); a replica has {per_replica:.0f} "
            f"(--max-inflight): {slots_busy:.1f} / ({per_replica:.0f} x {target:.0%}) = "
            f"{needed:.2f} -> {_replicas(needed)}")))
    if parts:  # the tighter of the two sizes the step
        needed, arithmetic = max(parts, key=lambda part: part[0])
        return _Sizing(needed, arithmetic)
    offered = load.requests_per_s * (load.service_s or 0.0)  # no CPU figures: wall time
    needed = offered / target
    return _Sizing(needed, f"{load.requests_per_s:.1f} req/s x {_ms(load.service_s)} service "
                           f"time = {offered:.2f} busy replicas -> {_replicas(needed)} at "
                           f"{target:.0%}")


_SOURCES = {"limit": "its CPU limit", "request": "its pod's CPU request",
            "host": "the host's cores"}


def _replicas(needed: float) -> str:
    count = max(1, math.ceil(needed - 1e-9))
    return f"{count} replica{'s' if count > 1 else ''}"


def _pressure(load: StepLoad, target: float) -> str:
    if load.refusals_per_s > 0:
        return f"the step refuses {load.refusals_per_s:.1f} req/s"
    if load.utilisation > target:
        return f"the step runs at {load.utilisation:.0%} against a {target:.0%} target"
    if (load.queued or 0) > 0 and (load.queue_wait_s or 0.0) > QUEUE_WAIT_NOISE_S:
        return f"{load.queued:.0f} request(s) wait {_ms(load.queue_wait_s)} for a slot"
    return (f"a request takes {_ms(load.cpu_s_per_request)} of CPU but "
            f"{_ms(load.service_s)} in the step, waiting for a core")


def bottleneck_step(loads: Sequence[StepLoad]) -> int | None:
    """The id of the step with the highest utilisation per replica (None without traffic)."""
    busy = [load for load in loads if load.requests > 0 and load.utilisation > 0]
    if not busy:
        return None
    return max(busy, key=lambda load: (load.utilisation, load.refusals_per_s)).step_id


def advise(loads: Sequence[StepLoad], *, namespace: str = "default",
           target: float = DEFAULT_TARGET_UTILISATION) -> list[StepAdvice]:
    """Advice for every step, in the order given, the bottleneck marked."""
    worst = bottleneck_step(loads)
    return [advise_step(load, namespace=namespace, target=target,
                        bottleneck=load.step_id == worst) for load in loads]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"

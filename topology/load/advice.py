"""Scaling advice per step, from its load (pure; advice only, nothing is ever applied).

For each step, Little's law sizes it: the replicas that keep each one's utilisation under the
target are ``ceil(arrival rate x service time / target utilisation)``. The action is

- **scale up** when the step refuses requests (its queue is full), when requests wait in its
  queue, or when its utilisation is over the target;
- **scale down** when it needs fewer replicas than it has and its utilisation is under half
  the target (the gap keeps advice from flapping around the target);
- **maintain** otherwise (and whenever there is no traffic to size it by).

The **bottleneck** is the step with the highest utilisation per replica. **Confidence** grows
with the requests seen and the length of the window: a handful of requests over two seconds
is a hint, hundreds over ten seconds a measurement.
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

SCALE_UP, SCALE_DOWN, MAINTAIN = "scale up", "scale down", "maintain"


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
    offered = load.requests_per_s * (load.service_s or 0.0)
    needed = offered / target
    sized = max(1, math.ceil(needed - 1e-9))
    util_pct = load.utilisation * 100
    rate = (f"{load.requests_per_s:.1f} req/s x {_ms(load.service_s)} service time = "
            f"{offered:.2f} busy replicas")
    queued = (load.queued or 0) > 0 and (load.queue_wait_s or 0.0) > QUEUE_WAIT_NOISE_S
    if load.requests <= 0:
        action, advised = MAINTAIN, replicas
        reason = "no requests in the window: nothing to size it by"
    elif load.refusals_per_s > 0:
        action, advised = SCALE_UP, max(sized, replicas + 1)
        reason = (f"refusing {load.refusals_per_s:.1f} req/s (queue full); {rate}, "
                  f"{util_pct:.0f}% per replica against a {target:.0%} target")
    elif load.utilisation > target:
        action, advised = SCALE_UP, max(sized, replicas + 1)
        reason = (f"utilisation {util_pct:.0f}% per replica is over the {target:.0%} target: "
                  f"{rate}")
    elif queued:
        action, advised = SCALE_UP, replicas + 1
        reason = (f"{load.queued:.0f} request(s) waiting {_ms(load.queue_wait_s)} on average "
                  f"for a slot at {util_pct:.0f}% utilisation: {rate}")
    elif sized < replicas and load.utilisation < target * SCALE_DOWN_FRACTION:
        action, advised = SCALE_DOWN, sized
        reason = (f"utilisation {util_pct:.0f}% per replica is under half the {target:.0%} "
                  f"target: {rate}, {sized} replica(s) suffice")
    else:
        action, advised = MAINTAIN, replicas
        reason = f"utilisation {util_pct:.0f}% per replica is within the {target:.0%} target: {rate}"
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

"""Which hops of a pipeline a request can take now: each step's own view of its next steps.

Every step exposes whether it can reach each of its next steps
(``stepchain_step_next_step_reachable``, :mod:`stepsvc.routing.reachability`): discovery, its
channel's state, its last forward's outcome. :func:`pipeline_hops` (pure) turns the scraped
samples into the pipeline's broken edges and what they mean for a request: a step that can
reach none of its next steps stops every request through it (the pipeline is not ready); a
step that lost some of them fails over to the rest (the pipeline is degraded).
:func:`scrape_hops` is the one I/O: a scrape of each step's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from topology.load.scrape import NextHop, ScrapeError, StepSample, merge_hops, scrape


@dataclass(frozen=True)
class BrokenHop:
    """An edge a request cannot take now."""

    from_step: int
    to_step: int
    reason: str


@dataclass(frozen=True)
class PipelineHops:
    """The hops of one pipeline as its steps see them."""

    #: step id -> its next steps as it reports them (steps that could not be scraped: absent).
    next_steps: Mapping[int, tuple[NextHop, ...]] = field(default_factory=dict)
    broken: tuple[BrokenHop, ...] = ()
    #: Steps that can reach none of their next steps: every request through them fails.
    cut_off: tuple[int, ...] = ()
    #: endpoint -> why its step's view is unknown.
    unknown: Mapping[str, str] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return bool(self.broken)

    def problems(self) -> list[str]:
        """One sentence per step with a broken hop, cut-off steps first."""
        by_step: dict[int, list[BrokenHop]] = {}
        for hop in self.broken:
            by_step.setdefault(hop.from_step, []).append(hop)
        out = []
        for step_id in sorted(by_step, key=lambda s: (s not in self.cut_off, s)):
            listed = "; ".join(f"step {h.to_step}: {h.reason}" for h in by_step[step_id])
            if step_id in self.cut_off:
                out.append(f"step {step_id} can reach none of its next steps, so every request "
                           f"through it fails ({listed})")
            else:
                out.append(f"step {step_id} cannot reach {listed}; its requests fail over to "
                           "its other next steps")
        return out


def pipeline_hops(next_steps: Mapping[int, Iterable[NextHop]],
                  unknown: Mapping[str, str] | None = None) -> PipelineHops:
    """The broken hops, from each step's next steps as it reports them (replicas' reports
    merged: a hop one replica cannot take is broken)."""
    merged = {step_id: merge_hops(hops) for step_id, hops in sorted(next_steps.items())}
    broken = tuple(BrokenHop(step_id, hop.step_id, hop.reason or "unreachable")
                   for step_id, hops in merged.items() for hop in hops if not hop.reachable)
    cut_off = tuple(step_id for step_id, hops in merged.items()
                    if hops and not any(hop.reachable for hop in hops))
    return PipelineHops(merged, broken, cut_off, dict(unknown or {}))


def hops_of_samples(samples: Iterable[StepSample],
                    unknown: Mapping[str, str] | None = None) -> PipelineHops:
    """:func:`pipeline_hops` of scraped samples (one or more per step)."""
    by_step: dict[int, list[NextHop]] = {}
    for sample in samples:
        by_step.setdefault(sample.step_id, []).extend(sample.next_steps)
    return pipeline_hops(by_step, unknown)


def scrape_hops(endpoints: Sequence[str], client: httpx.Client | None = None,
                clock: float = 0.0) -> PipelineHops:
    """Scrapes every endpoint (one per step replica) and answers :func:`pipeline_hops`."""
    owned = client is None
    http = client or httpx.Client()
    samples: list[StepSample] = []
    unknown: dict[str, str] = {}

    def one(endpoint: str) -> tuple[str, list[StepSample] | str]:
        try:
            return endpoint, scrape(endpoint, http, clock)
        except ScrapeError as exc:
            return endpoint, str(exc)

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(endpoints)))) as pool:
            for endpoint, result in pool.map(one, endpoints):
                if isinstance(result, str):
                    unknown[endpoint] = result
                else:
                    samples.extend(result)
    finally:
        if owned:
            http.close()
    return hops_of_samples(samples, unknown)

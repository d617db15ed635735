"""Live load of running steps: scrapes their ``/metrics`` and keeps recent samples for rates.

A rate needs two scrapes. :class:`LiveMetrics` remembers each endpoint's recent samples, so a
caller polling every two seconds (the console, ``stepchain top``, the advice API) gets rates
over the last :attr:`LiveMetrics.window_s` seconds; the first call of all scrapes twice,
:attr:`LiveMetrics.first_window_s` apart. The numbers it returns come from the pure
:mod:`topology.load.step_load` and :mod:`topology.load.advice`; only the scraping is I/O.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from topology.load.advice import DEFAULT_TARGET_UTILISATION, StepAdvice, advise
from topology.load.hops import PipelineHops, pipeline_hops
from topology.load.scrape import Exemplar, ScrapeError, StepSample, merge_replicas, scrape
from topology.load.step_load import StepLoad, step_load

DEFAULT_WINDOW_S = 6.0
FIRST_WINDOW_S = 1.0
#: Samples closer together than this are not a window (rates would be noise).
MIN_WINDOW_S = 0.5
#: An endpoint not scraped for this long is forgotten.
STALE_AFTER_S = 300.0
#: Recent trace ids returned per pipeline.
RECENT_TRACES = 8

Scraper = Callable[[str, float], list[StepSample]]


@dataclass(frozen=True)
class LoadReport:
    """The load of a set of steps over one window, with advice."""

    #: In the order asked for (flow order for a pipeline).
    loads: tuple[StepLoad, ...]
    advice: tuple[StepAdvice, ...]
    #: endpoint -> why it could not be scraped.
    errors: dict[str, str] = field(default_factory=dict)
    #: Requests the steps recorded with their trace id, newest first.
    recent_traces: tuple[Exemplar, ...] = ()
    target_utilisation: float = DEFAULT_TARGET_UTILISATION

    @property
    def bottleneck(self) -> int | None:
        return next((a.step_id for a in self.advice if a.bottleneck), None)

    def totals(self) -> dict[str, Any]:
        """Header numbers: requests/s into the pipeline (its first step), refusals, replicas."""
        first = self.loads[0] if self.loads else None
        return {
            "steps": len(self.loads),
            "replicas": sum(load.replicas for load in self.loads),
            "requests_per_s": first.requests_per_s if first else 0.0,
            "refusals_per_s": sum(load.refusals_per_s for load in self.loads),
            "cancelled_per_s": sum(load.cancelled_per_s for load in self.loads),
            "in_flight": sum(load.in_flight for load in self.loads),
            "queued": sum(load.queued or 0.0 for load in self.loads),
            "cpu_pct": sum(load.cpu_pct or 0.0 for load in self.loads),
            "rss_bytes": sum(load.rss_bytes or 0.0 for load in self.loads),
            "window_s": max((load.window_s for load in self.loads), default=0.0),
        }

    def hops(self) -> PipelineHops:
        """The hops a request cannot take, as the steps saw them at the end of the window."""
        return pipeline_hops({load.step_id: load.next_steps for load in self.loads})

    def to_json(self) -> dict[str, Any]:
        advice = {a.step_id: a for a in self.advice}
        hops = self.hops()
        return {
            "target_utilisation": self.target_utilisation,
            "bottleneck_step": self.bottleneck,
            "degraded": hops.degraded,
            "cut_off_steps": list(hops.cut_off),
            "problems": hops.problems(),
            "totals": self.totals(),
            "steps": [{**load.to_json(), "advice": advice[load.step_id].to_json()}
                      for load in self.loads],
            "recent_traces": [{"trace_id": e.trace_id, "seconds": e.seconds,
                               "timestamp": e.timestamp} for e in self.recent_traces],
            "errors": self.errors,
        }


class LiveMetrics:
    """Scrapes step endpoints and turns consecutive scrapes into loads and advice."""

    def __init__(self, scraper: Scraper | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 window_s: float = DEFAULT_WINDOW_S,
                 first_window_s: float = FIRST_WINDOW_S) -> None:
        self._client: httpx.Client | None = None
        if scraper is None:
            self._client = httpx.Client()
            client = self._client
            scraper = lambda endpoint, at: scrape(endpoint, client, at)  # noqa: E731
        self._scraper = scraper
        self._clock = clock
        self._sleep = sleep
        self.window_s = window_s
        self.first_window_s = first_window_s
        self._history: dict[str, deque[tuple[float, list[StepSample]]]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def report(self, endpoints: Sequence[str], *, order: Sequence[int] | None = None,
               replicas: dict[int, int] | None = None, namespace: str = "default",
               target: float = DEFAULT_TARGET_UTILISATION) -> LoadReport:
        """Scrapes `endpoints` and reports each step found there over the recent window.

        `order` lists step ids in flow order (others follow by id); `replicas` the replicas
        each step should have, when known (otherwise the endpoints found count).
        """
        errors: dict[str, str] = {}
        now = self._scrape_all(endpoints, errors)
        baselines = self._baselines(endpoints, now)
        if any(e not in errors and baselines.get(e) is None for e in endpoints):
            self._sleep(self.first_window_s)
            now = self._scrape_all(endpoints, errors)
            baselines = self._baselines(endpoints, now)
        before: dict[tuple[str, int], list[StepSample]] = {}
        after: dict[tuple[str, int], list[StepSample]] = {}
        for endpoint in endpoints:
            old, new = baselines.get(endpoint), self._latest(endpoint)
            if old is None or new is None or endpoint in errors:
                continue
            old_by_step = {(s.pipeline_id, s.step_id): s for s in old}
            for sample in new:
                key = (sample.pipeline_id, sample.step_id)
                after.setdefault(key, []).append(sample)
                # A replica with no earlier sample counts from zero (it just started).
                before.setdefault(key, []).append(old_by_step.get(key) or StepSample(
                    pipeline_id=sample.pipeline_id, step_id=sample.step_id,
                    step_type=sample.step_type, at=old[0].at if old else sample.at))
        loads = [step_load(merge_replicas(before[key]), merge_replicas(after[key]))
                 for key in after]
        if replicas:
            loads = [_with_replicas(load, replicas.get(load.step_id)) for load in loads]
        rank = {sid: i for i, sid in enumerate(order or ())}
        loads.sort(key=lambda load: (rank.get(load.step_id, len(rank)), load.step_id,
                                     load.pipeline_id))
        traces = sorted((e for samples in after.values() for s in samples for e in s.exemplars),
                        key=lambda e: e.timestamp or 0.0, reverse=True)
        unique: dict[str, Exemplar] = {}
        for exemplar in traces:
            unique.setdefault(exemplar.trace_id, exemplar)
        return LoadReport(loads=tuple(loads),
                          advice=tuple(advise(loads, namespace=namespace, target=target)),
                          errors=errors, recent_traces=tuple(unique.values())[:RECENT_TRACES],
                          target_utilisation=target)

    # -- history -------------------------------------------------------------------------------

    def _scrape_all(self, endpoints: Iterable[str], errors: dict[str, str]) -> float:
        endpoints = list(dict.fromkeys(endpoints))
        now = self._clock()

        def one(endpoint: str) -> tuple[str, list[StepSample] | str]:
            try:
                return endpoint, self._scraper(endpoint, now)
            except ScrapeError as exc:
                return endpoint, str(exc)

        if len(endpoints) <= 1:
            results = [one(e) for e in endpoints]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
                results = list(pool.map(one, endpoints))
        with self._lock:
            for endpoint, result in results:
                if isinstance(result, str):
                    errors[endpoint] = result
                    continue
                errors.pop(endpoint, None)
                history = self._history.setdefault(endpoint, deque())
                history.append((now, result))
                while history and history[0][0] < now - self.window_s - self.first_window_s:
                    history.popleft()
            # Endpoints nobody asked about for a while (deleted pipelines) are forgotten, so
            # the history stays as small as the steps being watched.
            for stale in [e for e, h in self._history.items()
                          if not h or h[-1][0] < now - STALE_AFTER_S]:
                del self._history[stale]
        return now

    def _baselines(self, endpoints: Iterable[str],
                   now: float) -> dict[str, list[StepSample] | None]:
        """Per endpoint, the oldest sample in the window that is far enough back."""
        out: dict[str, list[StepSample] | None] = {}
        with self._lock:
            for endpoint in endpoints:
                out[endpoint] = next(
                    (samples for at, samples in self._history.get(endpoint, ())
                     if now - self.window_s <= at <= now - MIN_WINDOW_S), None)
        return out

    def _latest(self, endpoint: str) -> list[StepSample] | None:
        with self._lock:
            history = self._history.get(endpoint)
            return history[-1][1] if history else None


def _with_replicas(load: StepLoad, wanted: int | None) -> StepLoad:
    """The load with the replicas the step is meant to have (utilisation per replica)."""
    if wanted is None or wanted < 1 or wanted == load.replicas:
        return load

    offered = load.utilisation * load.replicas
    return replace(load, replicas=wanted, utilisation=offered / wanted)

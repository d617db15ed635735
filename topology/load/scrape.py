"""Reading a step's Prometheus ``/metrics``: one scrape -> one :class:`StepSample` per step.

The exposition is parsed with ``prometheus_client``'s own parsers, never by hand: the
OpenMetrics parser when the step answered OpenMetrics (asked for first, because only that
format carries the trace-id exemplars the console links to Jaeger), the Prometheus text
parser (``prometheus_client.parser.text_string_to_metric_families``) otherwise.

:func:`parse_samples` is pure; :func:`fetch_exposition` is the one HTTP call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

#: What a scrape asks for: OpenMetrics (with exemplars) first, the text format otherwise.
ACCEPT = "application/openmetrics-text; version=1.0.0, text/plain; version=0.0.4; q=0.5"
SCRAPE_TIMEOUT_S = 2.0
#: Longest exposition read from one step (a step's is a few KiB).
MAX_EXPOSITION_BYTES = 4 * 1024 * 1024
PREFIX = "stepchain_step_"
#: The status code a step answers when its queue is full: a refusal, not an error.
REFUSED_CODE = "RESOURCE_EXHAUSTED"
#: A call its caller cancelled (a client gone, a load-test user stopped): not an error either.
CANCELLED_CODE = "CANCELLED"


class ScrapeError(RuntimeError):
    """A step's /metrics could not be read or parsed; the message names the endpoint."""


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: ``buckets`` are (upper bound, count of observations <= it)."""

    buckets: tuple[tuple[float, float], ...] = ()
    sum: float = 0.0
    count: float = 0.0

    def __add__(self, other: Histogram) -> Histogram:
        if not self.buckets:
            return other if not self.count else replace(self, sum=self.sum + other.sum,
                                                        count=self.count + other.count)
        if not other.buckets:
            return replace(self, sum=self.sum + other.sum, count=self.count + other.count)
        mine = dict(self.buckets)
        theirs = dict(other.buckets)
        bounds = sorted(set(mine) | set(theirs))
        return Histogram(tuple((b, mine.get(b, 0.0) + theirs.get(b, 0.0)) for b in bounds),
                         self.sum + other.sum, self.count + other.count)

    def __sub__(self, older: Histogram) -> Histogram:
        """The observations made between `older` and this one (never negative: a restarted
        process's counters start again at zero, so its whole count is the difference)."""
        if self.count < older.count:  # reset: the process restarted between the two scrapes
            return self
        old = dict(older.buckets)
        return Histogram(tuple((b, max(0.0, c - old.get(b, 0.0))) for b, c in self.buckets),
                         max(0.0, self.sum - older.sum), self.count - older.count)

    @property
    def mean(self) -> float | None:
        """Mean observation, None without any."""
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile by linear interpolation inside its bucket, as Prometheus'
        ``histogram_quantile`` does; None without observations. In the +Inf bucket it answers
        the highest finite bound (the most the histogram can say)."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = count - lower_count
                if width <= 0:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / width
            lower_bound, lower_count = bound, count
        return lower_bound


@dataclass(frozen=True)
class Exemplar:
    """A request the step recorded with its trace id."""

    trace_id: str
    seconds: float
    #: Unix time of the observation (None when the exposition gave none).
    timestamp: float | None = None


@dataclass(frozen=True)
class NextHop:
    """What a step says of one of its next steps: can a request go on to it now, and why not."""

    step_id: int
    reachable: bool
    channel: str = "-"
    reason: str = ""
    address: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "reachable": self.reachable, "channel": self.channel,
                "reason": self.reason, "address": self.address}


@dataclass(frozen=True)
class StepSample:
    """One step's series in one scrape (or the sum over its replicas' scrapes)."""

    pipeline_id: str
    step_id: int
    step_type: str
    #: Monotonic seconds when it was scraped (the mean for a sum over replicas).
    at: float
    #: Finished calls by gRPC status code (cumulative).
    requests: dict[str, float] = field(default_factory=dict)
    duration: Histogram = Histogram()
    queue_wait: Histogram = Histogram()
    kernel: Histogram = Histogram()
    forward: Histogram = Histogram()
    in_flight: float = 0.0
    busy: float | None = None
    queued: float | None = None
    max_inflight: float | None = None
    max_queue: float | None = None
    cpu_seconds: float | None = None
    rss_bytes: float | None = None
    #: Cores the replicas may use (summed over replicas) and where the figure comes from
    #: ("limit", "request", "host"; see stepsvc.telemetry.cpu).
    cpu_cores: float | None = None
    cpu_source: str | None = None
    #: The host's cores and busy CPU seconds (the mean over replicas: they may share a host).
    host_cpu_cores: float | None = None
    host_busy_seconds: float | None = None
    #: How many replica scrapes this sample sums.
    replicas: int = 1
    exemplars: tuple[Exemplar, ...] = ()
    #: The step's next steps as it sees them (stepchain_step_next_step_reachable); a hop one
    #: replica cannot take counts as broken in a sum over replicas.
    next_steps: tuple[NextHop, ...] = ()

    @property
    def total_requests(self) -> float:
        return sum(self.requests.values())

    @property
    def refused(self) -> float:
        return self.requests.get(REFUSED_CODE, 0.0)

    @property
    def cancelled(self) -> float:
        """Calls their callers cancelled before the answer."""
        return self.requests.get(CANCELLED_CODE, 0.0)

    @property
    def failed(self) -> float:
        """Calls that ended in an error: not OK, not a refusal, not cancelled by the caller."""
        return sum(v for code, v in self.requests.items()
                   if code not in ("OK", REFUSED_CODE, CANCELLED_CODE))


_HISTOGRAMS = {"duration_seconds": "duration", "queue_wait_seconds": "queue_wait",
               "kernel_seconds": "kernel", "forward_seconds": "forward"}
_GAUGES = {"in_flight": "in_flight", "busy_slots": "busy", "queue_depth": "queued",
           "max_inflight": "max_inflight", "max_queue": "max_queue",
           "cpu_cores": "cpu_cores", "host_cpu_cores": "host_cpu_cores",
           "host_cpu_busy_seconds_total": "host_busy_seconds",
           "host_cpu_busy_seconds": "host_busy_seconds"}  # OpenMetrics drops the _total


def parse_samples(text: str, at: float, *, openmetrics: bool = False) -> list[StepSample]:
    """Every step found in an exposition (normally one), sorted by pipeline and step id.

    Raises ScrapeError when the text is not a valid exposition.
    """
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    steps: dict[tuple[str, int, str], dict[str, Any]] = {}
    process: dict[str, float] = {}
    try:
        families = list(parse(text))
    except Exception as exc:  # the parsers raise ValueError and friends on bad input
        raise ScrapeError(f"not a Prometheus exposition: {exc}") from exc
    for family in families:
        for sample in family.samples:
            if sample.name == "process_cpu_seconds_total":
                process["cpu"] = sample.value
            elif sample.name == "process_resident_memory_bytes":
                process["rss"] = sample.value
            if not sample.name.startswith(PREFIX):
                continue
            labels = sample.labels
            try:
                key = (labels["pipeline_id"], int(labels["step_id"]), labels["step_type"])
            except (KeyError, ValueError):
                continue
            step = steps.setdefault(key, {"requests": {}, "hist": {}, "exemplars": [],
                                          "next_steps": []})
            _add_sample(step, sample.name[len(PREFIX):], labels, sample.value,
                        getattr(sample, "exemplar", None))
    out = []
    for (pipeline_id, step_id, step_type), data in sorted(steps.items()):
        hist = data["hist"]
        out.append(StepSample(
            pipeline_id=pipeline_id, step_id=step_id, step_type=step_type, at=at,
            requests=dict(data["requests"]), duration=_histogram(hist.get("duration", {})),
            queue_wait=_histogram(hist.get("queue_wait", {})),
            kernel=_histogram(hist.get("kernel", {})),
            forward=_histogram(hist.get("forward", {})),
            in_flight=data.get("in_flight") or 0.0, busy=data.get("busy"),
            queued=data.get("queued"), max_inflight=data.get("max_inflight"),
            max_queue=data.get("max_queue"),
            cpu_seconds=process.get("cpu"), rss_bytes=process.get("rss"),
            cpu_cores=data.get("cpu_cores"), cpu_source=data.get("cpu_source"),
            host_cpu_cores=data.get("host_cpu_cores"),
            host_busy_seconds=data.get("host_busy_seconds"),
            exemplars=tuple(sorted(data["exemplars"], key=lambda e: e.timestamp or 0.0,
                                   reverse=True)),
            next_steps=tuple(sorted(data["next_steps"], key=lambda hop: hop.step_id))))
    return out


def _add_sample(step: dict[str, Any], name: str, labels: dict[str, str], value: float,
                exemplar: Any) -> None:
    if name == "next_step_reachable":
        with contextlib.suppress(KeyError, ValueError):
            step["next_steps"].append(NextHop(
                int(labels["next_step"]), value >= 1.0, labels.get("channel", "-"),
                labels.get("reason", ""), labels.get("next_address", "")))
        return
    if name == "requests_total":
        code = labels.get("grpc_code", "UNKNOWN")
        step["requests"][code] = step["requests"].get(code, 0.0) + value
        return
    if name in _GAUGES:
        step[_GAUGES[name]] = value
        if name == "cpu_cores":
            step["cpu_source"] = labels.get("source")
        return
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)] if name.endswith(suffix) else None
        if base in _HISTOGRAMS:
            hist = step["hist"].setdefault(_HISTOGRAMS[base], {"buckets": []})
            if suffix == "_bucket":
                hist["buckets"].append((float(labels.get("le", "+Inf")), value))
                if exemplar is not None and base == "duration_seconds":
                    trace_id = exemplar.labels.get("trace_id")
                    if trace_id:
                        stamp = exemplar.timestamp
                        step["exemplars"].append(Exemplar(
                            trace_id, float(exemplar.value),
                            None if stamp is None else float(stamp.sec + stamp.nsec / 1e9)))
            else:
                hist[suffix[1:]] = value
            return


def _histogram(data: dict[str, Any]) -> Histogram:
    return Histogram(tuple(sorted(data.get("buckets", []))), float(data.get("sum", 0.0)),
                     float(data.get("count", 0.0)))


def merge_replicas(samples: Sequence[StepSample]) -> StepSample:
    """The sum of one step's replica samples (counts, histograms, gauges, CPU and RSS)."""
    if not samples:
        raise ValueError("merge_replicas needs at least one sample")
    first = samples[0]
    if len(samples) == 1:
        return first
    requests: dict[str, float] = {}
    for s in samples:
        for code, v in s.requests.items():
            requests[code] = requests.get(code, 0.0) + v

    def total(attr: str) -> float | None:
        values = [getattr(s, attr) for s in samples]
        return None if any(v is None for v in values) else float(sum(values))

    def mean(attr: str) -> float | None:
        values = [getattr(s, attr) for s in samples]
        return None if any(v is None for v in values) else float(sum(values)) / len(values)

    def hist(attr: str) -> Histogram:
        out = Histogram()
        for s in samples:
            out = out + getattr(s, attr)
        return out

    return StepSample(
        pipeline_id=first.pipeline_id, step_id=first.step_id, step_type=first.step_type,
        at=sum(s.at for s in samples) / len(samples), requests=requests,
        duration=hist("duration"), queue_wait=hist("queue_wait"), kernel=hist("kernel"),
        forward=hist("forward"), in_flight=sum(s.in_flight for s in samples),
        busy=total("busy"), queued=total("queued"), max_inflight=total("max_inflight"),
        max_queue=total("max_queue"), cpu_seconds=total("cpu_seconds"),
        rss_bytes=total("rss_bytes"), cpu_cores=total("cpu_cores"),
        cpu_source=first.cpu_source, host_cpu_cores=mean("host_cpu_cores"),
        host_busy_seconds=mean("host_busy_seconds"), replicas=sum(s.replicas for s in samples),
        exemplars=tuple(sorted((e for s in samples for e in s.exemplars),
                               key=lambda e: e.timestamp or 0.0, reverse=True)),
        next_steps=merge_hops(hop for s in samples for hop in s.next_steps))


def merge_hops(hops: Iterable[NextHop]) -> tuple[NextHop, ...]:
    """One hop per next step: broken when any replica says it cannot take it (its requests
    would fail), with that replica's reason."""
    merged: dict[int, NextHop] = {}
    for hop in hops:
        known = merged.get(hop.step_id)
        if known is None or (known.reachable and not hop.reachable):
            merged[hop.step_id] = hop
    return tuple(merged[i] for i in sorted(merged))


def fetch_exposition(endpoint: str, client: httpx.Client) -> tuple[str, bool]:
    """GETs ``http://<endpoint>/metrics``; returns (text, whether it is OpenMetrics).

    Raises ScrapeError naming the endpoint when it does not answer 200 in time.
    """
    url = endpoint if endpoint.startswith(("http://", "https://")) else f"http://{endpoint}"
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    try:
        with client.stream("GET", url, headers={"Accept": ACCEPT},
                           timeout=SCRAPE_TIMEOUT_S) as reply:
            if reply.status_code != 200:
                raise ScrapeError(f"{url} answered HTTP {reply.status_code}")
            body = bytearray()
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > MAX_EXPOSITION_BYTES:
                    raise ScrapeError(f"{url} sent more than {MAX_EXPOSITION_BYTES} bytes")
            content_type = reply.headers.get("content-type", "")
    except httpx.HTTPError as exc:
        raise ScrapeError(f"cannot scrape {url}: {exc}") from exc
    return body.decode("utf-8", "replace"), content_type.startswith(
        "application/openmetrics-text")


def scrape(endpoint: str, client: httpx.Client, at: float) -> list[StepSample]:
    """The step samples at `endpoint` (``host:port`` of a ``/metrics``)."""
    text, openmetrics = fetch_exposition(endpoint, client)
    try:
        return parse_samples(text, at, openmetrics=openmetrics)
    except ScrapeError as exc:
        raise ScrapeError(f"{endpoint}: {exc}") from None

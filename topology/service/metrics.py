"""Prometheus metrics of the topology service, served on the API's own port at ``GET /metrics``.

- ``stepchain_topology_requests_total{method, route, status}`` — finished HTTP requests.
  ``route`` is the route template (``/pipeline/{pipeline_id}``), ``unmatched`` for a path no
  route knows, and ``method`` is ``other`` for non-standard methods: the label sets stay
  bounded whatever clients send. Scrapes of ``/metrics`` are not counted.
- ``stepchain_topology_request_duration_seconds{method, route}`` — time to answer a request.
- ``stepchain_topology_backend_operation_seconds{backend, operation}`` and
  ``stepchain_topology_backend_errors_total{backend, operation}`` — each ``apply``, ``delete``,
  ``status`` and ``list`` call of the backend (Kubernetes API calls, local step processes),
  timed also when it failed.
- ``stepchain_topology_pipelines`` — pipelines the backend holds, as last seen by a list,
  status, apply or delete (the service lists once at startup).
- ``stepchain_topology_step_processes`` — local backend only: step server processes running,
  read at scrape time.
- ``stepchain_topology_rejections_total{reason}`` — refused requests: ``validation`` (422),
  ``auth`` (401/403), ``conflict`` (409), ``too_large`` (413).

Each :class:`TopologyMetrics` owns its registry, so several apps in one process (tests) never
collide.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepsvc.telemetry.metrics import LATENCY_BUCKETS, new_registry
from topology.backend import ApplyResult, Backend, PipelineStatus
from topology.pipeline.graph import Pipeline

METRICS_PATH = "/metrics"
#: The exposition's media type, for the endpoint that serves :meth:`TopologyMetrics.exposition`.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BACKEND_OPERATIONS = ("apply", "delete", "status", "list")
#: Status codes that mean the service refused the request, and the reason label of each.
REJECTION_REASONS = {401: "auth", 403: "auth", 409: "conflict", 413: "too_large",
                     422: "validation"}

T = TypeVar("T")


@runtime_checkable
class RunsStepProcesses(Protocol):
    """A backend whose steps are processes of this machine (the local backend)."""

    def running_step_processes(self) -> int:
        """How many step server processes run now."""
        ...


class TopologyMetrics:
    """The metrics of one topology service: requests, rejections, backend calls, pipelines."""

    def __init__(self, backend_name: str) -> None:
        self.registry = new_registry()
        reg = self.registry
        self.backend_name = backend_name
        self._requests = Counter(
            "stepchain_topology_requests", "HTTP requests answered, by route template and status.",
            ("method", "route", "status"), registry=reg)
        self._request_seconds = Histogram(
            "stepchain_topology_request_duration_seconds", "Time to answer an HTTP request.",
            ("method", "route"), buckets=LATENCY_BUCKETS, registry=reg)
        self._rejections = Counter(
            "stepchain_topology_rejections", "Requests refused: validation (422), auth "
            "(401/403), conflict (409), too_large (413).", ("reason",), registry=reg)
        self._backend_seconds = Histogram(
            "stepchain_topology_backend_operation_seconds",
            "Time of a backend call (apply, delete, status, list), failed ones included.",
            ("backend", "operation"), buckets=LATENCY_BUCKETS, registry=reg)
        self._backend_errors = Counter(
            "stepchain_topology_backend_errors", "Backend calls that raised an error.",
            ("backend", "operation"), registry=reg)
        self.pipelines = Gauge("stepchain_topology_pipelines",
                               "Pipelines the backend holds, as last seen by the service.",
                               registry=reg)
        # Expose the zero series from the start so rate() and alerts work before the first one.
        for reason in sorted(set(REJECTION_REASONS.values())):
            self._rejections.labels(reason)
        for operation in BACKEND_OPERATIONS:
            self._backend_errors.labels(backend_name, operation)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Records one answered request (and a rejection when `status` is one)."""
        method = method if method in KNOWN_METHODS else "other"
        self._requests.labels(method, route, str(status)).inc()
        self._request_seconds.labels(method, route).observe(seconds)
        reason = REJECTION_REASONS.get(status)
        if reason is not None:
            self._rejections.labels(reason).inc()

    def timed(self, operation: str, call: Callable[[], T]) -> T:
        """Runs the backend call `call`, recording its time and, when it raises, an error."""
        start = time.perf_counter()
        try:
            return call()
        except Exception:
            self._backend_errors.labels(self.backend_name, operation).inc()
            raise
        finally:
            self._backend_seconds.labels(self.backend_name, operation).observe(
                time.perf_counter() - start)

    def watch_step_processes(self, backend: RunsStepProcesses) -> None:
        """Exposes the backend's running step processes, counted at each scrape."""
        Gauge("stepchain_topology_step_processes",
              "Step server processes the local backend runs now.",
              registry=self.registry).set_function(backend.running_step_processes)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (media type ``METRICS_CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class MeteredBackend:
    """A backend whose every call is timed and counted, and that tracks the pipeline count."""

    def __init__(self, backend: Backend, metrics: TopologyMetrics) -> None:
        self.inner = backend
        self.name = backend.name
        self.namespace = backend.namespace
        self._metrics = metrics
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def apply(self, pipeline: Pipeline) -> ApplyResult:
        """The inner apply; the pipeline counts as known once it succeeded."""
        try:
            result = self._metrics.timed("apply", lambda: self.inner.apply(pipeline))
        except Exception:
            # A failed apply may leave a pipeline half made (Kubernetes) or stopped entirely
            # (local): ask the backend which, rather than guess.
            with contextlib.suppress(Exception):  # counted; the caller needs the first error
                self.status(pipeline.pipeline_id)
            raise
        self._seen(add=[pipeline.pipeline_id])
        return result

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        """The inner status; also tells whether the pipeline still exists."""
        status = self._metrics.timed("status", lambda: self.inner.status(pipeline_id))
        if status is None:
            self._seen(remove=[pipeline_id])
        else:
            self._seen(add=[pipeline_id])
        return status

    def list_pipelines(self) -> list[PipelineStatus]:
        """The inner list; the known pipelines become exactly the listed ones."""
        statuses = self._metrics.timed("list", self.inner.list_pipelines)
        self._seen(replace=[s.pipeline_id for s in statuses])
        return statuses

    def delete(self, pipeline_id: str) -> bool:
        """The inner delete; afterwards the pipeline is gone either way."""
        deleted = self._metrics.timed("delete", lambda: self.inner.delete(pipeline_id))
        self._seen(remove=[pipeline_id])
        return deleted

    def close(self) -> None:
        """Closes the inner backend (not an operation users ask for: not metered)."""
        self.inner.close()

    def _seen(self, add: Iterable[str] = (), remove: Iterable[str] = (),
              replace: Iterable[str] | None = None) -> None:
        with self._lock:
            if replace is not None:
                self._known = set(replace)
            self._known.update(add)
            self._known.difference_update(remove)
            self._metrics.pipelines.set(len(self._known))


class RequestMetrics:
    """ASGI middleware recording each HTTP request by its route template.

    Added outermost, so it also sees the 413s the body limit answers before routing.
    """

    def __init__(self, app: ASGIApp, metrics: TopologyMetrics,
                 routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before responding

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_template(scope, self.routes)
            if route != METRICS_PATH:  # scrapes are not API traffic
                self.metrics.observe_request(str(scope["method"]), route, status,
                                             time.perf_counter() - start)


def route_template(scope: Scope, routes: Iterable[BaseRoute]) -> str:
    """The template of the route that handled (or would handle) the request in `scope`.

    The router records its route in the scope; requests refused before routing (413) are
    matched here the same way. A path no route matches is ``unmatched``.
    """
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    template = getattr(route, "path_format", None) if route is not None else None
    return template if isinstance(template, str) else UNMATCHED_ROUTE

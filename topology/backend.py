"""The one interface both topology backends (kubernetes, local) implement, and what they return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from stepsvc.step.config import StepSpec as RouteStep
from topology.pipeline.graph import Pipeline


class BackendError(RuntimeError):
    """The backend could not do what was asked (API server refused, a step did not start)."""


@dataclass(frozen=True)
class StepStatus:
    """One step as the backend sees it now."""

    step_id: int
    type: str
    ready: bool
    ready_replicas: int
    replicas: int
    address: str | None = None
    #: Times the step was restarted after it exited (local backend; Kubernetes restarts pods).
    restarts: int = 0
    #: Why the step is down for good (e.g. it kept exiting), with the end of its log.
    error: str | None = None
    #: host:port of each replica's Prometheus /metrics, where the service can reach them
    #: (local backend); empty when it cannot (Kubernetes: scrape the pods, or port-forward).
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineStatus:
    """A deployed pipeline: its steps' readiness and where clients send requests."""

    pipeline_id: str
    namespace: str
    fingerprint: str
    entrypoint: str | None
    steps: tuple[StepStatus, ...]
    #: Extra facts for users (e.g. the entry Service's nodePort).
    details: dict[str, Any] = field(default_factory=dict)
    #: The routing graph as deployed (what each step's PIPELINE_CONFIG holds): type, params,
    #: next_step, preferred_next and route of every step. Empty when it cannot be read.
    graph: tuple[RouteStep, ...] = ()
    #: The step clients call (None when unknown).
    entry_step: int | None = None
    #: Base URL of the entry step's HTTP face (POST an image to it or to its /process).
    http_entrypoint: str | None = None
    #: The pipeline JSON as submitted (None when the backend cannot tell).
    spec: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        """Every step has all its replicas ready."""
        return bool(self.steps) and all(s.ready for s in self.steps)


@dataclass(frozen=True)
class ApplyResult:
    """What an apply created or updated."""

    pipeline_id: str
    resources: list[dict[str, Any]]
    #: host:port of the entry step; None while it runs no process (replicas: 0).
    entrypoint: str | None
    details: dict[str, Any] = field(default_factory=dict)
    #: Base URL of the entry step's HTTP face (POST an image to it or to its /process).
    http_entrypoint: str | None = None


class Backend(Protocol):
    """Deploys pipelines somewhere. Every method is idempotent and thread-safe."""

    name: str
    namespace: str

    def apply(self, pipeline: Pipeline) -> ApplyResult:
        """Creates or updates the pipeline so that it matches `pipeline` exactly (stale steps
        removed). Raises BackendError when it cannot."""
        ...

    def status(self, pipeline_id: str) -> PipelineStatus | None:
        """The pipeline's current state, or None when it does not exist."""
        ...

    def list_pipelines(self) -> list[PipelineStatus]:
        """Every pipeline this backend manages, sorted by id."""
        ...

    def delete(self, pipeline_id: str) -> bool:
        """Removes everything of the pipeline; False when there was nothing."""
        ...

    def close(self) -> None:
        """Releases what the backend holds (the local backend stops its step processes)."""
        ...

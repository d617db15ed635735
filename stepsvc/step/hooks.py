"""What the step server tells whoever watches it: each phase of a request, and its outcome.

:class:`StepObserver` does nothing; telemetry (:mod:`stepsvc.telemetry.observer`) subclasses it
for spans and metrics, tests for counting. :class:`ActiveSteps` is what the server needs of
discovery.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import grpc
from stepchain.v1 import step_pb2


class ActiveSteps(Protocol):
    """What the servicer needs from discovery: step id -> "host:port" of active steps."""

    def active(self) -> dict[int, str]: ...


class StepObserver:
    """Telemetry hooks; this default does nothing. Subclass to add spans and metrics."""

    def phase(self, name: str) -> AbstractContextManager[Any]:
        """Wraps one phase of a request: "queue", "decode", "kernel", "forward", "encode"."""
        return nullcontext()

    def finished(self, *, code: grpc.StatusCode, timing: step_pb2.StepTiming,
                 request: step_pb2.ProcessRequest, request_id: str) -> str | None:
        """Called once per request with its final status and this step's timing; returns the
        request's trace id for the response ("" or None: no trace)."""
        return None

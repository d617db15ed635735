"""The Locust user that loads a stepchain pipeline over gRPC (imports Locust and gevent).

Each user owns a channel to one pipeline entry (users are dealt round-robin across the
targets), sends the plan's ``ProcessRequest`` back to back (or with ``think_time`` between),
and reports to Locust:

* one ``grpc`` entry per request — response time, response size, and on a non-OK status a
  failure whose message starts with the status code name (``RESOURCE_EXHAUSTED: ...``);
* the response's per-step timings in that event's ``context`` (``step_timings``), which
  ``loadtest.step_report`` keeps apart from Locust's totals.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from grpc.experimental import gevent as grpc_gevent  # type: ignore[attr-defined]
from locust import User, task
from stepchain.v1 import step_pb2, step_pb2_grpc

from loadtest import entries
from loadtest.targets import Target, parse_hosts
from stepsvc.limits import DEFAULT_MAX_MESSAGE_BYTES
from stepsvc.routing.channels import channel_options
from stepsvc.routing.throttle import AdaptiveThrottle, throttled

# gRPC's C core must cooperate with Locust's gevent loop, or every blocking call stalls all
# users; this has to happen before the first channel exists.
grpc_gevent.init_gevent()



@dataclass(frozen=True)
class LoadPlan:
    """What every user sends and where: built once by the locustfile's init listener."""

    targets: tuple[Target, ...]
    request: step_pb2.ProcessRequest
    timeout_s: float = 30.0
    think_time_s: float = 0.0
    #: The ``--host`` value the targets came from (None: discovered in Kubernetes).
    host_spec: str | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a load plan needs at least one target")
        if not self.timeout_s > 0 or not self.think_time_s >= 0:
            raise ValueError(f"a load plan needs timeout_s > 0 and think_time_s >= 0, got "
                             f"{self.timeout_s} and {self.think_time_s}")


class PipelineUser(User):
    """Sends images to a pipeline entry through ``stepchain.v1.StepService/Process``."""

    #: Set by the locustfile (``PipelineUser.plan = LoadPlan(...)``) before users start.
    plan: ClassVar[LoadPlan | None] = None
    _dealer: ClassVar[itertools.count[int]] = itertools.count()
    #: Client-side adaptive throttling, one per target address (stepsvc.routing.throttle).
    _throttles: ClassVar[dict[str, AdaptiveThrottle]] = {}

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._channel: grpc.Channel | None = None
        self._stub: step_pb2_grpc.StepServiceStub | None = None
        self._target: Target | None = None
        self._label: str | None = None

    def wait_time(self) -> float:
        """Seconds between two requests of this user (``--think-time``)."""
        return self.plan.think_time_s if self.plan is not None else 0.0

    def on_start(self) -> None:
        """Pick this user's target and open its channel."""
        plan = self._require_plan()
        targets = plan.targets
        # The web UI can change the host after the plan was built: follow it.
        if self.host and plan.host_spec is not None and self.host != plan.host_spec:
            targets = tuple(parse_hosts(self.host))
        self._target = targets[next(PipelineUser._dealer) % len(targets)]
        self._label = self._target.label if len(targets) > 1 else None
        address = self._target.address
        # One adaptive throttle per target, shared by this process's users (SRE book: per
        # client), so a refusing pipeline is not sent what it will refuse.
        throttle = PipelineUser._throttles.setdefault(address, AdaptiveThrottle())
        self._channel = throttled(
            grpc.insecure_channel(address, options=channel_options(DEFAULT_MAX_MESSAGE_BYTES)),
            f"the pipeline at {address}", throttle)
        self._stub = step_pb2_grpc.StepServiceStub(self._channel)

    def on_stop(self) -> None:
        """Close this user's channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @task
    def process(self) -> None:
        """Send one image; report the request, with each step's timings in its context."""
        plan = self._require_plan()
        assert self._stub is not None
        fire = self.environment.events.request.fire
        name = entries.request_name(self._label)
        context: dict[str, Any] = {"target": self._target.address if self._target else ""}
        start = time.perf_counter()
        # A future, not the blocking call: Locust stops a user by killing its greenlet, and a
        # blocking call killed mid-flight leaves grpcio's gevent thread pool completing it
        # behind the user's back, and grpcio then logs `Invalid encoding on b'\xff\xff\xff\xff
        # 061dCANCELLED:Stream removed...'` tracebacks: the call's status text read after its
        # memory was reused. Waiting on a future is safe to interrupt: the channel's own
        # poller completes the call we cancel.
        call = self._stub.Process.future(plan.request, timeout=plan.timeout_s)
        try:
            response = call.result()
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            fire(request_type=entries.REQUEST_TYPE, name=name,
                 response_time=(time.perf_counter() - start) * 1000.0, response_length=0,
                 exception=entries.GrpcStatusError(code.name if code else "UNKNOWN",
                                                   details or ""),
                 context=context)
            return
        except BaseException:  # the user is being stopped (GreenletExit): not a request result
            call.cancel()
            raise
        context["step_timings"] = response.timings
        if self._label:
            context["pipeline_label"] = self._label
        fire(request_type=entries.REQUEST_TYPE, name=name,
             response_time=(time.perf_counter() - start) * 1000.0,
             response_length=response.ByteSize(), exception=None, context=context)

    def _require_plan(self) -> LoadPlan:
        if self.plan is None:
            raise RuntimeError("PipelineUser.plan is not set: run it through "
                               "loadtest/locustfile.py, or set PipelineUser.plan = LoadPlan(...) "
                               "in your locustfile's init listener")
        return self.plan

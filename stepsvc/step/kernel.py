"""The kernel loop of one request: one native call per pass, stopping between passes when
nobody wants the result any more.

A native call cannot be interrupted, so passes are looped here: when the caller gave up
(deadline passed, cancelled, or the server stopped after its drain grace) the request ends
between two passes instead of burning CPU and an in-flight slot to the end. Every pass
computes the same result from the same input.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

import native
from stepsvc.protocol import DRAINING_KEY
from stepsvc.step.admission import Admission
from stepsvc.step.checks import ExecSettings
from stepsvc.step.plan import StepFacts
from stepsvc.step.refusals import StepAbort, refusal

log = logging.getLogger("stepchain.step")


def run_kernel(facts: StepFacts, img: Any, settings: ExecSettings,
               context: grpc.ServicerContext, admission: Admission, out: Any = None) -> Any:
    """The kernel's result for `img` (`out`: where to write it, when not a new array)."""
    extra: dict[str, Any] = {} if out is None else {"out": out}
    if settings.chunk:
        extra["chunk"] = settings.chunk
    result: Any = None
    for done in range(settings.passes):
        if done:
            check_still_wanted(facts, context, admission, done, settings.passes)
        try:
            result = native.run(facts.step.type, img, threads=settings.threads, passes=1,
                                schedule=settings.schedule, **facts.params, **extra)
        except native.PluginError as exc:  # the plugin's bug: logged for its author
            log.warning("%s: %s", facts.where, exc)
            raise refusal(exc) from None
        except ValueError as exc:
            raise refusal(exc) from None
    return result


def check_still_wanted(facts: StepFacts, context: grpc.ServicerContext, admission: Admission,
                       done: int, passes: int) -> None:
    """StepAbort when the caller's deadline passed, the drain's grace ran out or the call was
    cancelled: the request stops after pass `done` of `passes`."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise StepAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the request's deadline passed after kernel pass {done} of {passes}; "
                        "stopped there")
    if admission.cut or (not context.is_active() and admission.closed):
        raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"{facts.where} is draining (shutting down) and its grace period ran "
                        f"out after kernel pass {done} of {passes}; retry on another replica",
                        ((DRAINING_KEY, "1"),))
    if not context.is_active():
        raise StepAbort(grpc.StatusCode.CANCELLED,
                        f"the request was cancelled (caller gone or server stopping) after "
                        f"kernel pass {done} of {passes}; stopped there")

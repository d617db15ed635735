"""How a request ends early: one exception, one table of gRPC codes, one way to answer.

Every refusal of a step is a :class:`StepAbort` (code, message, trailers). The step's parts
raise their own exceptions -- admission (:mod:`~stepsvc.step.admission`), the memory budget,
the codec, shared memory, a kernel's parameter check, a plugin breaking its contract -- and :func:`refusal` maps each to its
gRPC code in :data:`CODES`, the one table. :func:`abort` answers the call: the message names
this step unless a step further down already failed, whose id the ``stepchain-failed-step``
trailer carries back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc

from native.dispatch import PluginError
from stepsvc.frames.codec import ImageError, PixelLimitError
from stepsvc.frames.shm import BadHandle, NotShared
from stepsvc.protocol import DRAINING_KEY, FAILED_STEP_KEY, UNSHARED_KEY
from stepsvc.routing.forward import ForwardError
from stepsvc.step.admission import Draining, QueueFull, QueueTimeout
from stepsvc.step.memory_budget import MemoryExhausted


class StepAbort(Exception):
    """Ends a request with `code` and `message` (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = tuple(trailers)


#: Exception -> the code a caller gets, and the trailer that tells it what to do (the first
#: match wins: a PixelLimitError is an ImageError too).
CODES: tuple[tuple[type[Exception], grpc.StatusCode, tuple[tuple[str, str], ...]], ...] = (
    # draining: fail over to another replica (the forwarder reads the trailer)
    (Draining, grpc.StatusCode.FAILED_PRECONDITION, ((DRAINING_KEY, "1"),)),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED, ()),
    (QueueTimeout, grpc.StatusCode.DEADLINE_EXCEEDED, ()),
    (MemoryExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, ()),
    (PixelLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED, ()),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT, ()),
    # a handle from another host's frames: the sender resends the pixels as bytes
    (NotShared, grpc.StatusCode.FAILED_PRECONDITION, ((UNSHARED_KEY, "1"),)),
    (BadHandle, grpc.StatusCode.INVALID_ARGUMENT, ()),
    # a plugin kernel that raised or broke its declared contract: a bug in the plugin, which
    # the message names with its package (native.dispatch)
    (PluginError, grpc.StatusCode.INTERNAL, ()),
    # what a kernel says of its parameters or its input (native raises ValueError)
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, ()),
)


def refusal(exc: Exception, what: str = "") -> StepAbort:
    """The StepAbort for one of the exceptions in :data:`CODES`; `what` prefixes the message
    (``"reply"``: which part of the request was wrong). Anything else is :func:`internal`."""
    message = f"{what}: {exc}" if what else str(exc)
    for kind, code, trailers in CODES:
        if isinstance(exc, kind):
            return StepAbort(code, message, trailers)
    return internal(exc)


def internal(exc: BaseException) -> StepAbort:
    """INTERNAL for what no check foresaw (a bug): the server answers and keeps serving."""
    return StepAbort(grpc.StatusCode.INTERNAL, f"unexpected error {type(exc).__name__}: {exc}")


def forward_refusal(exc: ForwardError) -> StepAbort:
    """A failed forward: the next step's own answer (its trailer names it) or the forwarder's
    (no step answered; this step's name goes on it)."""
    trailers = (((FAILED_STEP_KEY, str(exc.failed_step)),) if exc.failed_step is not None
                else ())
    return StepAbort(exc.code, exc.message, trailers)


def abort(context: grpc.ServicerContext, failure: StepAbort, where: str,
          step_id: int) -> NoReturn:
    """Answers the call with `failure`. This step's own failure is named after it (`where`,
    e.g. ``step 1 (blur)``) and gets the trailer naming it, so upstream steps pass it on as
    is; a failure a step further down named keeps its message and trailer."""
    trailers, message = failure.trailers, failure.message
    if not any(key == FAILED_STEP_KEY for key, _ in trailers):
        if not message.startswith(where):
            message = f"{where}: {message}"
        trailers = (*trailers, (FAILED_STEP_KEY, str(step_id)))
    context.set_trailing_metadata(trailers)
    context.abort(failure.code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover

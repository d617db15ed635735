"""Where one request's pixels are read and its final image written, in shared memory or not.

A co-located caller sends a handle to a frame segment instead of the pixels, and may give a
reply segment for the final image; everything else travels in the message
(:mod:`stepsvc.frames.wire`). Mapped segments stay open until `cleanup` closes them, after
the answer is built.
"""

from __future__ import annotations

from contextlib import ExitStack

import grpc
import numpy as np
from stepchain.v1 import step_pb2

from stepsvc.frames import codec, wire
from stepsvc.frames.shm import BadHandle, FrameStore, NotShared
from stepsvc.protocol import UNSHARED_KEY
from stepsvc.step.refusals import StepAbort, refusal


def input_pixels(view: wire.RequestView, frames: FrameStore | None, max_pixels: int,
                 cleanup: ExitStack, where: str) -> memoryview:
    """The request's pixel bytes: a view of the message, or of a mapped shared segment."""
    image = view.header.image
    if not image.HasField("shm"):
        return view.data
    if len(view.data) or image.encoding != codec.RAW:
        raise StepAbort(grpc.StatusCode.INVALID_ARGUMENT,
                        "image.shm carries RAW pixels only and replaces image.data; send one "
                        "of them")
    if frames is None:
        raise StepAbort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"{where} does not read shared memory; send image.data",
                        ((UNSHARED_KEY, "1"),))
    try:  # the pixel limit first, so an oversized frame is RESOURCE_EXHAUSTED either way
        codec.check_pixels(image.width, image.height, max_pixels)
        mapped = frames.open(image.shm)
    except (codec.PixelLimitError, NotShared, BadHandle) as exc:
        raise refusal(exc) from None
    cleanup.callback(mapped.close)
    return mapped.data


def reply_area(request: step_pb2.ProcessRequest, shape: tuple[int, int, int] | None,
               frames: FrameStore | None, cleanup: ExitStack) -> np.ndarray | None:
    """The caller's reply segment as an array of the final image's `shape`, when the caller
    gave one this step can use (RAW output of exactly its size, same domain)."""
    if (shape is None or not request.HasField("reply") or frames is None
            or request.output_encoding != codec.RAW
            or shape[0] * shape[1] * shape[2] != request.reply.size):
        return None
    try:
        mapped = frames.open(request.reply, writable=True)
    except NotShared:
        return None  # the image goes back as bytes
    except BadHandle as exc:
        raise refusal(exc, "reply") from None
    cleanup.callback(mapped.close)
    return mapped.pixels(shape)

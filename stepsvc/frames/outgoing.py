"""The request for the next step, as bytes or as a shared-memory handle, chosen per candidate.

The kernel writes its output once, into :attr:`OutgoingFrame.pixels`: a shared-memory segment
when the first candidate shares this step's domain, else the pixel area of a serialized request
(:func:`stepsvc.frames.wire.allocate_request`). :meth:`OutgoingFrame.payload` then gives each
candidate what it can read: a small request carrying the handle, or the full bytes (copied from
the segment only for a failover candidate in another domain).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import numpy as np
from stepchain.v1 import step_pb2

from stepsvc.frames import wire
from stepsvc.frames.shm import FrameStore, Segment

log = logging.getLogger("stepchain.shm")


def _create(frames: FrameStore | None, shape: tuple[int, int, int]) -> Segment | None:
    """A segment, or None when the frame directory cannot take one (full, gone): the frame
    then travels as bytes, the request does not fail."""
    if frames is None:
        return None
    try:
        return frames.create(shape)
    except OSError as exc:
        log.warning("shared memory in %s unavailable (%s); sending the frame as bytes",
                    frames.directory, exc.strerror or exc)
        return None


class OutgoingFrame:
    """One frame on its way to the next step; segments are freed by `cleanup`."""

    def __init__(self, header: step_pb2.ProcessRequest, shape: tuple[int, int, int], *,
                 frames: FrameStore | None, shared: bool, cleanup: ExitStack,
                 source: step_pb2.SharedFrame | None = None,
                 reply: step_pb2.SharedFrame | None = None) -> None:
        """`header` is the request without its image; `shared` says whether to put the frame
        in shared memory (the first candidate reads this step's domain); `source` is a
        segment the frame already is in (a pass-through step), forwarded as is; `reply` is the
        caller's reply segment, passed on to a candidate that reads shared memory (without
        one, this step makes its own: :attr:`own_reply`)."""
        self.header = header
        self.shape = shape
        self._frames = frames
        self._cleanup = cleanup
        self._bytes: wire.OutgoingRequest | None = None
        self._handle: step_pb2.SharedFrame | None = source
        self._reply = reply
        #: This step's own reply segment (the final image may come back in it).
        self.own_reply: Segment | None = None
        segment = _create(frames, shape) if source is None and shared else None
        if source is not None:
            self.pixels = np.empty((0, 0, 0), dtype=np.uint8)  # nothing to write
        elif segment is not None:
            cleanup.callback(segment.close)
            self._handle = segment.handle()
            self.pixels = segment.pixels
        else:
            self._bytes = wire.allocate_request(header, *shape)
            self.pixels = self._bytes.pixels
        if self._handle is not None and reply is None and frames is not None \
                and header.output_encoding == 0:  # RAW: the final image may fit in a reply
            self.own_reply = _create(frames, shape)
            if self.own_reply is not None:
                cleanup.callback(self.own_reply.close)
                self._reply = self.own_reply.handle()

    def payload(self, shared: bool, source_pixels: np.ndarray | None = None) -> bytes:
        """The serialized request for a candidate: with the handle when `shared` (and the
        frame is in shared memory), else with the pixels (copied once if they are in a
        segment or in `source_pixels`)."""
        if shared and self._handle is not None:
            msg = step_pb2.ProcessRequest()
            msg.CopyFrom(self.header)
            h, w, c = self.shape
            msg.image.width, msg.image.height, msg.image.channels = w, h, c
            msg.image.shm.CopyFrom(self._handle)
            if self._reply is not None:
                msg.reply.CopyFrom(self._reply)
            return msg.SerializeToString()
        if self._bytes is None:
            self._bytes = wire.allocate_request(self.header, *self.shape)
            src = self.pixels if self.pixels.size else source_pixels
            self._bytes.pixels[...] = src
        return self._bytes.payload

"""What a request produced, and its response as bytes once this step's timing is final.

The last step answers with its own head (request id, labels, measures) and the image; any
other step with the next step's response bytes, this step's timing and measures put before
them -- never parsed and re-serialized (:mod:`stepsvc.frames.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from stepchain.v1 import step_pb2

from stepsvc.frames import wire
from stepsvc.frames.shm import Segment
from stepsvc.step.refusals import StepAbort


@dataclass
class Answer:
    """The last step has `head` and the image (`image` for its dimensions, `data` the pixels
    or encoded file); any other step the downstream response's bytes and its `measures`."""

    head: step_pb2.ProcessResponse | None = None
    image: step_pb2.Image | None = None
    data: memoryview | bytes = b""
    downstream: bytes = b""
    measures: dict[str, float] | None = None
    #: This step's reply segment, passed down: a final image that came back in it is put
    #: inline here (the caller did not give a reply segment of its own).
    reply: Segment | None = None


def response_bytes(answer: Answer, timing: step_pb2.StepTiming, trace_id: str) -> bytes:
    """The serialized response: this step's timing goes first (timings are in execution
    order), the trace id last."""
    if answer.head is not None and answer.image is not None:
        answer.head.timings.append(timing)
        if trace_id:
            answer.head.trace_id = trace_id
        img = answer.image
        if img.HasField("shm"):  # the final image is in the caller's reply segment
            answer.head.image.CopyFrom(img)
            return answer.head.SerializeToString()
        return wire.response_bytes(answer.head, img.width, img.height, img.channels,
                                   img.encoding, answer.data)
    before = wire.response_fields(timing, answer.measures or {})
    after = wire.trace_id_field(trace_id)
    reply = answer.reply
    if reply is not None and wire.response_image(answer.downstream).HasField("shm"):
        image, payload = wire.inline_image(before, answer.downstream, after,
                                           reply.pixels.data.cast("B"))
        if (image.shm.name != reply.name or image.shm.token != reply.token
                or image.width * image.height * image.channels != reply.size):
            raise StepAbort(grpc.StatusCode.INTERNAL,
                            f"the next step answered with a shared-memory image "
                            f"{image.shm.name!r} that is not this step's reply segment")
        return payload
    return wire.join_response(before, answer.downstream, after)

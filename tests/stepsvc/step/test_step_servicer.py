"""The step servicer through real gRPC on loopback, with step servers inside the test process."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from step_fixtures import (
    BlockingObserver,
    InProcessPipeline,
    MutableDiscovery,
    bomb_png,
    in_process,
    noisy_image,
    pipeline,
    raw_request,
    smooth_image,
)
from stepchain.v1 import step_pb2

import native
from stepsvc.frames import codec
from stepsvc.limits import DEFAULT_MAX_PIXELS
from stepsvc.routing.forward import Forwarder
from stepsvc.step.admission import Admission
from stepsvc.step.hooks import StepObserver
from stepsvc.step.servicer import StepServicer

LINEAR = [{"id": 1, "type": "gaussian_blur", "params": {"sigma": 1.5}, "next_step": 2},
          {"id": 2, "type": "grayscale"}]
BRANCH = [{"id": 1, "type": "identity", "next_step": [2, 3], "preferred_next": 3},
          {"id": 2, "type": "grayscale"}, {"id": 3, "type": "edges"}]
CLASSIFY = [{"id": 1, "type": "classify", "next_step": [2, 3], "preferred_next": 3,
             "route": {"blurry": 2}},
            {"id": 2, "type": "deblur", "params": {"iterations": 2}},
            {"id": 3, "type": "sharpen"}]
SINGLE = [{"id": 1, "type": "grayscale"}]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def result(resp: step_pb2.ProcessResponse) -> np.ndarray:
    return codec.decode_image(resp.image)


def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


@pytest.fixture
def pipe() -> Iterator[InProcessPipeline]:
    with in_process() as p:
        yield p


def test_single_step_answers_with_its_kernel_output_and_timing(pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE)
    img = noisy_image()
    resp = pipe.stub(1).Process(raw_request(img), timeout=10)
    np.testing.assert_array_equal(result(resp), native.grayscale(img))
    assert len(resp.request_id) == 32  # generated uuid4 hex
    [t] = resp.timings
    assert (t.pipeline_id, t.step_id, t.step_type, t.next_step) == ("p1", 1, "grayscale", 0)
    assert t.host and t.threads >= 1 and t.kernel_ms > 0 and t.total_ms >= t.kernel_ms


def test_chain_applies_kernels_in_order_and_returns_every_timing(pipe: InProcessPipeline) -> None:
    pipe.add(2, LINEAR)
    pipe.add(1, LINEAR)
    img = noisy_image()
    resp = pipe.stub(1).Process(raw_request(img, request_id="req-42"), timeout=10)
    expected = native.grayscale(native.gaussian_blur(img, sigma=1.5))
    np.testing.assert_array_equal(result(resp), expected)
    assert resp.request_id == "req-42"
    assert [t.step_id for t in resp.timings] == [1, 2]
    first, second = resp.timings
    assert (first.next_step, first.forward_attempts) == (2, 1)
    assert first.forward_ms >= second.total_ms > 0


def test_entry_decodes_png_and_last_step_encodes_the_requested_format(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, LINEAR)
    pipe.add(1, LINEAR)
    img = noisy_image()
    req = step_pb2.ProcessRequest(image=step_pb2.Image(data=png(img), encoding=codec.PNG),
                                  output_encoding=codec.PNG)
    resp = pipe.stub(1).Process(req, timeout=10)
    assert resp.image.encoding == codec.PNG and resp.image.data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(result(resp),
                                  native.grayscale(native.gaussian_blur(img, sigma=1.5)))
    assert resp.timings[0].decode_ms > 0 and resp.timings[0].encode_ms == 0
    assert resp.timings[1].encode_ms > 0 and resp.timings[1].decode_ms == 0
    req.output_encoding = codec.JPEG
    assert pipe.stub(1).Process(req, timeout=10).image.data.startswith(b"\xff\xd8")


def test_forwards_to_preferred_next_when_active(pipe: InProcessPipeline) -> None:
    for i in (2, 3, 1):
        pipe.add(i, BRANCH)
    img = noisy_image()
    resp = pipe.stub(1).Process(raw_request(img), timeout=10)
    assert [t.step_id for t in resp.timings] == [1, 3]
    np.testing.assert_array_equal(result(resp), native.edges(img))


def test_uses_the_other_candidate_when_preferred_is_missing_from_discovery(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, BRANCH)
    pipe.add(3, BRANCH, active=False)
    pipe.add(1, BRANCH)
    resp = pipe.stub(1).Process(raw_request(noisy_image()), timeout=10)
    assert [t.step_id for t in resp.timings] == [1, 2]
    assert resp.timings[0].forward_attempts == 1


def test_fails_over_when_the_preferred_step_is_down(pipe: InProcessPipeline) -> None:
    pipe.add(2, BRANCH)
    pipe.add(3, BRANCH).stop(0)  # still listed by discovery, but nobody answers
    pipe.add(1, BRANCH)
    resp = pipe.stub(1).Process(raw_request(noisy_image()), timeout=10)
    assert [t.step_id for t in resp.timings] == [1, 2]
    assert resp.timings[0].forward_attempts == 2


def test_fails_over_when_the_preferred_step_is_draining(pipe: InProcessPipeline) -> None:
    pipe.add(2, BRANCH)
    pipe.add(3, BRANCH).servicer.admission.close()  # the window between SIGTERM and stop
    pipe.add(1, BRANCH)
    resp = pipe.stub(1).Process(raw_request(noisy_image()), timeout=10)
    assert [t.step_id for t in resp.timings] == [1, 2]
    assert resp.timings[0].forward_attempts == 2


def test_route_by_label_sends_blurry_images_to_deblur_and_sharp_ones_to_preferred(
        pipe: InProcessPipeline) -> None:
    for i in (2, 3, 1):
        pipe.add(i, CLASSIFY)
    blurry = pipe.stub(1).Process(raw_request(smooth_image()), timeout=20)
    assert blurry.labels["sharpness"] == "blurry"
    assert [(t.step_id, t.step_type) for t in blurry.timings] == [(1, "classify"), (2, "deblur")]
    assert "laplacian_var" in blurry.measures
    sharp = pipe.stub(1).Process(raw_request(noisy_image()), timeout=20)
    assert sharp.labels["sharpness"] == "sharp"
    assert [(t.step_id, t.step_type) for t in sharp.timings] == [(1, "classify"), (3, "sharpen")]


class _CountingDiscovery:
    """Discovery that counts how often a step asks it what is active."""

    def __init__(self, inner: MutableDiscovery) -> None:
        self.inner = inner
        self.calls = 0

    def active(self) -> dict[int, str]:
        self.calls += 1
        return self.inner.active()


@pytest.mark.parametrize(("steps", "route"), [(BRANCH, [1, 3]), (CLASSIFY, [1, 3])])
def test_a_request_is_routed_from_one_look_at_discovery(
        pipe: InProcessPipeline, steps: list[dict[str, Any]], route: list[int]) -> None:
    for i in (2, 3):
        pipe.add(i, steps)
    counting = _CountingDiscovery(pipe.discovery)
    pipe.add(1, steps).servicer.discovery = counting
    resp = pipe.stub(1).Process(raw_request(noisy_image()), timeout=20)
    assert [t.step_id for t in resp.timings] == route
    assert counting.calls == 1  # before and after the kernel: the same snapshot


def test_no_active_next_step_is_unavailable_listing_the_candidates(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, BRANCH)
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "no active next step" in message and "[2, 3]" in message


def test_every_candidate_down_is_unavailable_naming_each_one(pipe: InProcessPipeline) -> None:
    pipe.add(2, BRANCH).stop(0)
    pipe.add(3, BRANCH).stop(0)
    pipe.add(1, BRANCH, next_step_wait=0)
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "step 3 (edges) at 127.0.0.1:" in message and "step 2 (grayscale) at" in message


def test_every_candidate_down_is_waited_for_and_named_just_before_the_deadline(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, BRANCH).stop(0)
    pipe.add(3, BRANCH).stop(0)
    pipe.add(1, BRANCH)
    started = time.monotonic()
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=2))
    assert 1.5 < time.monotonic() - started < 2.0  # step 1 answered, not the client's deadline
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert message.startswith("step 1 (identity): no next step answered within the request's "
                              "deadline (waited")
    assert "step 3 (edges) at 127.0.0.1:" in message and "step 2 (grayscale) at" in message


def test_downstream_error_reaches_the_caller_naming_the_failed_step(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, LINEAR, max_pixels=100)
    pipe.add(1, LINEAR)
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Passed back unchanged by step 1: the refusing step's own words, naming it and its host.
    assert message.startswith("step 2 (grayscale): ")
    assert "at most 100 pixels" in message and "step 1" not in message


def test_routing_loop_message_stays_bounded_for_a_huge_route(pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE)
    route = [0, 1, *range(2, 1_000_000)]
    code, message = status_of(
        lambda: pipe.stub(1).Process(raw_request(noisy_image(), route=route), timeout=30))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # not RESOURCE_EXHAUSTED (header size)
    assert "routing loop" in message and "1000000 steps" in message
    assert "[0, 1, 2, 3, ... 999996, 999997, 999998, 999999]" in message
    assert len(message) < 400


def test_bytes_that_are_not_a_request_are_invalid_argument_naming_the_method(
        pipe: InProcessPipeline) -> None:
    server = pipe.add(1, SINGLE)
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/stepchain.v1.StepService/Process")
        code, message = status_of(lambda: call(b"\xff\xff\xff\xffnot protobuf", timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stepchain.v1.StepService/Process" in message and "step 1" in message
    # The server keeps serving.
    assert pipe.stub(1).Process(raw_request(noisy_image()), timeout=10).timings


def test_a_step_already_in_the_route_refuses_the_loop(pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE)
    code, message = status_of(
        lambda: pipe.stub(1).Process(raw_request(noisy_image(), route=[0, 1]), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "routing loop" in message


def test_an_oversized_request_id_is_invalid_argument_naming_it_without_echoing_it(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, LINEAR)
    pipe.add(2, LINEAR)
    request = raw_request(noisy_image())
    request.request_id = "r" * (10 * 1024 * 1024)  # 10 MB
    code, message = status_of(lambda: pipe.stub(1).Process(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("step 1 (gaussian_blur): request_id is 10485760 bytes; at most "
                              "128 (UTF-8)")
    assert "rrrr" not in message and len(message) < 300
    request.request_id = "a\nb"  # a log line of its own
    code, message = status_of(lambda: pipe.stub(1).Process(request, timeout=30))
    assert (code, "control characters" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_labels_beyond_their_bounds_are_invalid_argument_naming_the_field(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE)
    many = raw_request(noisy_image())
    many.labels.update({f"k{i}": "v" for i in range(100_000)})
    code, message = status_of(lambda: pipe.stub(1).Process(many, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # refused, not carried on and echoed
    assert "labels has 100000 entries; at most 32" in message and len(message) < 300
    for labels, words in (({"k": "v" * 300}, "labels['k'] is 300 bytes"),
                          ({"x" * 65: "v"}, "a key is 65 bytes"),
                          ({"k": "a\x1bb"}, "control characters")):
        request = raw_request(noisy_image())
        request.labels.update(labels)
        code, message = status_of(lambda r=request: pipe.stub(1).Process(r, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message, message
    ok = raw_request(noisy_image())
    ok.labels.update({f"k{i}": "v" * 256 for i in range(32)})
    assert dict(pipe.stub(1).Process(ok, timeout=30).labels) == dict(ok.labels)


def test_a_client_at_the_label_bound_still_passes_steps_that_add_classify_labels(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, CLASSIFY)
    pipe.add(3, CLASSIFY)
    pipe.add(1, CLASSIFY)
    request = raw_request(noisy_image())
    request.labels.update({f"k{i}": "v" for i in range(32)})
    response = pipe.stub(1).Process(request, timeout=30)
    assert len(response.labels) > 32 and "sharpness" in response.labels


def test_threads_come_from_overrides_then_step_params(pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "identity", "params": {"threads": 2}}])
    img = noisy_image()
    assert pipe.stub(1).Process(raw_request(img), timeout=10).timings[0].threads == 2
    req = raw_request(img, overrides=step_pb2.Overrides(threads=1, passes=3, schedule="dynamic"))
    resp = pipe.stub(1).Process(req, timeout=10)
    assert resp.timings[0].threads == 1
    np.testing.assert_array_equal(result(resp), img)


def test_step_params_passes_and_schedule_are_defaults_that_overrides_replace(
        pipe: InProcessPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    # Passes and schedules give the same pixels by design, so the kernel calls are recorded:
    # how many passes ran, with which schedule and threads.
    calls: list[tuple[str, int]] = []
    real_run = native.run

    def recording_run(name: str, img: Any, **params: Any) -> Any:
        calls.append((params["schedule"], params["threads"]))
        return real_run(name, img, **params)

    monkeypatch.setattr(native, "run", recording_run)
    pipe.add(1, [{"id": 1, "type": "gaussian_blur",
                  "params": {"sigma": 1.0, "passes": 2, "schedule": "guided", "threads": 2}}])
    img = noisy_image()
    expected = native.gaussian_blur(img, sigma=1.0)
    resp = pipe.stub(1).Process(raw_request(img), timeout=10)
    np.testing.assert_array_equal(result(resp), expected)
    assert calls == [("guided", 2)] * 2  # the step's own settings
    calls.clear()
    req = raw_request(img, overrides=step_pb2.Overrides(passes=3, schedule="dynamic", threads=1))
    resp = pipe.stub(1).Process(req, timeout=10)
    np.testing.assert_array_equal(result(resp), expected)
    assert calls == [("dynamic", 1)] * 3  # every one replaced by the request's overrides
    assert resp.timings[0].threads == 1


def test_an_override_schedule_may_carry_a_chunk_size(pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "gaussian_blur", "params": {"sigma": 1.0}}])
    img = noisy_image()
    req = raw_request(img, overrides=step_pb2.Overrides(threads=2, schedule="dynamic,4"))
    np.testing.assert_array_equal(result(pipe.stub(1).Process(req, timeout=10)),
                                  native.gaussian_blur(img, sigma=1.0))


# -- bad input: right status, clear message, and the server keeps answering -----------------

def _unknown_override_request() -> step_pb2.ProcessRequest:
    req = raw_request(noisy_image())
    # field 9 (varint 1): what a newer client's Overrides field looks like to this server
    req.overrides.MergeFromString(step_pb2.Overrides(threads=1).SerializeToString() + b"\x48\x01")
    return req


def _image(**fields: Any) -> step_pb2.ProcessRequest:
    return step_pb2.ProcessRequest(image=step_pb2.Image(**fields))


_GOOD_PNG = png(noisy_image(32, 32, 3))
_GOOD_JPEG = jpeg(noisy_image(32, 32, 3))
BAD_REQUESTS = {
    "corrupt png": (_image(data=b"\x89PNG\r\n\x1a\nthis is not a png", encoding=codec.PNG),
                    grpc.StatusCode.INVALID_ARGUMENT, "not a valid PNG"),
    "truncated png": (_image(data=_GOOD_PNG[:len(_GOOD_PNG) // 2], encoding=codec.PNG),
                      grpc.StatusCode.INVALID_ARGUMENT, "PNG"),
    "corrupt jpeg": (_image(data=b"\xff\xd8\xffgarbage", encoding=codec.JPEG),
                     grpc.StatusCode.INVALID_ARGUMENT, "JPEG"),
    "truncated jpeg": (_image(data=_GOOD_JPEG[:len(_GOOD_JPEG) // 3], encoding=codec.JPEG),
                       grpc.StatusCode.INVALID_ARGUMENT, "JPEG"),
    "decompression bomb": (_image(data=bomb_png(), encoding=codec.PNG),
                           grpc.StatusCode.RESOURCE_EXHAUSTED, "100000x100000"),
    "wrong byte count": (_image(width=8, height=8, channels=3, data=b"\x00" * 100),
                         grpc.StatusCode.INVALID_ARGUMENT, "needs width*height*channels = 192"),
    "two channels": (_image(width=8, height=8, channels=2, data=b"\x00" * 128),
                     grpc.StatusCode.INVALID_ARGUMENT, "1 (gray), 3 (RGB) or 4 (RGBA)"),
    "zero size": (_image(width=0, height=0, channels=3),
                  grpc.StatusCode.INVALID_ARGUMENT, "width >= 1 and height >= 1"),
    "negative threads": (raw_request(noisy_image(), overrides=step_pb2.Overrides(threads=-1)),
                         grpc.StatusCode.INVALID_ARGUMENT, "overrides.threads must be 1..256"),
    "too many passes": (raw_request(noisy_image(), overrides=step_pb2.Overrides(passes=101)),
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "overrides.passes must be 1..100 (this step's --max-passes 100"),
    "bad schedule": (raw_request(noisy_image(), overrides=step_pb2.Overrides(schedule="fast")),
                     grpc.StatusCode.INVALID_ARGUMENT, "static, dynamic, guided"),
    "bad schedule chunk": (raw_request(noisy_image(),
                                       overrides=step_pb2.Overrides(schedule="dynamic,0")),
                           grpc.StatusCode.INVALID_ARGUMENT,
                           "overrides.schedule chunk must be an integer 1..65536"),
    "unknown overrides": (_unknown_override_request(), grpc.StatusCode.INVALID_ARGUMENT,
                          "field number(s) [9]"),
    "unknown output encoding": (raw_request(noisy_image(), output_encoding=7),
                                grpc.StatusCode.INVALID_ARGUMENT, "output_encoding 7"),
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[InProcessPipeline]:
    with in_process() as p:
        p.add(1, SINGLE, max_message_mb=1, max_pixels=1_000_000)
        yield p


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_the_right_status_and_the_next_good_request_succeeds(
        guarded: InProcessPipeline, case: str) -> None:
    request, expected_code, words = BAD_REQUESTS[case]
    stub = guarded.stub(1)
    code, message = status_of(lambda: stub.Process(request, timeout=10))
    assert code == expected_code, message
    assert words in message
    img = noisy_image()
    np.testing.assert_array_equal(result(stub.Process(raw_request(img), timeout=10)),
                                  native.grayscale(img))


def test_oversize_message_is_refused_and_the_server_keeps_answering(
        guarded: InProcessPipeline) -> None:
    stub = guarded.stub(1, max_message_mb=8)
    big = noisy_image(700, 700, 3)  # 1.47 MB > --max-message-mb 1
    code, message = status_of(lambda: stub.Process(raw_request(big), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in message
    assert stub.Process(raw_request(noisy_image()), timeout=10).timings


class _FailOnce(StepObserver):
    def __init__(self) -> None:
        self.failed = False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name == "encode" and not self.failed:
            self.failed = True
            raise RuntimeError("boom in the encoder")
        yield


def test_unexpected_error_is_internal_and_the_server_keeps_serving(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE, observer=_FailOnce())
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=10))
    assert code == grpc.StatusCode.INTERNAL
    assert "step 1 (grayscale): unexpected error RuntimeError: boom in the encoder" in message
    assert pipe.stub(1).Process(raw_request(noisy_image()), timeout=10).timings


# -- load: queue, deadlines, drain ------------------------------------------------------------

def test_queue_full_is_resource_exhausted_at_once_and_queued_work_completes(
        pipe: InProcessPipeline) -> None:
    blocker = BlockingObserver()
    server = pipe.add(1, SINGLE, observer=blocker, max_inflight=1, max_queue=1)
    stub = pipe.stub(1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(stub.Process, raw_request(noisy_image()), timeout=20)
        assert blocker.entered.acquire(timeout=10)
        second = pool.submit(stub.Process, raw_request(noisy_image()), timeout=20)
        deadline = time.monotonic() + 10
        while server.servicer.admission.queued != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        code, message = status_of(lambda: stub.Process(raw_request(noisy_image()), timeout=20))
        refused_after = time.monotonic() - start
        blocker.release.set()
        assert first.result(20).timings and second.result(20).timings
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-inflight 1" in message and "--max-queue 1" in message
    assert refused_after < 5  # refused immediately, not after the blocked request finished
    assert second.result().timings[0].queue_wait_ms > 0


def test_deadline_propagates_down_the_chain(pipe: InProcessPipeline) -> None:
    blocker = BlockingObserver()
    pipe.add(2, LINEAR, observer=blocker)
    pipe.add(1, LINEAR)
    start = time.monotonic()
    code, _ = status_of(lambda: pipe.stub(1).Process(raw_request(noisy_image()), timeout=0.5))
    blocker.release.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 5


def test_drain_turns_health_not_serving_refuses_new_work_and_finishes_inflight(
        pipe: InProcessPipeline) -> None:
    blocker = BlockingObserver()
    server = pipe.add(1, SINGLE, observer=blocker)
    stub = pipe.stub(1)
    health = health_pb2_grpc.HealthStub(pipe.channels[-1])
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    with ThreadPoolExecutor(1) as pool:
        inflight = pool.submit(stub.Process, raw_request(noisy_image()), timeout=20)
        assert blocker.entered.acquire(timeout=10)
        drained: list[bool] = []
        drainer = threading.Thread(target=lambda: drained.append(server.drain(20)))
        drainer.start()
        deadline = time.monotonic() + 10
        while not server.servicer.admission.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        code, message = status_of(lambda: stub.Process(raw_request(noisy_image()), timeout=10))
        blocker.release.set()
        assert inflight.result(20).timings
        drainer.join(20)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "draining" in message
    assert drained == [True]


# -- pixel limits: input and output, at default settings ---------------------------------------

def test_default_pixel_limit_refuses_a_48_megapixel_image_encoded_or_raw(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, SINGLE)  # default settings, as `stepchain step serve` starts a step
    stub = pipe.stub(1)
    for image in (step_pb2.Image(data=bomb_png(8000, 6000), encoding=codec.PNG),
                  step_pb2.Image(width=8000, height=6000, channels=4, data=b"\x00" * 64)):
        code, message = status_of(
            lambda image=image: stub.Process(step_pb2.ProcessRequest(image=image), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        assert "8000x6000 = 48000000 pixels" in message
        assert f"at most {DEFAULT_MAX_PIXELS} pixels (--max-pixels)" in message
    assert stub.Process(raw_request(noisy_image()), timeout=10).timings


def test_resize_output_over_the_pixel_limit_is_refused_before_the_kernel(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "resize", "params": {"scale": 16}}], max_pixels=1_000_000)
    code, message = status_of(
        lambda: pipe.stub(1).Process(raw_request(noisy_image(100, 100, 3)), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert message.startswith("step 1 (resize): the output for a 100x100 input is 1600x1600")
    assert "at most 1000000 pixels (--max-pixels)" in message


def test_resize_output_beyond_any_kernel_limit_is_resource_exhausted(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "resize", "params": {"scale": 16}}])
    img = noisy_image(2500, 4000, 1)  # 10 MP in, 2.56 GP out
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(img), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert message.startswith("step 1 (resize): resize output is 64000x40000")
    assert f"at most {DEFAULT_MAX_PIXELS} pixels (--max-pixels)" in message


# -- passes: capped per step, and stopped when the caller is gone ------------------------------

class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _FakeContext:
    """A ServicerContext whose caller leaves after the first kernel pass."""

    def __init__(self, remaining: list[float | None], active: bool) -> None:
        self.remaining = remaining
        self.active = active

    def time_remaining(self) -> float | None:
        return self.remaining.pop(0) if len(self.remaining) > 1 else self.remaining[0]

    def is_active(self) -> bool:
        return self.active

    def set_trailing_metadata(self, _: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise _Aborted(code, message)


def _blur_servicer() -> StepServicer:
    cfg = pipeline(1, [{"id": 1, "type": "gaussian_blur"}])
    return StepServicer(cfg, MutableDiscovery(), Admission(1, 0), Forwarder(1 << 20))


@pytest.mark.parametrize(("remaining", "active", "code", "words"), [
    ([None], False, grpc.StatusCode.CANCELLED, "was cancelled"),
    ([10.0, -0.5], True, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed"),
])
def test_kernel_passes_stop_when_the_caller_is_gone_naming_step_and_pass(
        remaining: list[float | None], active: bool, code: grpc.StatusCode, words: str) -> None:
    servicer = _blur_servicer()
    request = raw_request(noisy_image(), overrides=step_pb2.Overrides(passes=5))
    with pytest.raises(_Aborted) as info:
        servicer.Process(request, _FakeContext(remaining, active))  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.message.startswith("step 1 (gaussian_blur): ")
    assert words in info.value.message and "after kernel pass 1 of 5" in info.value.message
    assert servicer.admission.inflight == 0


class _Outcomes(StepObserver):
    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []
        self.done = threading.Event()

    def finished(self, *, code: grpc.StatusCode, **_: Any) -> None:
        self.codes.append(code)
        self.done.set()


def test_an_expired_deadline_frees_the_slot_without_running_the_remaining_passes(
        pipe: InProcessPipeline) -> None:
    steps = [{"id": 1, "type": "deblur", "params": {"iterations": 100}}]
    img = noisy_image(256, 256, 3)
    native.deblur(img, iterations=1, threads=1)  # warm up before timing a pass
    start = time.perf_counter()
    native.deblur(img, iterations=100, threads=1, passes=2)
    per_pass = (time.perf_counter() - start) / 2
    passes = max(2, min(1000, round(12.0 / per_pass)))  # ~12 s of kernel if nothing stops it
    outcomes = _Outcomes()
    server = pipe.add(1, steps, observer=outcomes, max_passes=1000)
    request = raw_request(img, overrides=step_pb2.Overrides(passes=passes, threads=1))
    code, _ = status_of(lambda: pipe.stub(1).Process(request, timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcomes.done.wait(6), f"{passes} passes kept running after the deadline"
    assert outcomes.codes[0] in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    assert server.servicer.admission.inflight == 0


# -- oversize output: the step that made it is named ------------------------------------------

RESIZE_THEN_IDENTITY = [{"id": 1, "type": "resize", "params": {"scale": 4}, "next_step": 2},
                        {"id": 2, "type": "identity"}]


def test_output_too_large_to_forward_is_refused_naming_the_producing_step(
        pipe: InProcessPipeline) -> None:
    pipe.add(2, RESIZE_THEN_IDENTITY, max_message_mb=1)
    pipe.add(1, RESIZE_THEN_IDENTITY, max_message_mb=1)
    img = noisy_image(300, 300, 3)  # 270 KB in, 1200x1200x3 = 4.3 MB out
    code, message = status_of(lambda: pipe.stub(1).Process(raw_request(img), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert message.startswith("step 1 (resize): its output image 1200x1200x3 (RAW) makes a ")
    assert "request for the next step" in message and "(--max-message-mb 1)" in message
    assert "step 2" not in message


def test_last_step_output_too_large_to_answer_is_refused_naming_the_step(
        pipe: InProcessPipeline) -> None:
    pipe.add(1, [{"id": 1, "type": "resize", "params": {"scale": 4}}], max_message_mb=1)
    code, message = status_of(
        lambda: pipe.stub(1).Process(raw_request(noisy_image(300, 300, 3)), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert message.startswith("step 1 (resize): its output image 1200x1200x3 (RAW) makes a ")
    assert "-byte response; the largest gRPC message is 1048576 bytes" in message


@pytest.mark.parametrize(("shape", "encoding"), [((1, 1, 1), codec.RAW), ((1080, 1920, 3), codec.RAW),
                                                 ((65_535, 2, 4), codec.RAW),
                                                 ((64, 48, 3), codec.PNG)])
def test_message_size_estimate_without_serializing_is_never_below_the_real_size(
        shape: tuple[int, int, int], encoding: int) -> None:
    from stepsvc.step.checks import IMAGE_FIELD_OVERHEAD

    msg = step_pb2.ProcessRequest(request_id="r" * 32, route=[1, 2, 3],
                                  labels={"sharpness": "blurry", "exposure": "normal"},
                                  output_encoding=codec.PNG, jpeg_quality=90)
    msg.overrides.threads = 2
    base = msg.ByteSize()
    data = codec.write_image(msg.image, np.zeros(shape, np.uint8), encoding)
    assert base + data <= msg.ByteSize() <= base + data + IMAGE_FIELD_OVERHEAD

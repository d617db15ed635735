"""The step's HTTP face: POST /process as the Flask-era clients call it, over the gRPC path."""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from step_fixtures import in_process, noisy_image
from stepchain.v1 import step_pb2

from stepsvc.frames import codec
from stepsvc.http.server import start_http_face
from stepsvc.http.translate import (
    HttpError,
    extract_image,
    http_status,
    parse_options,
    resolve_http_port,
    step_time_headers,
)
from stepsvc.step.hooks import StepObserver

TWO_STEPS = [{"id": 0, "type": "blur", "params": {"sigma": 1.0}, "next_step": 1},
             {"id": 1, "type": "grayscale"}]
IDENTITY = [{"id": 0, "type": "identity"}]
#: Seconds as a plain decimal, to the microsecond at most (never float noise or an exponent).
SECONDS = re.compile(r"^\d+\.\d{1,6}$")


def encoded(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


class Recorder(StepObserver):
    """Counts the requests the servicer finished, by status code."""

    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []

    def finished(self, *, code: grpc.StatusCode, **_: Any) -> None:
        self.codes.append(code)


@contextmanager
def http_pipeline(steps: list[dict[str, Any]], *, inactive: tuple[int, ...] = (),
                  observer: StepObserver | None = None, **settings: Any) -> Iterator[str]:
    """In-process steps (the first with `observer` and `settings`) and the first one's HTTP
    face; yields its base URL."""
    with in_process() as pipe:
        entry = pipe.add(steps[0]["id"], steps, observer=observer, **settings)
        for step in steps[1:]:
            pipe.add(step["id"], steps, active=step["id"] not in inactive)
        http = start_http_face(entry, 0, host="127.0.0.1")
        try:
            yield f"http://127.0.0.1:{http.port}"
        finally:
            http.stop()


@pytest.fixture()
def face() -> Iterator[tuple[str, Recorder]]:
    """A two-step in-process pipeline with the HTTP face on the entry step."""
    recorder = Recorder()
    with http_pipeline(TWO_STEPS, observer=recorder, max_passes=5) as url:
        yield url, recorder


def test_raw_jpeg_body_comes_back_as_jpeg_with_one_time_header_per_step(
        face: tuple[str, Recorder]) -> None:
    url, recorder = face
    reply = httpx.post(f"{url}/process", content=encoded(noisy_image(40, 56), "JPEG"),
                       headers={"Content-Type": "image/jpeg", "X-Request-Id": "req-1"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(reply.content)).size == (56, 40)
    for step_id in (0, 1):
        assert SECONDS.match(reply.headers[f"X-Step-{step_id}-Time"])
        assert float(reply.headers[f"X-Step-{step_id}-Time"]) < 30
    assert "X-Step-2-Time" not in reply.headers
    assert reply.headers["X-Request-Id"] == "req-1"
    assert "X-Trace-Id" in reply.headers
    assert recorder.codes == [grpc.StatusCode.OK]  # the same servicer path as a gRPC call


def test_multipart_field_image_like_the_flask_clients_send(face: tuple[str, Recorder]) -> None:
    url, _ = face
    png = encoded(noisy_image(24, 32), "PNG")
    reply = httpx.post(f"{url}/process", files={"image": ("frame.png", png)})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert out.shape == (24, 32)  # grayscale ran last
    assert reply.headers["X-Request-Id"]


def test_output_parameter_chooses_the_encoding_and_raw_carries_its_shape(
        face: tuple[str, Recorder]) -> None:
    url, _ = face
    jpeg = encoded(noisy_image(20, 30), "JPEG")
    png = httpx.post(f"{url}/process?output=png", content=jpeg,
                     headers={"Content-Type": "image/jpeg"})
    assert png.headers["content-type"] == "image/png"
    raw = httpx.post(f"{url}/process?output=raw&threads=1&passes=2&schedule=dynamic",
                     content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "application/octet-stream"
    assert (raw.headers["X-Image-Width"], raw.headers["X-Image-Height"],
            raw.headers["X-Image-Channels"]) == ("30", "20", "1")
    assert len(raw.content) == 20 * 30


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 400,
     "not a PNG or JPEG"),
    ({"content": b"\x89PNG\r\n\x1a\ntruncated", "headers": {"Content-Type": "image/png"}}, 400,
     "not a valid PNG"),
    ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415,
     "image/png or image/jpeg"),
    ({"files": {"picture": ("a.png", b"x")}}, 400, "no field 'image'"),
    ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "has no image"),
])
def test_bad_input_is_a_json_error_naming_the_problem_and_the_step_keeps_serving(
        face: tuple[str, Recorder], kwargs: dict[str, Any], status: int, words: str) -> None:
    url, _ = face
    reply = httpx.post(f"{url}/process", **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == "INVALID_ARGUMENT" and body["step"] == 0
    assert words in body["error"]
    ok = httpx.post(f"{url}/process", content=encoded(noisy_image(8, 8), "PNG"),
                    headers={"Content-Type": "image/png"})
    assert ok.status_code == 200


@pytest.mark.parametrize(("query", "words"), [
    ("passes=99", "overrides.passes must be 1..5"),
    ("threads=abc", "threads must be a non-negative integer"),
    ("schedule=fastest", "overrides.schedule"),
    ("output=gif", "output must be png, jpeg or raw"),
    ("colour=red", "colour unknown"),
])
def test_bad_query_parameters_are_400_naming_the_parameter(face: tuple[str, Recorder],
                                                          query: str, words: str) -> None:
    url, _ = face
    reply = httpx.post(f"{url}/process?{query}", content=encoded(noisy_image(8, 8), "PNG"),
                       headers={"Content-Type": "image/png"})
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]


def test_downstream_failure_names_the_step_with_the_http_status_of_its_code() -> None:
    with http_pipeline(TWO_STEPS, inactive=(1,)) as url:  # step 1 is not in discovery
        reply = httpx.post(f"{url}/process", content=encoded(noisy_image(8, 8), "PNG"),
                           headers={"Content-Type": "image/png"})
    assert reply.status_code == 503
    body = reply.json()
    assert (body["code"], body["step"]) == ("UNAVAILABLE", 0)
    assert "no active next step" in body["error"]
    assert reply.headers["Retry-After"] == "1"


def test_body_over_the_message_limit_is_413_before_it_is_read() -> None:
    with http_pipeline(IDENTITY, max_message_mb=1) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Declares 100 MB and sends none of it: the answer must not wait for the body.
            sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000000\r\n\r\n")
            head = b""
            while chunk := sock.recv(65536):  # the face closes after its answer
                head += chunk
    assert head.startswith(b"HTTP/1.1 413")
    assert b'"code": "RESOURCE_EXHAUSTED"' in head and b"at most 1048576" in head


def test_chunked_body_over_the_message_limit_is_413() -> None:
    with http_pipeline(IDENTITY, max_message_mb=1) as url:
        reply = httpx.post(f"{url}/process", content=iter([b"\x89PNG" + b"x" * 65536] * 40),
                           headers={"Content-Type": "image/png"})
    assert reply.status_code == 413
    assert reply.json()["code"] == "RESOURCE_EXHAUSTED"


def test_image_over_the_pixel_limit_is_413_naming_the_flag() -> None:
    with http_pipeline(IDENTITY, max_pixels=100) as url:
        reply = httpx.post(f"{url}/process", content=encoded(noisy_image(20, 20), "PNG"),
                           headers={"Content-Type": "image/png"})
    assert reply.status_code == 413
    assert "--max-pixels" in reply.json()["error"]


def test_garbage_on_the_socket_never_stops_the_face(face: tuple[str, Recorder]) -> None:
    url, _ = face
    port = int(url.rsplit(":", 1)[1])
    for junk in (b"\x00\x01garbage\r\n\r\n", b"POST /process HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                 b"POST /process HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
                 b"POST /process HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(junk)
            assert sock.recv(4096).startswith(b"HTTP/1.")
    assert httpx.get(f"{url}/process").status_code == 405
    health = httpx.get(f"{url}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "SERVING", "step": 0})
    assert httpx.post(f"{url}/elsewhere", content=b"x").status_code == 404
    ok = httpx.post(f"{url}/process", content=encoded(noisy_image(8, 8), "PNG"),
                    headers={"Content-Type": "image/png"})
    assert ok.status_code == 200


def test_chunked_body_is_read_up_to_the_limit(face: tuple[str, Recorder]) -> None:
    url, _ = face
    png = encoded(noisy_image(16, 16), "PNG")

    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        for i in range(0, len(png), 100):
            yield png[i:i + 100]

    reply = httpx.post(f"{url}/process", content=chunks(), headers={"Content-Type": "image/png"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"


def test_http_port_comes_from_the_flag_then_service_port_then_kubernetes() -> None:
    assert resolve_http_port(9000, {"SERVICE_PORT": "5000"}) == 9000
    assert resolve_http_port(None, {"SERVICE_PORT": "5000"}) == 5000
    assert resolve_http_port(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == 8080
    assert resolve_http_port(None, {}) == 0
    with pytest.raises(ValueError, match="SERVICE_PORT"):
        resolve_http_port(None, {"SERVICE_PORT": "http"})


def test_grpc_codes_map_to_the_http_statuses_rest_clients_retry_on() -> None:
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT, "") == 400
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full") == 429
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "... (--max-pixels)") == 413
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "needs about 900 MiB; this step's whole budget is 512 MiB") == 413
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "... hold 500 MiB of this step's 512 MiB budget; retry later") == 429
    assert http_status(grpc.StatusCode.UNAVAILABLE, "") == 503
    assert http_status(grpc.StatusCode.FAILED_PRECONDITION, "draining") == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED, "") == 504


def test_multipart_and_query_parsing_are_pure_functions() -> None:
    png = encoded(noisy_image(4, 4), "PNG")
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + png + b"\r\n--XyZ--\r\n")
    assert extract_image("multipart/form-data; boundary=XyZ", body) == (png, codec.PNG)
    assert parse_options("threads=2&output=jpeg").threads == 2
    with pytest.raises(HttpError):
        extract_image("multipart/form-data", body)  # no boundary


@pytest.mark.slow
def test_http_request_is_one_trace_through_every_step_with_its_traceparent(
        tmp_path: Any) -> None:
    from step_fixtures import free_port
    from telemetry_fixtures import OtlpReceiver, TracedChain, otlp_env, sample, scrape

    receiver = OtlpReceiver()
    http_port = free_port()
    chain = TracedChain(tmp_path, TWO_STEPS, otlp_env(receiver),
                        extra_args={0: ["--http-port", str(http_port)]})
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        reply = httpx.post(f"http://127.0.0.1:{http_port}/process",
                           content=encoded(noisy_image(16, 16), "PNG"),
                           headers={"Content-Type": "image/png",
                                    "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                           timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Trace-Id"] == trace_id
        spans = receiver.wait_for(trace_id, 12)
        names = {(s.service, s.name, s.kind) for s in spans}
        assert ("tel-step-0", "POST /process", "SPAN_KIND_SERVER") in names
        servers = {s.service for s in spans if s.kind == "SPAN_KIND_SERVER"
                   and s.name.endswith("/Process")}
        assert servers == {"tel-step-0", "tel-step-1"}  # one trace across both steps
        # The same metrics as a gRPC call: the entry step counted one OK request.
        samples = scrape(chain.metrics_ports[0])
        assert sample(samples, "stepchain_step_requests_total", pipeline_id="tel",
                      step_id="0", step_type="gaussian_blur", grpc_code="OK") == 1
    finally:
        chain.stop()
        receiver.stop()


def test_http_face_benchmark_compares_the_faces_and_writes_its_results(tmp_path: Any) -> None:
    import json

    from bench import http_face

    assert http_face.main(["--requests", "3", "--size", "32", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "http_face.json").read_text())
    assert [r["face"] for r in result["runs"]] == ["grpc", "http", "http-uvicorn"]
    assert all(r["requests"] == 3 and r["p50_ms"] > 0 for r in result["runs"])
    assert {"uvicorn_over_stdlib_p50_ms", "uvicorn_over_stdlib_paired_median_ms"} <= set(result)
    assert "| http-uvicorn | 3 |" in (tmp_path / "http_face.md").read_text()


@pytest.mark.slow
def test_a_step_that_keeps_refusing_is_not_handed_every_body_by_its_http_face() -> None:
    slow = [{"id": 0, "type": "gaussian_blur", "params": {"sigma": 3.0, "passes": 8}}]
    body = encoded(noisy_image(96, 96), "PNG")
    with http_pipeline(slow, max_inflight=1, max_queue=0) as url:
        def post(_: int) -> httpx.Response:
            return httpx.post(f"{url}/process", content=body, timeout=30,
                              headers={"Content-Type": "image/png"})
        replies = []
        for _wave in range(2):
            with ThreadPoolExecutor(10) as pool:
                replies += list(pool.map(post, range(10)))
    refused = [r.json() for r in replies if r.status_code != 200]
    assert refused and all(r["code"] == "RESOURCE_EXHAUSTED" for r in refused)
    assert any(r["error"].startswith("not sent: step 0 accepted") for r in refused)
    assert any(r.status_code == 200 for r in replies)


@pytest.mark.parametrize(("kernel_ms", "header"), [
    (1.151, "0.001151"),             # 1.151 / 1000 is 0.0011510000000000001 as a float
    (0.0049, "0.000005"),            # rounded to the microsecond, never 4.9e-06
    (11.0, "0.011"), (2500.0, "2.5"), (0.0, "0.0"),
])
def test_step_time_headers_are_seconds_rounded_to_the_microsecond(kernel_ms: float,
                                                                  header: str) -> None:
    response = step_pb2.ProcessResponse(timings=[step_pb2.StepTiming(step_id=3,
                                                                     kernel_ms=kernel_ms)])
    assert step_time_headers(response) == [("X-Step-3-Time", header)]


def test_an_x_request_id_beyond_the_bound_is_400_naming_the_header(
        face: tuple[str, Recorder]) -> None:
    url, _ = face
    body = encoded(noisy_image(8, 8), "PNG")
    for value, words in (("r" * 129, "X-Request-Id is 129 bytes; at most 128"),
                         ("a\x7fb", "X-Request-Id has control characters")):
        reply = httpx.post(f"{url}/process", content=body,
                           headers={"Content-Type": "image/png", "X-Request-Id": value})
        assert reply.status_code == 400 and words in reply.json()["error"], reply.text
        assert reply.headers["X-Request-Id"] != value  # never echoed back
    fine = httpx.post(f"{url}/process", content=body,
                      headers={"Content-Type": "image/png", "X-Request-Id": "r" * 128})
    assert fine.status_code == 200 and fine.headers["X-Request-Id"] == "r" * 128

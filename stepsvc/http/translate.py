"""HTTP <-> StepService, as pure functions: what an HTTP request asks the step, and what its
answer says over HTTP.

A client posts an image as the raw body (``Content-Type: image/png`` or ``image/jpeg``) or as
the multipart form field ``image``, with optional ``?threads=&passes=&schedule=&output=``
(``output=png|jpeg|raw``; the input's encoding by default: JPEG in, JPEG out). The answer is
the final image with one ``X-Step-{ID}-Time`` header per executed step (its kernel time in
seconds as a decimal, as the Flask tool wrote it, to the microsecond), ``X-Request-Id`` and
``X-Trace-Id``;
errors are JSON ``{"error", "code", "step"}`` with the HTTP status of the gRPC code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import grpc
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from stepchain.v1 import step_pb2

from stepsvc.frames import codec
from stepsvc.limits import MAX_REQUEST_ID_BYTES
from stepsvc.protocol import (
    FAILED_STEP_KEY,
    KUBERNETES_HTTP_PORT,
    OVERRIDE_NAMES,
    SERVICE_PORT_ENV,
)

#: The query parameters: the per-request overrides (proto field names) and the output.
QUERY_PARAMETERS = (*OVERRIDE_NAMES, "output")
#: The multipart form field that carries the image (the Flask tool's name).
IMAGE_FIELD = "image"

CONTENT_TYPES: dict[int, str] = {codec.PNG: "image/png", codec.JPEG: "image/jpeg",
                                 codec.RAW: "application/octet-stream"}
OUTPUTS: dict[str, int] = {"png": codec.PNG, "jpeg": codec.JPEG, "jpg": codec.JPEG,
                           "raw": codec.RAW}
#: Bodies that are the image itself (a multipart part often says application/octet-stream).
IMAGE_MEDIA = ("", "image/png", "image/jpeg", "image/jpg", "image/pjpeg",
               "application/octet-stream")
#: gRPC status -> HTTP status (what a REST client retries on: 429, 503, 504).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
#: RESOURCE_EXHAUSTED for an image over a size limit -- pixels, message size, or a memory need
#: larger than the step's whole budget -- is "too large" (413), not "retry later" (429).
_SIZE_LIMIT_SIGNS = ("--max-pixels", "--max-message-mb", "whole budget is")
# python-multipart logs each malformed body it is given as a warning; the client gets the
# error as its 400 instead, so a step's log is not filled by what callers send.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


class HttpError(Exception):
    """An HTTP answer other than the image: status, gRPC code name, message, failing step."""

    def __init__(self, status: int, code: str, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.step = step

    def body(self, default_step: int) -> bytes:
        """The JSON error document ``{"error", "code", "step"}``."""
        step = self.step if self.step is not None else default_step
        return json.dumps({"error": self.message, "code": self.code, "step": step}).encode()


def bad_request(message: str) -> HttpError:
    """400, INVALID_ARGUMENT."""
    return HttpError(400, "INVALID_ARGUMENT", message)


def request_id_header(value: str | None) -> str:
    """The ``X-Request-Id`` a client sent, stripped ("" when none), within request_id's bounds
    (stepsvc.limits): a longer one or one with control characters is a 400 naming the header,
    not a silently shortened key."""
    text = (value or "").strip()
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_REQUEST_ID_BYTES:
        raise bad_request(f"X-Request-Id is {size} bytes; at most {MAX_REQUEST_ID_BYTES} "
                          "(UTF-8) are allowed (leave it out and one is generated)")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise bad_request("X-Request-Id has control characters; use printable characters")
    return text


@dataclass(frozen=True)
class ProcessOptions:
    """What the query string asks for: per-request overrides and the output encoding."""

    threads: int = 0
    passes: int = 0
    schedule: str = ""
    #: None: the input's own encoding.
    output: int | None = None


def resolve_http_port(flag: int | None, env: Mapping[str, str]) -> int:
    """The HTTP port: ``--http-port``, else ``SERVICE_PORT`` (as the Flask tool's users set it),
    else 8080 inside Kubernetes, else 0 (off). ValueError names a bad ``SERVICE_PORT``."""
    if flag is not None:
        return flag
    text = env.get(SERVICE_PORT_ENV, "").strip()
    if text:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ValueError(f"{SERVICE_PORT_ENV}={text!r} must be a TCP port 1..65535 (the "
                             "HTTP port of the step, as in the Flask-era Deployments)")
        return int(text)
    return KUBERNETES_HTTP_PORT if env.get("KUBERNETES_SERVICE_HOST") else 0


def parse_options(query: str) -> ProcessOptions:
    """``?threads=&passes=&schedule=&output=`` as ProcessOptions; HttpError 400 naming the
    parameter otherwise. Range checks beyond "a number" are the step's own (same as gRPC)."""
    try:
        values = parse_qs(query, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=16)
    except ValueError as exc:
        raise bad_request(f"query string: {exc}") from None
    unknown = sorted(set(values) - set(QUERY_PARAMETERS))
    if unknown:
        raise bad_request(f"query parameter(s) {', '.join(unknown)} unknown; allowed: "
                          f"{', '.join(QUERY_PARAMETERS)}")

    def one(name: str) -> str:
        given = values.get(name, [""])
        if len(given) > 1:
            raise bad_request(f"query parameter {name} given {len(given)} times; give it once")
        return given[0].strip()

    def count(name: str) -> int:
        text = one(name)
        if not text:
            return 0
        if not text.isdigit() or len(text) > 9:
            raise bad_request(f"query parameter {name} must be a non-negative integer (0 = the "
                              f"step's own setting), got {text!r}")
        return int(text)

    output_text = one("output").lower()
    if output_text and output_text not in OUTPUTS:
        raise bad_request(f"query parameter output must be png, jpeg or raw, got "
                          f"{output_text!r}")
    return ProcessOptions(threads=count("threads"), passes=count("passes"),
                          schedule=one("schedule"),
                          output=OUTPUTS[output_text] if output_text else None)


def sniff_encoding(data: bytes) -> int | None:
    """PNG or JPEG from the file's magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return codec.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return codec.JPEG
    return None


def extract_image(content_type: str, body: bytes) -> tuple[bytes, int]:
    """The image file and its encoding from a raw body or the multipart field ``image``.

    The bytes decide the encoding (a multipart part often says application/octet-stream); the
    step decodes and checks them like any gRPC request. HttpError 400/415 otherwise.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        data = multipart_field(content_type, body, IMAGE_FIELD)
    elif media in IMAGE_MEDIA:
        data = body
    else:
        raise HttpError(415, "INVALID_ARGUMENT",
                        f"Content-Type {media!r} is not an image; send the image as the body with "
                        "Content-Type image/png or image/jpeg, or as the multipart form field "
                        f"{IMAGE_FIELD!r}")
    if not data:
        raise bad_request("the request has no image; send a PNG or JPEG as the body or as the "
                          f"multipart form field {IMAGE_FIELD!r}")
    encoding = sniff_encoding(data)
    if encoding is None:
        raise bad_request(f"the image is not a PNG or JPEG file (it starts with {data[:8]!r})")
    return data, encoding


def multipart_field(content_type: str, body: bytes, name: str) -> bytes:
    """The bytes of form field `name` in a multipart/form-data `body` (python-multipart)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 70:
        raise bad_request("multipart/form-data without a valid boundary parameter")
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise bad_request(f"multipart body cannot be parsed: {exc}") from None
    if not parts.ended:
        raise bad_request("multipart body cannot be parsed (it ends before its closing "
                          "boundary)")
    fields = [field for field, _ in parts.done]
    for field, data in parts.done:
        if field == name:
            return bytes(data)
    raise bad_request(f"multipart form has no field {name!r} (fields: "
                      f"{', '.join(fields) or 'none'})")


class _Parts:
    """python-multipart's callbacks collecting each part's name and bytes."""

    def __init__(self) -> None:
        self.done: list[tuple[str, bytearray]] = []
        self.ended = False
        self._header = bytearray()
        self._value = bytearray()
        self._name = ""
        self._data = bytearray()

    def callbacks(self) -> Any:
        def header_field(data: bytes, start: int, end: int) -> None:
            self._header += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            if self._header.strip().lower() == b"content-disposition":
                _, params = parse_options_header(bytes(self._value))
                self._name = params.get(b"name", b"").decode("latin-1")
            self._header, self._value = bytearray(), bytearray()

        def part_begin() -> None:
            self._name, self._data = "", bytearray()

        def part_data(data: bytes, start: int, end: int) -> None:
            self._data += data[start:end]

        def part_end() -> None:
            self.done.append((self._name, self._data))

        def end() -> None:
            self.ended = True

        return {"on_header_field": header_field, "on_header_value": header_value,
                "on_header_end": header_end, "on_part_begin": part_begin,
                "on_part_data": part_data, "on_part_end": part_end, "on_end": end}


def build_request(data: bytes, encoding: int, options: ProcessOptions,
                  request_id: str) -> step_pb2.ProcessRequest:
    """The ProcessRequest a gRPC client would send for this HTTP request."""
    output: Any = options.output if options.output is not None else encoding
    request = step_pb2.ProcessRequest(request_id=request_id, output_encoding=output)
    request.image.data = data
    request.image.encoding = encoding  # type: ignore[assignment]
    for name in OVERRIDE_NAMES:
        value = getattr(options, name)
        if value:
            setattr(request.overrides, name, value)
    return request


def step_time_headers(response: step_pb2.ProcessResponse) -> list[tuple[str, str]]:
    """``X-Step-{ID}-Time`` per executed step: its kernel time in seconds as a plain decimal,
    as the Flask tool wrote them (its Locust file multiplies them by 1000), rounded to the
    microsecond: ``0.001151``, not the float noise ``0.0011510000000000001``."""
    return [(f"X-Step-{t.step_id}-Time", seconds_text(t.kernel_ms / 1000.0))
            for t in response.timings]


def seconds_text(seconds: float) -> str:
    """`seconds` as a decimal to the microsecond, without trailing zeros (``0.0`` for none)."""
    text = f"{seconds:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def success_headers(response: step_pb2.ProcessResponse,
                    trace_id: str) -> list[tuple[str, str]]:
    """Every header of a 200 besides Content-Length."""
    image = response.image
    headers = [("Content-Type", CONTENT_TYPES.get(image.encoding, "application/octet-stream")),
               *step_time_headers(response),
               ("X-Request-Id", response.request_id),
               ("X-Trace-Id", response.trace_id or trace_id)]
    if image.encoding == codec.RAW:  # raw pixels need their shape
        headers += [("X-Image-Width", str(image.width)), ("X-Image-Height", str(image.height)),
                    ("X-Image-Channels", str(image.channels))]
    return headers


def http_status(code: grpc.StatusCode, message: str) -> int:
    """The HTTP status of a gRPC failure."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and any(
            sign in message for sign in _SIZE_LIMIT_SIGNS):
        return 413
    return HTTP_STATUS.get(code, 500)


def error_from_rpc(err: grpc.RpcError, step_id: int) -> HttpError:
    """The HTTP error for a failed Process call, naming the step that failed."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else str(err)) or code.name
    failed = step_id
    trailers: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == FAILED_STEP_KEY and str(value).isdigit():
            failed = int(str(value))
    return HttpError(http_status(code, message), code.name, message, failed)

"""The step's HTTP face: ``POST /process`` for clients of the Flask-era HTTP pipeline.

The REST half of the REST + gRPC pair (as KServe and Triton offer them). A client posts an image
as the raw body (``Content-Type: image/png`` or ``image/jpeg``) or as the multipart form field
``image``, with optional ``?threads=&passes=&schedule=&output=png|jpeg|raw``, and gets the final
image back (by default in the input's encoding: JPEG in, JPEG out), one ``X-Step-{ID}-Time``
header per executed step (its kernel time in seconds as a decimal, as the Flask tool wrote it,
to the microsecond), ``X-Request-Id`` and ``X-Trace-Id``. Errors are JSON ``{"error", "code", "step"}`` with the
HTTP status of the gRPC code.

There is one request path: the handler calls the step's own ``StepService/Process`` over a
loopback channel (with the HTTP request's trace context, W3C ``traceparent``, propagated), so
admission, limits, metrics and the trace are exactly those of a gRPC call. The pure helpers
(:func:`parse_options`, :func:`extract_image`, :func:`http_status`, :func:`success_headers`)
carry the translation; :class:`HttpFace` is the thin server around them. The body size is
bounded before anything is read (413), and connections are bounded too (429 beyond them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.frames import codec

log = logging.getLogger("stepchain.step.http")

#: Paths that run the pipeline: the Flask tool's `/process`, and `/` so that the topology
#: API's `http_entrypoint` works as is.
PROCESS_PATHS = ("/process", "/")
#: Health of the step over HTTP (its grpc.health.v1 status), for load balancers.
HEALTH_PATH = "/healthz"
#: Environment variable the Flask tool's Deployments set for its HTTP port.
SERVICE_PORT_ENV = "SERVICE_PORT"
#: The HTTP port in Kubernetes (the rendered Deployments and Services use it).
KUBERNETES_HTTP_PORT = 8080
#: Seconds an idle keep-alive connection (or a client that stopped sending) holds a thread.
IDLE_TIMEOUT_S = 30.0
#: Connections beyond the step's admitted requests, so a refusal (429) still gets written.
SPARE_CONNECTIONS = 8
#: Seconds in-flight HTTP requests get to write their answers when the face stops.
STOP_GRACE_S = 5.0

CONTENT_TYPES: dict[int, str] = {codec.PNG: "image/png", codec.JPEG: "image/jpeg",
                                 codec.RAW: "application/octet-stream"}
OUTPUTS: dict[str, int] = {"png": codec.PNG, "jpeg": codec.JPEG, "jpg": codec.JPEG,
                           "raw": codec.RAW}
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
_FAILED_STEP_KEY = "stepchain-failed-step"
_BOUNDARY_SAFE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


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


def start_http_face(server: Any, port: int, *, host: str, tracing: Any | None = None,
                    client_interceptors: list[grpc.UnaryUnaryClientInterceptor] | None = None,
                    ) -> HttpFace:
    """Starts the HTTP face of a built (and started) :class:`~stepsvc.step.server.StepServer`:
    its own gRPC address, body bound = the largest gRPC message, connections bounded by the
    step's admission (in-flight + queue) plus a few spare. OSError when `port` is taken."""
    settings = server.settings
    face = HttpFace(server.address, server.servicer.step.id, host=host, port=port,
                    max_body_bytes=settings.max_message_bytes,
                    timeout_s=settings.forward_timeout,
                    max_connections=settings.max_inflight + settings.max_queue
                    + SPARE_CONNECTIONS,
                    tracing=tracing, client_interceptors=client_interceptors)
    face.start()
    return face


def parse_options(query: str) -> ProcessOptions:
    """``?threads=&passes=&schedule=&output=`` as ProcessOptions; HttpError 400 naming the
    parameter otherwise. Range checks beyond "a number" are the step's own (same as gRPC)."""
    try:
        values = parse_qs(query, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=16)
    except ValueError as exc:
        raise _bad(f"query string: {exc}") from None
    known = {"threads", "passes", "schedule", "output"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _bad(f"query parameter(s) {', '.join(unknown)} unknown; allowed: threads, passes, "
                   "schedule, output")

    def one(name: str) -> str:
        given = values.get(name, [""])
        if len(given) > 1:
            raise _bad(f"query parameter {name} given {len(given)} times; give it once")
        return given[0].strip()

    def count(name: str) -> int:
        text = one(name)
        if not text:
            return 0
        if not text.isdigit() or len(text) > 9:
            raise _bad(f"query parameter {name} must be a non-negative integer (0 = the step's "
                       f"own setting), got {text!r}")
        return int(text)

    output_text = one("output").lower()
    if output_text and output_text not in OUTPUTS:
        raise _bad(f"query parameter output must be png, jpeg or raw, got {output_text!r}")
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
        data = _multipart_field(content_type, body, "image")
    elif media in ("", "image/png", "image/jpeg", "image/jpg", "image/pjpeg",
                   "application/octet-stream"):
        data = body
    else:
        raise HttpError(415, "INVALID_ARGUMENT",
                        f"Content-Type {media!r} is not an image; send the image as the body with "
                        "Content-Type image/png or image/jpeg, or as the multipart form field "
                        "'image'")
    if not data:
        raise _bad("the request has no image; send a PNG or JPEG as the body or as the "
                   "multipart form field 'image'")
    encoding = sniff_encoding(data)
    if encoding is None:
        raise _bad(f"the image is not a PNG or JPEG file (it starts with {data[:8]!r})")
    return data, encoding


def _multipart_field(content_type: str, body: bytes, name: str) -> bytes:
    boundary = _boundary(content_type)
    if boundary is None:
        raise _bad("multipart/form-data without a valid boundary parameter")
    header = f"Content-Type: multipart/form-data; boundary=\"{boundary}\"\r\n\r\n".encode()
    try:
        message = BytesParser(policy=HTTP).parsebytes(header + body)
    except Exception as exc:  # the email parser is lenient; be safe with hostile input
        raise _bad(f"multipart body cannot be parsed: {exc}") from None
    if not message.is_multipart():
        raise _bad("multipart body cannot be parsed (no parts found for its boundary)")
    fields = []
    for part in message.iter_parts():
        field = part.get_param("name", header="content-disposition")
        fields.append(str(field))
        if field == name:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise _bad(f"multipart form has no field {name!r} (fields: {', '.join(fields) or 'none'})")


def _boundary(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip().strip('"')
            return value if _BOUNDARY_SAFE.match(value) else None
    return None


def build_request(data: bytes, encoding: int, options: ProcessOptions,
                  request_id: str) -> step_pb2.ProcessRequest:
    """The ProcessRequest a gRPC client would send for this HTTP request."""
    output: Any = options.output if options.output is not None else encoding
    request = step_pb2.ProcessRequest(request_id=request_id, output_encoding=output)
    request.image.data = data
    request.image.encoding = encoding  # type: ignore[assignment]
    if options.threads:
        request.overrides.threads = options.threads
    if options.passes:
        request.overrides.passes = options.passes
    if options.schedule:
        request.overrides.schedule = options.schedule
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
        if key == _FAILED_STEP_KEY and str(value).isdigit():
            failed = int(str(value))
    return HttpError(http_status(code, message), code.name, message, failed)


def _bad(message: str) -> HttpError:
    return HttpError(400, "INVALID_ARGUMENT", message)


class HttpFace:
    """``POST /process`` on `host`:`port`, answered by the gRPC step at `grpc_target`.

    `tracing` is the step's :class:`~stepsvc.telemetry.Tracing` (a SERVER span per HTTP
    request, its context sent on to the gRPC call); `max_connections` bounds the threads.
    """

    def __init__(self, grpc_target: str, step_id: int, *, host: str = "0.0.0.0",
                 port: int = 0, max_body_bytes: int, timeout_s: float,
                 max_connections: int, tracing: Any | None = None,
                 client_interceptors: list[grpc.UnaryUnaryClientInterceptor] | None = None,
                 ) -> None:
        from stepsvc.routing.forward import transport_options
        from stepsvc.routing.throttle import AdaptiveThrottle, ThrottlingInterceptor

        self.step_id = step_id
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.tracing = tracing
        channel = grpc.insecure_channel(grpc_target, options=transport_options(max_body_bytes))
        self._channel = channel
        # Client-side adaptive throttling of the loopback call: a step that refuses most of
        # what it gets is not handed every HTTP body to refuse (stepsvc.routing.throttle).
        throttle = ThrottlingInterceptor(AdaptiveThrottle(), f"step {step_id}")
        channel = grpc.intercept_channel(channel, throttle, *(client_interceptors or ()))
        self._stub = step_pb2_grpc.StepServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._server = _Server((host, port), _Handler, self, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serves in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="stepchain-http", daemon=True)
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stops accepting, gives running requests `grace` seconds, closes the channel."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.wait_idle(grace)
        self._server.server_close()
        self._channel.close()

    def health(self) -> tuple[int, bytes]:
        """``GET /healthz``: the step's own grpc.health.v1 status (200 SERVING, else 503), for
        HTTP load balancers and Ingress health checks."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            status = f"UNREACHABLE ({err.code().name if hasattr(err, 'code') else 'error'})"
        code = 200 if status == "SERVING" else 503
        return code, json.dumps({"status": status, "step": self.step_id}).encode()

    # -- one request ----------------------------------------------------------------------------

    def process(self, headers: Mapping[str, str], query: str, body: bytes,
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of the answer to one ``POST /process``."""
        request_id = (headers.get("x-request-id") or "").strip()[:128] or uuid.uuid4().hex
        try:
            options = parse_options(query)
            data, encoding = extract_image(headers.get("content-type", ""), body)
            request = build_request(data, encoding, options, request_id)
        except HttpError as exc:
            return self._error(exc, request_id, "")
        del data, body  # the request holds the image now
        token = otel_context.attach(propagate.extract(dict(headers)))
        try:
            return self._call(request, request_id)
        finally:
            otel_context.detach(token)

    def _call(self, request: step_pb2.ProcessRequest, request_id: str,
              ) -> tuple[int, list[tuple[str, str]], bytes]:
        span_cm = (self.tracing.span("POST /process", {"http.request.method": "POST",
                                                       "http.route": "/process"},
                                     kind=SpanKind.SERVER)
                   if self.tracing is not None else _no_span())
        with span_cm as span:
            trace_id = _trace_id(span)
            try:
                response = self._stub.Process(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                error = error_from_rpc(err, self.step_id)
                if span.is_recording():
                    span.set_attribute("http.response.status_code", error.status)
                return self._error(error, request_id, trace_id)
            if span.is_recording():
                span.set_attribute("http.response.status_code", 200)
        payload = response.image.data
        return 200, success_headers(response, trace_id), payload

    def _error(self, error: HttpError, request_id: str, trace_id: str,
               ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [("Content-Type", "application/json"), ("X-Request-Id", request_id),
                   ("X-Trace-Id", trace_id)]
        if error.status in (429, 503):
            headers.append(("Retry-After", "1"))
        return error.status, headers, error.body(self.step_id)


class _no_span:
    """What `with` gets when the face has no tracing: a span that records nothing."""

    def __enter__(self) -> Any:
        return trace.get_current_span()

    def __exit__(self, *_: Any) -> None:
        return None


def _trace_id(span: Any) -> str:
    """The trace id of `span`, else of the caller's ``traceparent`` (tracing off), else ""."""
    for ctx in (span.get_span_context(), trace.get_current_span().get_span_context()):
        if ctx.is_valid:
            return trace.format_trace_id(ctx.trace_id)
    return ""


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; beyond that a 429."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 face: HttpFace, max_connections: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.face = face
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active = 0
        self._idle = threading.Condition()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's FQDN up, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(
            self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = HttpError(429, "RESOURCE_EXHAUSTED",
                             f"step {self.face.step_id}: too many HTTP connections; retry "
                             "later").body(self.face.step_id)
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: "
                                b"application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self.shutdown_request(request)
            return
        with self._idle:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        self._slots.release()
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request line too broken to name its version still gets a status line and headers.
    default_request_version = "HTTP/1.0"
    server_version = "stepchain"
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long), as JSON."""
        self.close_connection = True
        self._send_error(HttpError(code, "INVALID_ARGUMENT" if code < 500 else "INTERNAL",
                                   message or explain or "bad request"))

    def do_POST(self) -> None:
        face = self.server.face
        url = urlsplit(self.path)
        if url.path not in PROCESS_PATHS:
            self._send_error(HttpError(404, "NOT_FOUND", f"no {url.path}; POST an image to "
                                                         "/process"))
            return
        body = self._read_body(face.max_body_bytes)
        if body is None:
            return
        status, headers, payload = face.process(
            {k.lower(): v for k, v in self.headers.items()}, url.query, body)
        self._send(status, headers, payload)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == HEALTH_PATH:
            status, body = self.server.face.health()
            self._send(status, [("Content-Type", "application/json")], body)
            return
        self._refuse_method()

    def _refuse_method(self) -> None:
        self._send_error(HttpError(405, "UNIMPLEMENTED", "POST an image to /process"),
                         [("Allow", "POST")])

    do_PUT = do_DELETE = do_PATCH = _refuse_method

    def _read_body(self, limit: int) -> bytes | None:
        """The request body, at most `limit` bytes (413 beyond, before reading it when the
        length is declared); None when an error answer was sent instead."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        declared = (self.headers.get("Content-Length") or "").strip()
        if not declared.isdigit():
            self.close_connection = True
            self._send_error(HttpError(411, "INVALID_ARGUMENT", "the request needs a "
                                                                "Content-Length header"))
            return None
        size = int(declared)
        if size > limit:
            self.close_connection = True  # the body is never read
            self._too_large(f"the body is {size} bytes", limit)
            return None
        try:
            body = self.rfile.read(size)
        except (OSError, TimeoutError):
            self.close_connection = True
            return None
        if len(body) != size:
            self.close_connection = True
            self._send_error(_bad(f"the body ended after {len(body)} of {size} bytes"))
            return None
        return body

    def _read_chunked(self, limit: int) -> bytes | None:
        """A chunked body (curl -T -, streaming clients), refused once it passes `limit`."""
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                line = self.rfile.readline(1024)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self.close_connection = True
                    self._send_error(_bad(f"bad chunk size line {line[:40]!r}"))
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if size < 0 or total > limit:
                    self.close_connection = True
                    self._too_large("the chunked body passed that", limit)
                    return None
                chunk = self.rfile.read(size)
                self.rfile.readline(1024)  # the CRLF after the chunk
                if len(chunk) != size:
                    self.close_connection = True
                    self._send_error(_bad("the chunked body ended inside a chunk"))
                    return None
                parts.append(chunk)
        except (OSError, TimeoutError):
            self.close_connection = True
            return None

    def _too_large(self, what: str, limit: int) -> None:
        self._send_error(HttpError(
            413, "RESOURCE_EXHAUSTED", f"step {self.server.face.step_id}: {what}; this step "
            f"accepts at most {limit} bytes (--max-message-mb)"))

    def _send_error(self, error: HttpError, extra: list[tuple[str, str]] | None = None) -> None:
        face = self.server.face
        self._send(error.status, [("Content-Type", "application/json"), *(extra or [])],
                   error.body(face.step_id))

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

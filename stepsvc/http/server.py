"""The HTTP/1.1 server of the face: the standard library's ``http.server``, a thread per
connection, bounded.

Routes: ``POST /process`` (and ``POST /``, so the topology API's ``http_entrypoint`` works as
is) answered by :class:`~stepsvc.http.face.HttpFace`; ``GET /healthz``; JSON errors for the
rest. The body is bounded before it is read (413 when the declared length is over the limit,
as soon as a chunked body passes it), and so are connections (429 beyond them).

Why not uvicorn (h11), which the topology service runs: ``stepchain bench http_face`` serves the
same :class:`~stepsvc.http.face.HttpFace` both ways side by side (its ``http-uvicorn`` row). On
this project's shared 2-core machine uvicorn + Starlette added 2.2 ms at the median (1.6 ms as
the median of back-to-back differences; load 8-9) and 40 ms under load 21 -- more than the 1 ms
issue 20 allows: a thread per connection that makes the loopback call itself hands nothing
between an event loop and a worker thread. Multipart bodies are parsed by python-multipart, a
kept library (:mod:`stepsvc.http.translate`); the chunked-body reader below stays ours, since
``http.server`` has none.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from stepsvc.http.face import HttpFace
from stepsvc.http.translate import HttpError, bad_request

log = logging.getLogger("stepchain.step.http")

#: Paths that run the pipeline: the Flask tool's `/process`, and `/`.
PROCESS_PATHS = ("/process", "/")
#: Health of the step over HTTP (its grpc.health.v1 status), for load balancers.
HEALTH_PATH = "/healthz"
#: Seconds an idle keep-alive connection (or a client that stopped sending) holds a thread.
IDLE_TIMEOUT_S = 30.0
#: Connections beyond the step's admitted requests, so a refusal (429) still gets written.
SPARE_CONNECTIONS = 8
#: Seconds in-flight HTTP requests get to write their answers when the face stops.
STOP_GRACE_S = 5.0


def start_http_face(server: Any, port: int, *, host: str, tracing: Any | None = None,
                    client_interceptors: list[Any] | None = None) -> HttpServer:
    """Starts the HTTP face of a built (and started) :class:`~stepsvc.step.server.StepServer`:
    its own gRPC address, body bound = the largest gRPC message, connections bounded by the
    step's admission (in-flight + queue) plus a few spare. OSError when `port` is taken."""
    settings = server.settings
    face = HttpFace(server.address, server.servicer.step.id,
                    max_body_bytes=settings.max_message_bytes,
                    timeout_s=settings.forward_timeout, tracing=tracing,
                    client_interceptors=client_interceptors)
    try:
        http = HttpServer(face, host=host, port=port,
                          max_connections=settings.max_inflight + settings.max_queue
                          + SPARE_CONNECTIONS)
    except OSError:
        face.close()
        raise
    http.start()
    return http


class HttpServer:
    """``POST /process`` on `host`:`port` (0 = any), answered by `face`."""

    def __init__(self, face: HttpFace, *, host: str = "0.0.0.0", port: int = 0,
                 max_connections: int) -> None:
        self.face = face
        self._server = _Server((host, port), _Handler, face, max_connections)
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
        self.face.close()


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
            self._send_error(bad_request(f"the body ended after {len(body)} of {size} bytes"))
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
                    self._send_error(bad_request(f"bad chunk size line {line[:40]!r}"))
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
                    self._send_error(bad_request("the chunked body ended inside a chunk"))
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

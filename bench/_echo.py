"""The floors a step hop is measured against, each served by a process of its own.

- a raw TCP echo of length-prefixed bytes (:func:`serve_tcp_echo`): what moving the bytes both
  ways costs at least;
- a pure-bytes gRPC echo (:func:`serve_grpc_echo`): ``StepService/Process`` answering the
  request's own bytes, with the steps' channel options;
- the common Flask-style step (:func:`serve_http_step`): JPEG in, decode, kernel, JPEG out, POST
  to the next one.

``python -m bench._echo --tcp-echo PORT | --grpc-echo PORT | --http-step KERNEL ...`` runs one;
the command lines come from here too. Not a benchmark (``stepchain bench`` leaves it out).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import io
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
from PIL import Image as PILImage

import native
from stepsvc.frames import codec
from stepsvc.limits import DEFAULT_MAX_MESSAGE_BYTES
from stepsvc.ports import free_port
from stepsvc.protocol import PROCESS_METHOD

JPEG_QUALITY = 90


def http_commands(kernels: Sequence[tuple[str, dict[str, Any]]],
                  threads: int) -> tuple[list[list[str]], list[int]]:
    """HTTP+JPEG step command lines (this module in --http-step mode) for a linear chain."""
    ports = [free_port() for _ in kernels]
    commands = []
    for i, (name, params) in enumerate(kernels):
        nxt = f"http://127.0.0.1:{ports[i + 1]}/" if i + 1 < len(kernels) else ""
        commands.append([sys.executable, "-m", "bench._echo", "--http-step", name,
                         "--http-port", str(ports[i]), "--http-params",
                         json.dumps({**params, "threads": threads}), "--http-next", nxt])
    return commands, ports


def jpeg_encode(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    src = img[:, :, 0] if img.shape[2] == 1 else img
    PILImage.fromarray(src).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    arr = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))
    return arr


def serve_http_step(kernel: str, port: int, params: dict[str, Any], next_url: str) -> None:
    """The common Flask-style step: JPEG in, decode, kernel, JPEG out, POST to the next step."""
    local = threading.local()

    def post_next(body: bytes) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            host, _, _path = next_url.removeprefix("http://").partition("/")
            hostname, _, p = host.partition(":")
            conn = local.conn = http.client.HTTPConnection(hostname, int(p), timeout=120)
        conn.request("POST", "/", body=body, headers={"Content-Type": "image/jpeg"})
        reply = conn.getresponse()
        return reply.read()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            img = jpeg_decode(body)
            out = native.run(kernel, img, **params)
            data = jpeg_encode(out)
            if next_url:
                data = post_next(data)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


class HttpClient:
    """One keep-alive HTTP connection per calling thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, body: bytes) -> bytes:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                timeout=120)
        conn.request("POST", "/", body=body, headers={"Content-Type": "image/jpeg"})
        return conn.getresponse().read()


def serve_tcp_echo(port: int) -> None:
    """Echoes length-prefixed messages: what moving the bytes both ways costs at least."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                size = int.from_bytes(head, "big")
                buf = bytearray(size)
                view, got = memoryview(buf), 0
                while got < size:
                    got += conn.recv_into(view[got:])
                conn.sendall(buf)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def tcp_echo_client(port: int) -> Callable[[bytes], bytes]:
    client = socket.create_connection(("127.0.0.1", port))

    def echo(data: bytes) -> bytes:
        client.sendall(len(data).to_bytes(8, "big"))
        client.sendall(data)
        buf = bytearray(len(data))
        view, got = memoryview(buf), 0
        while got < len(data):
            got += client.recv_into(view[got:])
        return bytes(buf)
    return echo


def serve_grpc_echo(port: int) -> None:
    """StepService/Process that answers the request's own bytes (no parsing, no kernel)."""
    from concurrent import futures

    from stepsvc.routing.channels import transport_options

    codec.keep_large_buffers()
    server = grpc.server(futures.ThreadPoolExecutor(8),
                         options=transport_options(DEFAULT_MAX_MESSAGE_BYTES))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    service, _, method = PROCESS_METHOD.lstrip("/").rpartition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def tcp_echo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench._echo", "--tcp-echo", str(port)]


def grpc_echo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench._echo", "--grpc-echo", str(port)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._echo",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--http-step", help="serve this kernel as an HTTP+JPEG step")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--http-params", default="{}")
    parser.add_argument("--http-next", default="")
    parser.add_argument("--tcp-echo", type=int, metavar="PORT")
    parser.add_argument("--grpc-echo", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    if args.http_step:
        serve_http_step(args.http_step, args.http_port, json.loads(args.http_params),
                        args.http_next)
    elif args.tcp_echo:
        serve_tcp_echo(args.tcp_echo)
    elif args.grpc_echo:
        serve_grpc_echo(args.grpc_echo)
    else:
        parser.error("one of --http-step, --tcp-echo, --grpc-echo")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what the HTTP face (``POST /process``) costs over a direct gRPC call.

One in-process ``identity`` step with its HTTP face. The same JPEG (``--size`` x ``--size``,
answered as JPEG) is sent ``--requests`` times, one caller at a time, alternating between the
two faces so both see the same machine: gRPC ``Process`` with the encoded image, and HTTP
``POST /process`` with the image as the raw body (a keep-alive connection, as Locust and
``requests.Session`` use). The HTTP path is the gRPC path plus the HTTP parse and one loopback
gRPC hop, so the difference is that overhead.

A third face, ``http-uvicorn``, is the same :class:`~stepsvc.http.face.HttpFace` behind uvicorn
and Starlette (the kept server the topology service runs) instead of the step's standard-library
``http.server``, the loopback gRPC call on Starlette's worker threads: the side-by-side figure
behind the choice written in :mod:`stepsvc.http.server` (issue 20 allows a kept library unless
it costs more than 1 ms at p50).

Prints a table and writes ``bench/results/http_face.json`` and ``http_face.md`` with the load
average before and after (the machine may be shared).

Usage: ``stepchain bench http_face [--requests 200] [--size 512]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from stepchain.v1 import step_pb2, step_pb2_grpc

from bench._harness import RESULTS_DIR, write_results
from stepsvc.frames import codec
from stepsvc.http.face import HttpFace
from stepsvc.http.server import start_http_face
from stepsvc.step.config import parse_config
from stepsvc.step.server import ServerSettings, build_server


class _NoDiscovery:
    def active(self) -> dict[int, str]:
        return {}


def _jpeg(size: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


class _UvicornFace:
    """`face` behind uvicorn + Starlette on a free loopback port, served from a thread."""

    def __init__(self, face: HttpFace) -> None:
        async def process(request: Request) -> Response:
            body = await request.body()
            status, headers, payload = await run_in_threadpool(
                face.process, dict(request.headers), request.url.query, body)
            return Response(payload, status_code=status, headers=dict(headers))

        app = Starlette(routes=[Route("/process", process, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-face", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SystemExit("bench http_face: uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 3),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepchain bench http_face", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per face")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    data = _jpeg(args.size)
    load_before = list(os.getloadavg())
    config = parse_config(json.dumps({"pipeline_id": "bench", "step_id": 0,
                                      "steps": [{"id": 0, "type": "identity"}]}))
    server = build_server(config, _NoDiscovery(), ServerSettings(host="127.0.0.1", port=0))
    server.start()
    face = start_http_face(server, 0, host="127.0.0.1")
    settings = server.settings
    kept = _UvicornFace(HttpFace(server.address, 0, max_body_bytes=settings.max_message_bytes,
                                 timeout_s=settings.forward_timeout))
    times: dict[str, list[float]] = {"grpc": [], "http": [], "http-uvicorn": []}
    try:
        request = step_pb2.ProcessRequest(output_encoding=codec.JPEG)
        request.image.data = data
        request.image.encoding = codec.JPEG
        urls = {"http": f"http://127.0.0.1:{face.port}/process",
                "http-uvicorn": f"http://127.0.0.1:{kept.port}/process"}
        with grpc.insecure_channel(server.address) as channel, httpx.Client() as http:
            stub = step_pb2_grpc.StepServiceStub(channel)
            warmup = min(10, args.requests)  # a smoke run (the test's 3) needs no 10
            for i in range(args.requests + warmup):  # the first calls of each warm up
                start = time.perf_counter()
                stub.Process(request, timeout=60)
                took = {"grpc": time.perf_counter() - start}
                for name, url in urls.items():
                    start = time.perf_counter()
                    reply = http.post(url, content=data, headers={"Content-Type": "image/jpeg"})
                    took[name] = time.perf_counter() - start
                    if reply.status_code != 200:
                        raise SystemExit(f"bench http_face: {name} HTTP {reply.status_code}: "
                                         f"{reply.text}")
                if i >= warmup:
                    for name, seconds in took.items():
                        times[name].append(seconds)
    finally:
        kept.stop()
        face.stop()
        server.stop()
    rows: list[dict[str, Any]] = [{"face": name, "requests": len(values), **_summary(values)}
            for name, values in times.items()]
    overhead = round(rows[1]["p50_ms"] - rows[0]["p50_ms"], 3)
    uvicorn_cost = round(rows[2]["p50_ms"] - rows[1]["p50_ms"], 3)
    # back-to-back pairs see the same load: the median of their differences drifts less
    paired = round(statistics.median(
        (u - h) * 1000 for u, h in zip(times["http-uvicorn"], times["http"], strict=True)), 3)
    result: dict[str, Any] = {
        "benchmark": "http_face", "load_average_before": load_before,
        "settings": {"requests": args.requests, "size": args.size, "jpeg_bytes": len(data)},
        "runs": rows, "http_overhead_p50_ms": overhead,
        "uvicorn_over_stdlib_p50_ms": uvicorn_cost,
        "uvicorn_over_stdlib_paired_median_ms": paired,
    }
    lines = ["| face | requests | p50 ms | p95 ms | mean ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['face']} | {r['requests']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['mean_ms']} |" for r in rows]
    write_results(args.out, "http_face", result, "HTTP face over gRPC",
                  f"stepchain bench http_face --requests {args.requests} --size {args.size}",
                  f"{len(data)}-byte JPEG in and out, one identity step, one caller, the faces "
                  "alternating (http: the step's http.server; http-uvicorn: the same face behind "
                  "uvicorn + Starlette).\n\n" + "\n".join(lines)
                  + f"\n\nHTTP overhead at the median: {overhead} ms; uvicorn + Starlette "
                  f"instead of http.server: {uvicorn_cost:+} ms (median of the back-to-back "
                  f"differences: {paired:+} ms).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

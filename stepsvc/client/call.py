"""Calling a pipeline: build a ProcessRequest from a file, send it, show per-step timings.

Used by ``stepchain submit`` / ``stepchain request``, the demo and the benchmarks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.client.tile_submit import TileJobError, read_input
from stepsvc.frames import codec
from stepsvc.limits import DEFAULT_MAX_MESSAGE_MB
from stepsvc.routing.channels import channel_options
from stepsvc.routing.throttle import throttled

OUTPUT_ENCODINGS = {".png": codec.PNG, ".jpg": codec.JPEG, ".jpeg": codec.JPEG}


def image_message(path: str | Path, *, raw: bool = False) -> step_pb2.Image:
    """The file at `path` as an Image: PNG/JPEG bytes as they are, a ``.npy`` array (uint8
    H x W [x C]) and anything else (or `raw`) decoded here and sent as raw pixels."""
    if Path(path).suffix.lower() == ".npy":
        try:
            return codec.raw_image(np.ascontiguousarray(read_input(path)))
        except TileJobError as exc:
            raise ValueError(str(exc)) from None
    data = Path(path).read_bytes()
    encoding = codec.sniff_encoding(data)
    if encoding is not None and not raw:
        return step_pb2.Image(data=data, encoding=encoding)
    return codec.raw_image(codec.read_image_file(str(path)))


def build_request(image: step_pb2.Image, *,
                  output_encoding: step_pb2.ImageEncoding = codec.RAW,
                  threads: int = 0, passes: int = 0, jpeg_quality: int = 0,
                  request_id: str = "") -> step_pb2.ProcessRequest:
    """A ProcessRequest for `image` with optional per-request overrides."""
    return step_pb2.ProcessRequest(
        request_id=request_id, image=image, output_encoding=output_encoding,
        jpeg_quality=jpeg_quality,
        overrides=step_pb2.Overrides(threads=threads, passes=passes))


def request_json(request: step_pb2.ProcessRequest) -> str:
    """`request` as the JSON grpcurl's ``-d @`` reads (bytes are base64)."""
    return json_format.MessageToJson(request, indent=2)


def output_encoding_for(path: str | Path) -> step_pb2.ImageEncoding:
    """PNG or JPEG from the output file's suffix; ValueError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_ENCODINGS:
        raise ValueError(f"--out {path}: the suffix must be .png, .jpg or .jpeg, got {suffix!r}")
    return OUTPUT_ENCODINGS[suffix]


def check_output_path(path: str | Path) -> None:
    """Raises ValueError unless `path` can be written: its directory exists and is writable.

    Checked before a request is sent, so a typo in --out fails at once instead of after the
    whole pipeline ran.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ValueError(f"--out {path} is a directory; give a file name such as "
                         f"{target / 'out.png'}")
    if not directory.is_dir():
        raise ValueError(f"--out {path}: directory {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: directory {directory} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"--out {path}: the file exists and is not writable")


def connect(target: str, *, max_message_mb: int = DEFAULT_MAX_MESSAGE_MB) -> grpc.Channel:
    """An insecure channel to a step, with the same message limits the steps use, and
    client-side adaptive throttling: while the pipeline refuses (RESOURCE_EXHAUSTED) more than
    half of what it gets, requests beyond twice its accepts are refused here, not sent."""
    codec.keep_large_buffers()
    channel = grpc.insecure_channel(target, options=channel_options(max_message_mb * 1024 * 1024))
    return throttled(channel, f"the pipeline at {target}")


@dataclass
class SubmitResult:
    """One answered request: the response and the round trip seen by the client."""

    response: step_pb2.ProcessResponse
    round_trip_ms: float

    def image_array(self) -> np.ndarray:
        """The result image as an H x W x C array (decoding PNG/JPEG if needed)."""
        return codec.decode_image(self.response.image)


def submit(channel: grpc.Channel, request: step_pb2.ProcessRequest, *,
           timeout: float | None = 60.0) -> SubmitResult:
    """Sends `request` and returns the response with the client-side round trip time."""
    stub = step_pb2_grpc.StepServiceStub(channel)
    start = time.perf_counter()
    response = stub.Process(request, timeout=timeout)
    return SubmitResult(response, (time.perf_counter() - start) * 1000.0)


_COLUMNS = (("step", "step_id", "d"), ("type", "step_type", "s"), ("host", "host", "s"),
            ("thr", "threads", "d"), ("queue", "queue_wait_ms", ".1f"),
            ("decode", "decode_ms", ".1f"), ("kernel", "kernel_ms", ".1f"),
            ("forward", "forward_ms", ".1f"), ("encode", "encode_ms", ".1f"),
            ("total", "total_ms", ".1f"), ("next", "next_step", "d"),
            ("tries", "forward_attempts", "d"))


def timing_table(timings: Sequence[step_pb2.StepTiming]) -> str:
    """A fixed-width table of per-step timings (milliseconds)."""
    rows = [[h for h, _, _ in _COLUMNS]]
    for t in timings:
        row = []
        for _, attr, fmt in _COLUMNS:
            value = getattr(t, attr)
            if attr == "next_step" and not t.HasField("next_step"):
                row.append("last")  # forwarded nowhere; "0" means it went to step 0
            elif attr == "forward_attempts" and not value:
                row.append("-")
            else:
                row.append(format(value, fmt))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for r in rows:
        cells = [cell.ljust(w) if _COLUMNS[i][2] == "s" else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def summary(result: SubmitResult, out: str | None = None) -> str:
    """The human report of one request: header, timing table, labels."""
    resp = result.response
    img = resp.image
    kernel = sum(t.kernel_ms for t in resp.timings)
    head = (f"request {resp.request_id}: {len(resp.timings)} step(s), round trip "
            f"{result.round_trip_ms:.1f} ms (kernels {kernel:.1f} ms)")
    lines = [head, timing_table(resp.timings)]
    if resp.labels:
        lines.append("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(resp.labels.items())))
    if out:
        lines.append(f"output: {out} ({img.width}x{img.height}x{img.channels}, "
                     f"{codec.encoding_name(img.encoding)}, {len(img.data)} bytes)")
    if resp.trace_id:
        lines.append(f"trace: {resp.trace_id}")
    return "\n".join(lines)


def summary_json(result: SubmitResult, out: str | None = None) -> dict[str, Any]:
    """The same report as a JSON-able dict (no image bytes)."""
    resp = result.response
    timings = [_timing_json(t) for t in resp.timings]
    img = resp.image
    return {
        "request_id": resp.request_id,
        "round_trip_ms": round(result.round_trip_ms, 3),
        "output": out,
        "image": {"width": img.width, "height": img.height, "channels": img.channels,
                  "encoding": codec.encoding_name(img.encoding), "bytes": len(img.data)},
        "labels": dict(resp.labels),
        "measures": dict(resp.measures),
        "timings": timings,
        "trace_id": resp.trace_id,
    }


def _timing_json(timing: step_pb2.StepTiming) -> dict[str, Any]:
    """One step's timing as JSON: every field, and ``next_step`` null for the last step (it
    forwarded nowhere), a number (0 included) for a step that forwarded."""
    data = json_format.MessageToDict(timing, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    data["step_id"] = timing.step_id
    data["next_step"] = timing.next_step if timing.HasField("next_step") else None
    return data


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False)

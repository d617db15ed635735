"""`stepchain submit --tile`: an image as padded tiles through a pipeline, none lost.

The entry step describes its pipeline (``StepService/Describe``); :mod:`stepsvc.client.tiles` turns
that into the halo and the tile plan. Tiles go out as ordinary requests (request_id
``<image-id>/<tile-index>``), at most `concurrency` at a time, each cut from the input when it
is sent and written into the output as soon as it comes back, so the client holds the input,
the output and the tiles in flight, nothing more. A ``.npy`` input is memory-mapped and a
``.npy`` output is written through a memory map, which makes images larger than memory work.

Every tile is retried with exponential backoff (and jitter) on UNAVAILABLE, RESOURCE_EXHAUSTED
and DEADLINE_EXCEEDED, up to :attr:`RetryPolicy.attempts` tries; the channel's round_robin
sends each retry to the next replica of the entry step. Any other error, or a tile out of
tries, fails the job: nothing is written and the failed tiles are named.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.client.tiles import PipelineReach, Tile, output_shape, pipeline_reach, plan_tiles
from stepsvc.frames import codec
from stepsvc.step.config import parse_config

#: Status codes worth another try: a replica down or restarting, one that is full, one too slow.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.DEADLINE_EXCEEDED})
#: Largest input the client reads (the steps only ever see tiles): 2^32 pixels.
CLIENT_MAX_PIXELS = 1 << 32
#: Input and output formats. `.npy` is raw H x W x C uint8, memory-mapped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".tif", ".tiff", ".bmp", ".webp")
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


#: How a refusal names a size limit: a step's pixels or message size, or gRPC's own message
#: limit ("Received message larger than max", "Sent message larger than max").
SIZE_LIMIT_FLAGS = ("--max-pixels", "--max-message-mb", "larger than max")


def over_a_size_limit(details: str) -> bool:
    """Whether a RESOURCE_EXHAUSTED says the request is too large (no retry helps), not that
    the step is busy."""
    return any(flag in details for flag in SIZE_LIMIT_FLAGS)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter (AWS architecture blog)."""

    attempts: int = 8
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1)))


@dataclass
class TileReport:
    """The accounting of one image: every tile is done or failed, none unaccounted."""

    expected: int
    done: int = 0
    retried: int = 0
    #: tile index -> why it failed (the last status and message).
    failed: dict[int, str] = field(default_factory=dict)
    #: the first error of each retried tile (what the retries were about), for the log.
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.done == self.expected and not self.failed

    def line(self) -> str:
        """``tiles: expected N, done N, retried R, failed F`` (the line scripts look for)."""
        return (f"tiles: expected {self.expected}, done {self.done}, retried {self.retried}, "
                f"failed {len(self.failed)}")

    def failures(self) -> str:
        """One line per failed tile (empty when none failed)."""
        return "\n".join(f"  tile {i}: {why}" for i, why in sorted(self.failed.items()))


class TileJobError(Exception):
    """The job could not start (bad input, pipeline not tileable, entry step unreachable)."""


def read_input(path: str | Path) -> np.ndarray:
    """The input image as H x W x C uint8: a ``.npy`` file memory-mapped (never read whole),
    anything else decoded by Pillow."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TileJobError(f"{path}: not a NumPy .npy image ({exc})") from None
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2]
                                                                not in (1, 3, 4)):
            raise TileJobError(f"{path}: a .npy image must be uint8 H x W or H x W x C with C "
                               f"in 1, 3, 4; got {arr.dtype} {arr.shape}")
        return arr if arr.ndim == 3 else arr[:, :, None]
    try:
        return codec.read_image_file(str(path), max_pixels=CLIENT_MAX_PIXELS)
    except (OSError, ValueError) as exc:
        raise TileJobError(f"{path}: cannot read the image ({exc})") from None


def describe(channel: grpc.Channel, timeout: float) -> step_pb2.DescribeResponse:
    """The entry step's description of its pipeline (retried like a tile)."""
    stub = step_pb2_grpc.StepServiceStub(channel)
    response: step_pb2.DescribeResponse = with_retries(
        lambda t, w: stub.Describe(step_pb2.DescribeRequest(), timeout=t, wait_for_ready=w),
        timeout, RetryPolicy(attempts=4), lambda code, msg: None)
    return response


def reach_of(description: step_pb2.DescribeResponse) -> PipelineReach:
    """The pipeline's halo/scale from the entry step's description; TileJobError if it
    cannot be tiled exactly."""
    from native.halo import NotTileable

    _check_kernels_installed(description)
    try:
        return pipeline_reach(parse_config(description.config_json))
    except NotTileable as exc:
        raise TileJobError(
            f"pipeline {description.pipeline_id} cannot be tiled: {exc}. Submit the image "
            "without --tile (as one request) instead") from None
    except ValueError as exc:
        raise TileJobError(f"the entry step described its pipeline in a form this client "
                           f"does not read: {exc}") from None


def _check_kernels_installed(description: step_pb2.DescribeResponse) -> None:
    """Halos come from each kernel's specification in this process: a pipeline step whose
    kernel (a plugin) is not installed here is refused naming the step, before any tile."""
    from native.registry import canonical_name

    try:
        steps = json.loads(description.config_json).get("steps", [])
    except (ValueError, AttributeError):
        return  # parse_config says what is wrong with it
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        try:
            canonical_name(str(step.get("type", "")))
        except ValueError as exc:
            raise TileJobError(
                f"step {step.get('id')} ({step.get('type')}): {exc}. --tile reads each "
                "kernel's halo from its specification here: install the plugin package that "
                "provides it where you run stepchain submit, or submit without --tile") from None


class _Output:
    """The output image, allocated when the first tile tells its channel count."""

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.path = path
        self.shape = shape
        self.array: np.ndarray | None = None
        self._tmp: str | None = None
        self._lock = threading.Lock()

    def place(self, tile: Tile, result: np.ndarray, reach: PipelineReach) -> None:
        rows, cols = tile.crop(reach.scale)
        part = result[rows, cols]
        with self._lock:
            if self.array is None:
                self.array = self._allocate(result.shape[2])
        out_rows, out_cols = tile.placement(reach.scale)
        self.array[out_rows, out_cols] = part  # tiles never overlap: no lock needed

    def _allocate(self, channels: int) -> np.ndarray:
        shape = (*self.shape, channels)
        if self.path.suffix.lower() == ".npy":
            # written through a memory map next to the target, renamed into place when done;
            # created as open() creates files (0666 less the umask), not mkstemp's 0600
            self._tmp = str(self.path.with_name(
                f".{self.path.name}.{secrets.token_hex(6)}.tmp"))
            os.close(os.open(self._tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666))
            return np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.uint8, shape=shape)
        return np.empty(shape, dtype=np.uint8)

    def commit(self) -> None:
        """Writes the assembled image to its path (atomically for .npy)."""
        assert self.array is not None
        if self._tmp is not None:
            assert isinstance(self.array, np.memmap)
            self.array.flush()
            del self.array
            self.array = None
            os.replace(self._tmp, self.path)
            self._tmp = None
            return
        encoding = codec.PNG if self.path.suffix.lower() == ".png" else codec.JPEG
        data, _ = codec.encode_data(self.array, encoding)
        self.path.write_bytes(data)

    def discard(self) -> None:
        """Drops a partial output: a failed job writes nothing."""
        self.array = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


@dataclass
class TileJob:
    """One image through one pipeline as tiles."""

    channel: grpc.Channel
    reach: PipelineReach
    tile_size: int
    concurrency: int = 4
    timeout: float = 60.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    threads: int = 0
    passes: int = 0
    image_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def run(self, image: np.ndarray, out_path: Path,
            progress: Callable[[int, int], None] | None = None) -> TileReport:
        """Sends every tile and writes the output to `out_path` if all came back.

        `progress(done, expected)` is called after every finished tile.
        """
        height, width = image.shape[0], image.shape[1]
        tiles = plan_tiles(height, width, self.tile_size, self.reach)
        report = TileReport(expected=len(tiles))
        output = _Output(out_path, output_shape(height, width, self.reach))
        stub = step_pb2_grpc.StepServiceStub(self.channel)
        lock = threading.Lock()

        def on_retry(code: grpc.StatusCode, message: str) -> None:
            with lock:
                report.retried += 1
                report.reasons[code.name] = report.reasons.get(code.name, 0) + 1

        def one(tile: Tile) -> None:
            request = step_pb2.ProcessRequest(
                request_id=f"{self.image_id}/{tile.index}",
                overrides=step_pb2.Overrides(threads=self.threads, passes=self.passes))
            codec.write_image(request.image, np.ascontiguousarray(
                image[tile.py0:tile.py1, tile.px0:tile.px1]), codec.RAW)
            response = with_retries(
                lambda t, w: stub.Process(request, timeout=t, wait_for_ready=w), self.timeout,
                self.policy, on_retry)
            result = codec.decode_image(response.image, max_pixels=CLIENT_MAX_PIXELS)
            output.place(tile, result, self.reach)

        with futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                        thread_name_prefix="tile") as pool:
            for tile, error in _bounded_map(pool, one, tiles, self.concurrency):
                with lock:
                    if error is None:
                        report.done += 1
                    else:
                        report.failed[tile.index] = error
                if progress is not None:
                    progress(report.done + len(report.failed), report.expected)
        if report.ok:
            output.commit()
        else:
            output.discard()
        return report


def _bounded_map(pool: futures.Executor, fn: Callable[[Tile], None], tiles: list[Tile],
                 limit: int) -> Iterator[tuple[Tile, str | None]]:
    """Runs fn over tiles with at most `limit` in flight (so only that many tiles are cut
    from the input at once); yields (tile, None) or (tile, why it failed) as each ends."""
    pending: dict[futures.Future[None], Tile] = {}
    queue = iter(tiles)
    for tile in queue:
        pending[pool.submit(fn, tile)] = tile
        if len(pending) >= limit:
            break
    while pending:
        done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
        for future in done:
            tile = pending.pop(future)
            yield tile, _failure(future)
            nxt = next(queue, None)
            if nxt is not None:
                pending[pool.submit(fn, nxt)] = nxt


def _failure(future: futures.Future[None]) -> str | None:
    exc = future.exception()
    if exc is None:
        return None
    if isinstance(exc, grpc.RpcError):
        return rpc_error_text(exc)
    return f"{type(exc).__name__}: {exc}"


def rpc_error_text(err: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call, as the accounting names a failed tile."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{code.name if code is not None else 'ERROR'}: {details}"


def with_retries(call: Callable[[float, bool], Any], timeout: float, policy: RetryPolicy,
                  on_retry: Callable[[grpc.StatusCode, str], None]) -> Any:
    """`call(timeout, wait_for_ready)` until it succeeds, a non-retryable error, or
    policy.attempts tries.

    A request too large for the pipeline (RESOURCE_EXHAUSTED naming a size limit) is not
    retried: it would be refused again. The first try fails fast; retries wait (gRPC ``wait_for_ready``, within their deadline)
    for a replica to be connected, so a tile outlives a moment when every replica of the
    entry step is restarting instead of burning its tries on "connection refused".
    """
    rng = random.Random()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call(timeout, attempt > 1)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            details = (err.details() if hasattr(err, "details") else None) or ""
            if code not in RETRYABLE or attempt == policy.attempts or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and over_a_size_limit(details)):
                if attempt > 1 and hasattr(err, "details"):
                    raise _Exhausted(code, f"{err.details()} (after {attempt} tries)") from None
                raise
            on_retry(code, details)
            time.sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # the loop returns or raises


class _Exhausted(grpc.RpcError):
    """The last error of a call that was retried, with the number of tries in its message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

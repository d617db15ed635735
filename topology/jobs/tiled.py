"""A huge input as tiles whose results are kept in the store until the output is assembled.

The tiles are those of ``stepchain submit --tile`` (:mod:`stepsvc.client.tiles`: SIZE x SIZE cores
padded by the pipeline's halo, so the assembled output equals the untiled result byte for byte).
Each tile's cropped result is written once (conditional put) as ``tiles/<h>/<n>.npy`` in the
job's state; a worker that starts on the input lists them and sends only the missing tiles.
When every tile is there, the output is assembled from them and returned for the worker to
write once; then the worker deletes the tiles.

The input is never read whole when it need not be: a ``.npy`` input (raw H x W [x C] uint8,
the format for images larger than memory, as with ``submit --tile``) is read tile by tile with
ranged GETs -- its header first, then each padded tile's rows -- so a worker holds the tiles
in flight, not the image. A PNG, JPEG or TIFF has to be decoded whole (their pixels are not
addressable by offset); its encoded bytes are dropped once decoded. The output is assembled in
memory: it is written with one conditional put, which S3 does not offer for multipart uploads.
"""

from __future__ import annotations

import io
import threading
from concurrent import futures
from fractions import Fraction
from typing import Protocol

import numpy as np
import numpy.lib.format as npy_format
from stepchain.v1 import step_pb2

from stepsvc.client.tiles import PipelineReach, Tile, output_shape, plan_tiles
from stepsvc.frames import codec
from topology.jobs.inputs import MAX_INPUT_PIXELS, NotAnImage, array_output, decode_input, npy_bytes
from topology.jobs.manifest import Item, JobFiles, JobOptions, key_digest
from topology.jobs.store import Store

#: Bytes read first of a ``.npy`` input for its header (more when the header is longer).
NPY_HEADER_PROBE = 4096


class TileCaller(Protocol):
    """What tiling needs of a worker."""

    files: JobFiles
    options: JobOptions
    concurrency: int
    stop: threading.Event

    def call(self, request: step_pb2.ProcessRequest) -> step_pb2.ProcessResponse: ...

    def reach(self) -> PipelineReach: ...


def tile_key(prefix: str, index: int) -> str:
    return f"{prefix}{index:06d}.npy"


class Pixels(Protocol):
    """An input image whose regions can be read one at a time."""

    shape: tuple[int, ...]

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1, columns x0:x1 as H x W x C uint8."""
        ...


class InMemory:
    """A decoded image."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.shape = image.shape

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.ascontiguousarray(self.image[y0:y1, x0:x1])


class NpyObject:
    """A ``.npy`` object in the store read by ranges: each region is one ranged GET per row
    (the store merges rows lying close together into one request)."""

    def __init__(self, store: Store, key: str, offset: int, shape: tuple[int, int, int]) -> None:
        self.store, self.key, self.offset = store, key, offset
        self.shape: tuple[int, ...] = shape

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        _, width, channels = self.shape
        row = width * channels
        starts = [self.offset + y * row + x0 * channels for y in range(y0, y1)]
        parts = self.store.get_ranges(self.key, starts, [(x1 - x0) * channels] * len(starts))
        out = np.empty((y1 - y0, x1 - x0, channels), dtype=np.uint8)
        for i, part in enumerate(parts):
            if len(part) != (x1 - x0) * channels:
                raise NotAnImage(f"{self.key}: the .npy data ends before its header says")
            out[i] = np.frombuffer(part, dtype=np.uint8).reshape(x1 - x0, channels)
        return out


def open_pixels(store: Store, key: str) -> Pixels:
    """The input at `key` as :class:`Pixels`: a C-ordered uint8 ``.npy`` by ranges, anything
    else read and decoded whole (NotAnImage when it is no image)."""
    if key.lower().endswith(".npy"):
        located = _npy_layout(store, key)
        if located is not None:
            return NpyObject(store, key, *located)
    return InMemory(decode_input(key, store.get(key)))


def _npy_layout(store: Store, key: str) -> tuple[int, tuple[int, int, int]] | None:
    """The data offset and H x W x C of a ``.npy`` object read by ranges; None when it must be
    read whole (Fortran order) or is checked by the whole-object decoder (no .npy header)."""
    size = store.size(key)
    if size < 16:
        return None  # too short for a header: the decoder says what it is
    [head] = store.get_ranges(key, [0], [min(size, NPY_HEADER_PROBE)])
    data = bytes(head)
    try:
        version = npy_format.read_magic(io.BytesIO(data))
        length_bytes = 2 if version == (1, 0) else 4
        header_end = 8 + length_bytes + int.from_bytes(data[8:8 + length_bytes], "little")
        if len(data) < header_end <= size:
            [head] = store.get_ranges(key, [0], [header_end])
            data = bytes(head)
        stream = io.BytesIO(data)
        npy_format.read_magic(stream)
        read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                       else npy_format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, OSError):
        return None  # not a .npy: the decoder says so
    if fortran_order:
        return None
    if dtype != np.uint8 or len(shape) not in (2, 3) or (
            len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise NotAnImage(f"{key}: a .npy image must be uint8 H x W or H x W x C with C in "
                         f"1, 3, 4; got {dtype} {shape}")
    height, width = int(shape[0]), int(shape[1])
    channels = int(shape[2]) if len(shape) == 3 else 1
    if height * width > MAX_INPUT_PIXELS:
        raise NotAnImage(f"{key}: {height} x {width} is over {MAX_INPUT_PIXELS} pixels")
    if stream.tell() + height * width * channels > size:
        raise NotAnImage(f"{key}: the .npy object is {size} bytes, shorter than its header "
                         f"says ({height} x {width} x {channels})")
    return stream.tell(), (height, width, channels)


def process_tiled(worker: TileCaller, item: Item, source: Store) -> bytes | None:
    """The output bytes of `item` (read from `source`) sent as tiles (see the module); None
    when the worker was stopped before every tile was in the store."""
    image = open_pixels(source, item.input_key)
    reach = worker.reach()
    height, width = image.shape[0], image.shape[1]
    try:
        tiles = plan_tiles(height, width, worker.options.tile_size, reach)
    except ValueError as exc:
        raise NotAnImage(f"{item.input_key}: {exc}") from None
    store = worker.files.store
    prefix = worker.files.tiles_prefix(item.input_key)
    have = {info.key for info in store.list(prefix)}
    missing = [t for t in tiles if tile_key(prefix, t.index) not in have]
    _send(worker, item, image, reach, prefix, missing)
    del image  # a decoded input is not needed to assemble the output
    if worker.stop.is_set() and sum(1 for _ in store.list(prefix)) < len(tiles):
        return None
    out = assemble(store, prefix, tiles, output_shape(height, width, reach), reach.scale)
    return array_output(out, item.output_key, worker.options.jpeg_quality)


def _send(worker: TileCaller, item: Item, image: Pixels, reach: PipelineReach, prefix: str,
          tiles: list[Tile]) -> None:
    """Sends `tiles` of `image`, at most ``worker.concurrency`` at a time, and keeps each
    result in the store; the first failed tile fails the input (its code and message)."""
    store = worker.files.store

    def one(tile: Tile) -> None:
        if worker.stop.is_set():
            return
        request = step_pb2.ProcessRequest(
            request_id=f"{worker.files.job_id}/{key_digest(item.input_key)[:12]}/{tile.index}",
            overrides=step_pb2.Overrides(threads=worker.options.threads,
                                         passes=worker.options.passes))
        codec.write_image(request.image, image.region(tile.py0, tile.py1, tile.px0, tile.px1),
                          codec.RAW)
        result = codec.decode_image(worker.call(request).image, max_pixels=MAX_INPUT_PIXELS)
        rows, cols = tile.crop(reach.scale)
        store.put_new(tile_key(prefix, tile.index), npy_bytes(result[rows, cols]))

    with futures.ThreadPoolExecutor(max_workers=worker.concurrency,
                                    thread_name_prefix="job-tile") as pool:
        for future in [pool.submit(one, t) for t in tiles]:
            future.result()


def assemble(store: Store, prefix: str, tiles: list[Tile], shape: tuple[int, int],
             scale: Fraction) -> np.ndarray:
    """The output image from the tiles' results kept under `prefix`."""
    out: np.ndarray | None = None
    for tile in tiles:
        part = np.load(io.BytesIO(store.get(tile_key(prefix, tile.index))), allow_pickle=False)
        if out is None:
            out = np.empty((*shape, part.shape[2]), dtype=np.uint8)
        rows, cols = tile.placement(scale)
        out[rows, cols] = part
    assert out is not None  # plan_tiles gives at least one tile
    return out

"""A huge input as tiles whose results are kept in the store until the output is assembled.

The tiles are those of ``stepchain submit --tile`` (:mod:`stepsvc.client.tiles`: SIZE x SIZE cores
padded by the pipeline's halo, so the assembled output equals the untiled result byte for byte).
Each tile's cropped result is written once (conditional put) as ``tiles/<h>/<n>.npy`` in the
job's state; a worker that starts on the input lists them and sends only the missing tiles.
When every tile is there, the output is assembled from them and returned for the worker to
write once; then the worker deletes the tiles.
"""

from __future__ import annotations

import io
import threading
from concurrent import futures
from fractions import Fraction
from typing import Protocol

import numpy as np
from stepchain.v1 import step_pb2

from stepsvc.client.tiles import PipelineReach, Tile, output_shape, plan_tiles
from stepsvc.frames import codec
from topology.jobs.inputs import MAX_INPUT_PIXELS, NotAnImage, array_output, decode_input, npy_bytes
from topology.jobs.manifest import Item, JobFiles, JobOptions, key_digest
from topology.jobs.store import Store


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


def process_tiled(worker: TileCaller, item: Item, data: bytes) -> bytes | None:
    """The output bytes of `item` sent as tiles (see the module); None when the worker was
    stopped before every tile was in the store."""
    image = decode_input(item.input_key, data)
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

    def one(tile: Tile) -> None:
        if worker.stop.is_set():
            return
        request = step_pb2.ProcessRequest(
            request_id=f"{worker.files.job_id}/{key_digest(item.input_key)[:12]}/{tile.index}",
            overrides=step_pb2.Overrides(threads=worker.options.threads,
                                         passes=worker.options.passes))
        codec.write_image(request.image, np.ascontiguousarray(
            image[tile.py0:tile.py1, tile.px0:tile.px1]), codec.RAW)
        result = codec.decode_image(worker.call(request).image, max_pixels=MAX_INPUT_PIXELS)
        rows, cols = tile.crop(reach.scale)
        store.put_new(tile_key(prefix, tile.index), npy_bytes(result[rows, cols]))

    with futures.ThreadPoolExecutor(max_workers=worker.concurrency,
                                    thread_name_prefix="job-tile") as pool:
        for future in [pool.submit(one, t) for t in missing]:
            future.result()  # the first failed tile fails the input (its code and message)
    if worker.stop.is_set() and sum(1 for _ in store.list(prefix)) < len(tiles):
        return None
    out = assemble(store, prefix, tiles, output_shape(height, width, reach), reach.scale)
    return array_output(out, item.output_key, worker.options.jpeg_quality)


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

"""Splitting an image into padded tiles and putting the results back: pure functions.

A pipeline's halo is the sum of its kernels' halos (:mod:`native.halo`) along the route, each
measured in the pipeline's input pixels; with branches, the largest over every route from the
entry step. A tile is the image cut into SIZE x SIZE cores, each padded by the halo on every
side where the image goes on; the pipeline processes the padded tile as an ordinary request,
and the core of its result, cropped out, equals the same region of the untiled result byte for
byte (the padding absorbs every kernel's reach; at the image's own edges the kernels replicate
the border exactly as they do on the whole image).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from native.halo import NotTileable, halo_in_input_pixels, kernel_reach
from native.registry import EXEC_PARAM_NAMES
from stepsvc.step.config import PipelineConfig


@dataclass(frozen=True)
class PipelineReach:
    """What a tile of this pipeline needs: `halo` input pixels per side, offsets and halos in
    multiples of `align` (downscales read whole blocks), output = input x `scale`."""

    halo: int
    scale: Fraction
    align: int


def pipeline_reach(config: PipelineConfig) -> PipelineReach:
    """The halo, scale and alignment of every route from `config`'s step (the entry step).

    Raises NotTileable naming the step whose result is not local (classify, resize to a fixed
    size or by a non-integer factor) or when two routes scale the image differently.
    """
    steps = {s.id: s for s in config.steps}
    halos: list[int] = []
    scales: set[Fraction] = set()
    align = 1
    for route in _routes(config):
        halo, scale = 0, Fraction(1)
        for step_id in route:
            step = steps[step_id]
            params = {k: v for k, v in step.params.items() if k not in EXEC_PARAM_NAMES}
            try:
                reach = kernel_reach(step.type, params)
            except NotTileable as exc:
                raise NotTileable(f"step {step.id} ({step.type}): {exc}") from None
            halo += halo_in_input_pixels(reach.halo, scale)
            scale *= reach.scale
            # every stage's offsets must be whole pixels: a downscale by n needs multiples of n
            align = math.lcm(align, scale.denominator)
        halos.append(halo)
        scales.add(scale)
    if len(scales) > 1:
        raise NotTileable(
            f"routes through this pipeline scale the image differently "
            f"({', '.join(str(s) for s in sorted(scales))}); a tile's size would depend on "
            "its route")
    return PipelineReach(halo=_round_up(max(halos), align), scale=scales.pop(), align=align)


def _routes(config: PipelineConfig) -> Iterator[list[int]]:
    """Every route from config.step_id to a last step (the graph is acyclic: validated)."""
    steps = {s.id: s for s in config.steps}

    def walk(step_id: int, path: list[int]) -> Iterator[list[int]]:
        path = [*path, step_id]
        successors = [n for n in steps[step_id].next_step if n in steps]
        if not successors:
            yield path
        for nxt in successors:
            yield from walk(nxt, path)

    yield from walk(config.step_id, [])


@dataclass(frozen=True)
class Tile:
    """One tile: its core (what it contributes to the output) and the padded region sent."""

    index: int
    #: Core rows y0:y1 and columns x0:x1 of the input image.
    y0: int
    y1: int
    x0: int
    x1: int
    #: The padded region sent through the pipeline (the core plus up to `halo` on every side).
    py0: int
    py1: int
    px0: int
    px1: int

    def crop(self, scale: Fraction) -> tuple[slice, slice]:
        """Where the core lies inside the pipeline's output for this tile."""
        top, left = _exact((self.y0 - self.py0) * scale), _exact((self.x0 - self.px0) * scale)
        return (slice(top, top + _exact((self.y1 - self.y0) * scale)),
                slice(left, left + _exact((self.x1 - self.x0) * scale)))

    def placement(self, scale: Fraction) -> tuple[slice, slice]:
        """Where the core's output goes in the assembled output image."""
        return (slice(_exact(self.y0 * scale), _exact(self.y1 * scale)),
                slice(_exact(self.x0 * scale), _exact(self.x1 * scale)))


def plan_tiles(height: int, width: int, size: int, reach: PipelineReach) -> list[Tile]:
    """The tiles of a height x width image: SIZE x SIZE cores (rounded up to `reach.align`) in
    row-major order, the last row and column smaller, each padded by the halo.

    Raises ValueError when the image's sides are not multiples of the alignment a downscale
    needs (the untiled result then maps pixels by a factor that is not the integer one).
    """
    if size < 1:
        raise ValueError(f"--tile must be at least 1 pixel, got {size}")
    align = reach.align
    if height % align or width % align:
        raise ValueError(
            f"a {width}x{height} image cannot be tiled exactly through this pipeline: it "
            f"downscales by {align}, so both sides must be multiples of {align}")
    size = _round_up(size, align)
    tiles: list[Tile] = []
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            y1, x1 = min(y0 + size, height), min(x0 + size, width)
            tiles.append(Tile(
                index=len(tiles), y0=y0, y1=y1, x0=x0, x1=x1,
                py0=max(0, y0 - reach.halo), py1=min(height, y1 + reach.halo),
                px0=max(0, x0 - reach.halo), px1=min(width, x1 + reach.halo)))
    return tiles


def output_shape(height: int, width: int, reach: PipelineReach) -> tuple[int, int]:
    """(height, width) of the assembled output."""
    return _exact(height * reach.scale), _exact(width * reach.scale)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _exact(value: Fraction | int) -> int:
    fraction = Fraction(value)
    if fraction.denominator != 1:
        raise ValueError(f"tile geometry is not whole pixels ({fraction}); the tile plan and "
                         "the pipeline's scale disagree")
    return int(fraction)

"""How far each kernel reaches: the halo a tile needs for its centre to equal the untiled run.

Next to the kernel registry because it is a property of each kernel and its parameters: an
output pixel of ``gaussian_blur`` depends on input pixels up to ``radius`` away, so a tile
padded by that many pixels of its neighbours gives exactly the untiled result once the padding
is cropped. ``stepchain submit --tile`` adds these up along a pipeline's route.

Declared per kernel (in that kernel's input pixels):

* identity, grayscale, brightness: 0 (pointwise);
* gaussian_blur, sharpen: the blur radius (default ``ceil(3 sigma)``);
* edges: 1 (3 x 3 Sobel);
* deblur: ``2 * radius * iterations`` (each Richardson-Lucy iteration blurs twice: G(u) and
  G(d / G(u)));
* resize: its interpolation support (bilinear 1, bicubic 2) plus one pixel of margin, scaled to
  input pixels; exact only for integer factors (``scale`` 2, 3, ... or 1/2, 1/3, ...), because
  only then do tile edges fall on output pixel edges;
* classify: not local at all: its labels measure the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from native.kernels import _radius, _sigma_from
from native.registry import canonical_name, validate_params

#: The largest denominator tried when reading a resize scale as a fraction (0.5 -> 1/2).
MAX_FACTOR = 64
#: Support of resize's interpolation, in input pixels, per method.
RESIZE_SUPPORT = {"bilinear": 1, "bicubic": 2}
#: Default sigma of gaussian_blur when neither sigma nor radius is given (native.kernels).
BLUR_DEFAULT_SIGMA = 2.0


class NotTileable(ValueError):
    """A kernel whose result is not local: tiles would not give the untiled result."""


@dataclass(frozen=True)
class Reach:
    """What one kernel needs from a tile: `halo` input pixels on every side, and how its output
    size relates to its input (`scale`, exact; 1 for every kernel but resize)."""

    halo: int
    scale: Fraction = Fraction(1)


def kernel_reach(kernel: str, params: dict[str, Any] | None = None) -> Reach:
    """The halo and scale of `kernel` with `params`; NotTileable says why it has none."""
    name = canonical_name(kernel)
    p = validate_params(name, params or {})
    if name in ("identity", "grayscale", "brightness"):
        return Reach(0)
    if name == "edges":
        return Reach(1)
    if name == "gaussian_blur":
        return Reach(_radius(p, _sigma_from(p, BLUR_DEFAULT_SIGMA)))
    if name == "sharpen":
        return Reach(_radius(p, _sigma_from(p, 1.0)))
    if name == "deblur":
        return Reach(2 * _radius(p, _sigma_from(p, 1.5)) * int(p["iterations"]))
    if name == "resize":
        return _resize_reach(p)
    if name == "classify":
        raise NotTileable(
            "classify measures the whole image (sharpness, exposure, colour) and its labels "
            "choose the route; each tile would be measured on its own and could take another "
            "route than the image, so a tiled result would not equal the untiled one")
    raise NotTileable(f"{name} declares no halo")  # a new kernel must say how far it reaches


def _resize_reach(p: dict[str, Any]) -> Reach:
    if "width" in p or "height" in p:
        raise NotTileable(
            "resize to a fixed width/height scales by a factor that depends on the whole "
            "image's size; give it an integer scale (2, 3, 0.5, ...) to tile it")
    scale = float(p.get("scale", 2.0))
    factor = Fraction(scale).limit_denominator(MAX_FACTOR)
    if float(factor) != scale or (factor.numerator != 1 and factor.denominator != 1):
        raise NotTileable(
            f"resize by scale {scale:g} cannot be tiled exactly: only integer factors (2, 3, "
            "... or 0.5, 1/3, ...) put every tile edge on an output pixel edge")
    support = RESIZE_SUPPORT[str(p["method"])] + 1
    # A downscale by n reads n input pixels per output pixel: its support spans n times more.
    return Reach(support * factor.denominator, factor)


def halo_in_input_pixels(halo: int, scale_before: Fraction) -> int:
    """A step's halo (in its own input pixels) measured in the pipeline's input pixels, where
    everything before it scaled the image by `scale_before`."""
    return math.ceil(Fraction(halo) / scale_before)

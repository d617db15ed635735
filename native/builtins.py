"""The nine built-in kernels' specifications: names, aliases, parameters, halos, output shapes.

Their functions live in :mod:`native.kernels`; :mod:`native.registry` joins the two. Halos are
declared per kernel, in that kernel's input pixels (an output pixel of ``gaussian_blur``
depends on input pixels up to ``radius`` away, so a tile padded by that many pixels of its
neighbours gives exactly the untiled result once the padding is cropped):

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
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from native.spec import MAX_PIXELS, MAX_SIDE, KernelSpec, NotTileable, Param, Reach, Shape

#: The largest denominator tried when reading a resize scale as a fraction (0.5 -> 1/2).
MAX_FACTOR = 64
#: Support of resize's interpolation, in input pixels, per method.
RESIZE_SUPPORT = {"bilinear": 1, "bicubic": 2}
#: Default sigma of gaussian_blur when neither sigma nor radius is given.
BLUR_DEFAULT_SIGMA = 2.0


def check_size(h: int, w: int, *, name: str = "image") -> None:
    """Rejects zero-sized and absurdly large images before anything is allocated."""
    if h < 1 or w < 1:
        raise ValueError(f"{name} is empty ({h}x{w}); width and height must be >= 1")
    if h > MAX_SIDE or w > MAX_SIDE or h * w > MAX_PIXELS:
        raise ValueError(
            f"{name} is {w}x{h} = {w * h} pixels; the limit is {MAX_SIDE} per side and "
            f"{MAX_PIXELS} pixels")


def blur_sigma(p: Mapping[str, Any], default: float) -> float:
    """A Gaussian's sigma from validated params: `sigma`, else from `radius`, else `default`."""
    if p.get("sigma"):
        return float(p["sigma"])
    if p.get("radius"):
        # OpenCV's rule for a kernel of size 2r+1 given without sigma
        return 0.3 * (p["radius"] - 1) + 0.8
    return default


def blur_radius(p: Mapping[str, Any], sigma: float) -> int:
    """A Gaussian's half-width: `radius` when given, else ceil(3 sigma)."""
    return int(p["radius"]) if p.get("radius") else max(1, math.ceil(3.0 * sigma))


def resize_shape(h: int, w: int, p: Mapping[str, Any]) -> tuple[int, int]:
    """Output (height, width) of resize for validated params `p` on an h x w input."""
    if "width" in p or "height" in p:
        ow = p.get("width") or max(1, round(w * p["height"] / h))
        oh = p.get("height") or max(1, round(h * p["width"] / w))
    else:
        scale = p.get("scale", 2.0)
        oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    check_size(oh, ow, name="resize output")
    return int(oh), int(ow)


def _resize_output(shape: Shape, p: Mapping[str, Any]) -> Shape:
    return (*resize_shape(shape[0], shape[1], p), shape[2])


def _resize_reach(p: Mapping[str, Any]) -> Reach:
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


def _resize_check(p: dict[str, Any]) -> None:
    if "scale" in p and ("width" in p or "height" in p):
        raise ValueError("resize takes either scale or width/height, not both")


def _classify_check(p: dict[str, Any]) -> None:
    if p["dark_threshold"] >= p["bright_threshold"]:
        raise ValueError("classify.dark_threshold must be below classify.bright_threshold")


def _sigma(default: float | None, doc: str) -> Param:
    return Param("sigma", float, default, doc, 0.0, 100.0, exclusive_minimum=True)


_RADIUS = Param("radius", int, None, "kernel half-width in pixels (default ceil(3 sigma))", 1, 300)

BUILTINS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("identity", "copies the image; measures transport overhead", halo=0),
        KernelSpec("grayscale", "ITU-R BT.601 luma; returns one channel", halo=0,
                   output_shape=lambda shape, p: (shape[0], shape[1], 1)),
        KernelSpec(
            "gaussian_blur",
            "separable Gaussian blur, replicate border",
            (_sigma(None, "standard deviation in pixels (default 2, or from radius)"), _RADIUS),
            aliases=("blur",),
            halo=lambda p: blur_radius(p, blur_sigma(p, BLUR_DEFAULT_SIGMA)),
        ),
        KernelSpec(
            "sharpen",
            "unsharp mask: img + amount * (img - gaussian(img, sigma))",
            (Param("amount", float, 1.0, "strength of the mask", 0.0, 20.0),
             _sigma(1.0, "blur sigma of the mask"), _RADIUS),
            halo=lambda p: blur_radius(p, blur_sigma(p, 1.0)),
        ),
        KernelSpec("edges", "Sobel gradient magnitude per channel (alpha kept)", halo=1),
        KernelSpec(
            "brightness",
            "out = ((in * factor) - 128) * contrast + 128, clamped; alpha kept",
            (Param("factor", float, 1.2, "brightness multiplier", 0.0, 16.0),
             Param("contrast", float, 1.0, "contrast around mid-grey", 0.0, 16.0)),
            halo=0,
        ),
        KernelSpec(
            "resize",
            "bilinear or bicubic resampling by scale or to width/height",
            (Param("scale", float, None, "scale factor for both sides (default 2 when no size)",
                   0.0, 16.0, exclusive_minimum=True),
             Param("width", int, None, "output width (height keeps the aspect unless given)", 1,
                   MAX_SIDE),
             Param("height", int, None, "output height (width keeps the aspect unless given)", 1,
                   MAX_SIDE),
             Param("method", str, "bilinear", "interpolation", choices=("bilinear", "bicubic"))),
            aliases=("upscaling",),
            halo=_resize_reach, resizes=True, output_shape=_resize_output, check=_resize_check,
        ),
        KernelSpec(
            "deblur",
            "Richardson-Lucy deconvolution with a Gaussian PSF",
            (_sigma(1.5, "PSF standard deviation in pixels"), _RADIUS,
             Param("iterations", int, 10, "Richardson-Lucy iterations", 1, 500)),
            halo=lambda p: 2 * blur_radius(p, blur_sigma(p, 1.5)) * int(p["iterations"]),
        ),
        KernelSpec(
            "classify",
            "measures sharpness, exposure and colourfulness and returns labels; image unchanged",
            (Param("blur_threshold", float, 100.0, "variance of Laplacian below this is 'blurry'",
                   0.0, 1e9),
             Param("dark_threshold", float, 60.0, "mean luma below this is 'dark'", 0.0, 255.0),
             Param("bright_threshold", float, 190.0, "mean luma above this is 'bright'", 0.0, 255.0),
             Param("color_threshold", float, 10.0, "colourfulness below this is 'grayscale'", 0.0,
                   1000.0)),
            aliases=("classifier", "detection"),
            output="measure",
            not_tileable=(
                "classify measures the whole image (sharpness, exposure, colour) and its labels "
                "choose the route; each tile would be measured on its own and could take another "
                "route than the image, so a tiled result would not equal the untiled one"),
            check=_classify_check,
        ),
    )
}

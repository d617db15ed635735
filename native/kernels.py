"""Python API of the native kernels: validate, allocate, call the C binding (GIL released).

Every function takes a NumPy ``uint8`` array of shape H x W x C (C in 1, 3, 4; H x W is read as
one channel; non-contiguous views are copied once) and returns a new array. Keyword arguments
``threads``, ``schedule`` (``"dynamic"`` or with a chunk in rows, ``"dynamic,16"``; or
``chunk=16``) and ``passes`` apply to this call only. ``threads`` is the largest
OpenMP team the call may use: an image too small to give each thread ~64K samples of work runs
on fewer threads (results are identical for every thread count and schedule either way).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from native import _native  # type: ignore[attr-defined]
from native.builtins import BUILTINS, blur_radius, blur_sigma, check_size, resize_shape
from native.spec import exec_args

Image = np.ndarray


def as_image(img: Any, *, name: str = "image") -> np.ndarray:
    """Returns `img` as a C-contiguous H x W x C uint8 array or raises ValueError saying why."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"{name} must be H x W x C (2 or 3 dimensions), got {img.ndim} dimensions")
    h, w, c = img.shape
    if c not in (1, 3, 4):
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got {c}")
    check_size(h, w, name=name)
    return np.ascontiguousarray(img)


def _kernel_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` without ``out`` (the output buffer is not a kernel parameter)."""
    return {k: v for k, v in params.items() if k != "out"} if "out" in params else params


def _destination(out: Any, shape: tuple[int, int, int]) -> Image:
    """A new output array, or `out` (the caller's buffer, e.g. an outgoing message's pixels)
    after checking it is a writable C-contiguous uint8 array of exactly `shape`."""
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != shape
            or not out.flags.c_contiguous or not out.flags.writeable):
        got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise ValueError(f"out must be a writable C-contiguous uint8 array of shape {shape}, "
                         f"got {got}")
    return out


def _simple(fn_name: str, img: Any, out_c: int | None, params: dict[str, Any], *extra: Any) -> Image:
    src = as_image(img)
    h, w, c = src.shape
    out = params.get("out")
    p = BUILTINS[fn_name].validate(_kernel_params(params))
    dst = _destination(out, (h, w, out_c or c))
    getattr(_native, fn_name)(src, dst, h, w, c, *exec_args(p), *extra)
    return dst


def identity(img: Image, **params: Any) -> Image:
    """Returns a copy of `img` (measures transport overhead in a pipeline)."""
    return _simple("identity", img, None, params)


def grayscale(img: Image, **params: Any) -> Image:
    """BT.601 luma (15-bit fixed point, bit-identical to OpenCV 5's RGB2GRAY); returns H x W x 1."""
    return _simple("grayscale", img, 1, params)


def edges(img: Image, **params: Any) -> Image:
    """Sobel gradient magnitude per colour channel, clamped to 255; alpha kept."""
    return _simple("edges", img, None, params)


def brightness(img: Image, **params: Any) -> Image:
    """out = ((in * factor) - 128) * contrast + 128, clamped; alpha kept."""
    p = BUILTINS["brightness"].validate(_kernel_params(params))
    return _simple("brightness", img, None, params, p["factor"], p["contrast"])


def gaussian_blur(img: Image, **params: Any) -> Image:
    """Separable Gaussian blur with replicate border; `sigma` and/or `radius`.

    Radius defaults to ceil(3 sigma); sigma alone defaults to 2, radius alone gives OpenCV's
    sigma = 0.3 (radius - 1) + 0.8. Matches cv2.GaussianBlur(ksize=2r+1, BORDER_REPLICATE)
    within 1."""
    p = BUILTINS["gaussian_blur"].validate(_kernel_params(params))
    sigma = blur_sigma(p, 2.0)
    return _simple("gaussian_blur", img, None, params, sigma, blur_radius(p, sigma))


def sharpen(img: Image, **params: Any) -> Image:
    """Unsharp mask: img + amount * (img - gaussian(img, sigma)), clamped."""
    p = BUILTINS["sharpen"].validate(_kernel_params(params))
    sigma = float(p["sigma"])
    return _simple("sharpen", img, None, params, float(p["amount"]), sigma, blur_radius(p, sigma))


def deblur(img: Image, **params: Any) -> Image:
    """Richardson-Lucy deconvolution with a Gaussian PSF of `sigma` for `iterations` rounds.

    Per channel in float: u0 = img; u <- u * G(img / max(G(u), 1e-6)) with G the normalised
    Gaussian (replicate border); the result is rounded and clamped to uint8."""
    p = BUILTINS["deblur"].validate(_kernel_params(params))
    sigma = float(p["sigma"])
    return _simple("deblur", img, None, params, sigma, blur_radius(p, sigma), int(p["iterations"]))


def resize(img: Image, **params: Any) -> Image:
    """Bilinear or bicubic (a = -0.75) resampling with pixel-centre alignment, like OpenCV."""
    src = as_image(img)
    h, w, c = src.shape
    out = params.get("out")
    p = BUILTINS["resize"].validate(_kernel_params(params))
    oh, ow = resize_shape(h, w, p)
    dst = _destination(out, (oh, ow, c))
    method = 0 if p["method"] == "bilinear" else 1
    _native.resize(src, dst, h, w, c, *exec_args(p), oh, ow, method)
    return dst


def classify(img: Image, **params: Any) -> dict[str, Any]:
    """Measures the image and labels it; the image itself is not changed.

    Returns ``{"labels": {"sharpness": "blurry"|"sharp", "exposure": "dark"|"normal"|"bright",
    "color": "grayscale"|"color"}, "measures": {"laplacian_var", "mean_luma", "colorfulness"}}``.
    """
    src = as_image(img)
    h, w, c = src.shape
    p = BUILTINS["classify"].validate(_kernel_params(params))
    lap_var, mean_luma, colorfulness = _native.classify(src, h, w, c, *exec_args(p))
    exposure = ("dark" if mean_luma < p["dark_threshold"]
                else "bright" if mean_luma > p["bright_threshold"] else "normal")
    return {
        "labels": {
            "sharpness": "blurry" if lap_var < p["blur_threshold"] else "sharp",
            "exposure": exposure,
            "color": "grayscale" if colorfulness < p["color_threshold"] else "color",
        },
        "measures": {"laplacian_var": lap_var, "mean_luma": mean_luma,
                     "colorfulness": colorfulness},
    }


#: The function of each built-in kernel, by canonical name (the registry joins them to BUILTINS).
FUNCTIONS = {
    "identity": identity, "grayscale": grayscale, "gaussian_blur": gaussian_blur,
    "sharpen": sharpen, "edges": edges, "brightness": brightness, "resize": resize,
    "deblur": deblur, "classify": classify,
}

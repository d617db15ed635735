"""Two stepchain kernels on OpenCV (``opencv-python-headless``).

* ``acme.clahe``: contrast-limited adaptive histogram equalisation of lightness (L of Lab for
  colour, the channel itself for grey; alpha kept). Not tileable: CLAHE lays its grid over the
  whole image, so a tile would be equalised by other cells than the image.
* ``acme.denoise``: edge-preserving bilateral filter, replicate border; an output pixel reads
  input pixels up to `radius` away, which is its halo for tiling.

OpenCV releases the GIL inside its calls. Its thread pool is process-wide (``cv2.setNumThreads``
would change every concurrent call), so these kernels leave it alone and do not use `threads`;
the step's ``OMP_NUM_THREADS`` does not bound them either (docs/plugins.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from native import KernelSpec, Param


def _lightness_apply(img: np.ndarray, out: np.ndarray, fn: object) -> None:
    """Applies `fn` (uint8 H x W -> H x W) to lightness, keeping colour and alpha."""
    c = img.shape[2]
    if c == 1:
        out[:, :, 0] = fn(img[:, :, 0])  # type: ignore[operator]
        return
    lab = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = fn(lab[:, :, 0])  # type: ignore[operator]
    out[:, :, :3] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if c == 4:
        out[:, :, 3] = img[:, :, 3]


def clahe(img: np.ndarray, *, out: np.ndarray | None = None, threads: int, schedule: str,
          chunk: int | None, passes: int, clip_limit: float, grid: int) -> np.ndarray:
    """CLAHE on lightness with a `grid` x `grid` grid of cells and `clip_limit`."""
    dst = out if out is not None else np.empty_like(img)
    equaliser = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid))
    for _ in range(passes):
        _lightness_apply(img, dst, equaliser.apply)
    return dst


def denoise(img: np.ndarray, *, out: np.ndarray | None = None, threads: int, schedule: str,
            chunk: int | None, passes: int, radius: int, sigma_color: float,
            sigma_space: float) -> np.ndarray:
    """Bilateral filter of diameter 2 radius + 1 (colour channels; alpha kept)."""
    dst = out if out is not None else np.empty_like(img)
    c = img.shape[2]
    colour = np.ascontiguousarray(img[:, :, :3] if c == 4 else img)
    for _ in range(passes):
        filtered = cv2.bilateralFilter(colour, 2 * radius + 1, sigma_color, sigma_space,
                                       borderType=cv2.BORDER_REPLICATE)
        dst[:, :, :min(c, 3)] = filtered.reshape(img.shape[0], img.shape[1], min(c, 3))
    if c == 4:
        dst[:, :, 3] = img[:, :, 3]
    return dst


CLAHE = KernelSpec(
    name="acme.clahe",
    doc="CLAHE of lightness (OpenCV); colour and alpha kept",
    params=(Param("clip_limit", float, 2.0, "contrast limit per cell", 0.1, 40.0),
            Param("grid", int, 8, "cells per side of the equalisation grid", 1, 64)),
    not_tileable=("acme.clahe equalises cells of a grid laid over the whole image; a tile "
                  "would be cut into other cells, so tiles would not give the untiled result"),
    function=clahe,
)

DENOISE = KernelSpec(
    name="acme.denoise",
    doc="edge-preserving bilateral filter, replicate border (OpenCV); alpha kept",
    params=(Param("radius", int, 3, "filter radius in pixels (diameter 2 radius + 1)", 1, 15),
            Param("sigma_color", float, 30.0, "range sigma: how different a colour may be "
                  "and still be averaged", 0.0, 255.0, exclusive_minimum=True),
            Param("sigma_space", float, 3.0, "spatial sigma in pixels", 0.0, 50.0,
                  exclusive_minimum=True)),
    aliases=("acme.bilateral",),
    halo=lambda p: int(p["radius"]),
    function=denoise,
)

"""Two stepchain kernels in pure NumPy: a plugin needs nothing but a KernelSpec and a function.

* ``acme.sepia``: sepia toning (a 3 x 3 colour matrix per pixel), blended by `strength`;
  pointwise, so it tiles with a halo of 0. Alpha is kept; a 1-channel image stays 1 channel
  (the matrix's luma row).
* ``acme.contrast``: measures the spread of luma (its standard deviation) and labels the image
  ``contrast=flat`` or ``contrast=normal``; the image passes through. A step can route on it
  (``"route": {"flat": 2}``).

NumPy releases the GIL inside its array loops but not between them: ``releases_gil=False``
says so honestly (docs/plugins.md shows what that costs a step server).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from native import KernelSpec, Param

#: Rows: output R, G, B from input R, G, B (the classic sepia matrix).
SEPIA_MATRIX = np.array([[0.393, 0.769, 0.189],
                         [0.349, 0.686, 0.168],
                         [0.272, 0.534, 0.131]], dtype=np.float32)
#: BT.601 luma weights, for 1-channel images and the contrast measure.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sepia(img: np.ndarray, *, out: np.ndarray | None = None, threads: int, schedule: str,
          chunk: int | None, passes: int, strength: float) -> np.ndarray:
    """Sepia toning: out = (1 - strength) * img + strength * (M @ rgb), rounded and clamped."""
    c = img.shape[2]
    dst = out if out is not None else np.empty_like(img)
    src = img
    for _ in range(passes):  # the same result every pass: `passes` only makes it heavier
        if c == 1:
            toned = src.astype(np.float32)  # grey in, grey out: the matrix keeps grey grey
        else:
            toned = src[:, :, :3].astype(np.float32) @ SEPIA_MATRIX.T
        mixed = (1.0 - strength) * src[:, :, :min(c, 3)] + strength * toned
        np.clip(mixed + 0.5, 0, 255, out=mixed)
        dst[:, :, :min(c, 3)] = mixed.astype(np.uint8)
        if c == 4:
            dst[:, :, 3] = src[:, :, 3]
    return dst


def contrast(img: np.ndarray, *, threads: int, schedule: str, chunk: int | None, passes: int,
             flat_below: float) -> dict[str, Any]:
    """Labels ``contrast`` as ``flat`` when luma's standard deviation is below `flat_below`."""
    rgb = img[:, :, :3].astype(np.float32)
    luma = rgb[:, :, 0] if img.shape[2] == 1 else rgb @ LUMA
    spread = float(luma.std())
    return {"labels": {"contrast": "flat" if spread < flat_below else "normal"},
            "measures": {"luma_std": spread}}


SEPIA = KernelSpec(
    name="acme.sepia",
    doc="sepia toning blended by strength (NumPy); alpha kept",
    params=(Param("strength", float, 1.0, "0 keeps the image, 1 is full sepia", 0.0, 1.0),),
    halo=0,
    releases_gil=False,
    function=sepia,
)

CONTRAST = KernelSpec(
    name="acme.contrast",
    doc="labels contrast=flat|normal from the spread of luma (NumPy); image unchanged",
    params=(Param("flat_below", float, 40.0, "luma standard deviation below this is 'flat'",
                  0.0, 255.0),),
    output="measure",
    not_tileable="acme.contrast measures the whole image; a tile's spread is not the image's",
    releases_gil=False,
    function=contrast,
)

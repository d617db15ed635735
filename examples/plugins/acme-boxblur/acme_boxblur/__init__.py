"""``acme.box_blur``: a C/OpenMP stepchain plugin following the built-ins' conventions.

The kernel (src/box_blur.c) uses ``stepchain/kernel.h``'s ``sc_parallel_rows``: this call's
`threads` and `schedule` only, no process-global OpenMP state; the binding (src/binding.c)
uses ``stepchain/python.h`` and releases the GIL while it computes, so concurrent requests of a
step server overlap as they do for the built-ins.
"""

from __future__ import annotations

import numpy as np

from acme_boxblur import _boxblur  # type: ignore[attr-defined]
from native import KernelSpec, Param, exec_args


def box_blur(img: np.ndarray, *, out: np.ndarray | None = None, threads: int, schedule: str,
             chunk: int | None, passes: int, radius: int) -> np.ndarray:
    """Mean of the (2 radius + 1)^2 window, replicate border, rounded to nearest."""
    h, w, c = img.shape
    dst = out if out is not None else np.empty_like(img)
    ex = exec_args({"threads": threads, "schedule": schedule, "chunk": chunk, "passes": passes})
    _boxblur.box_blur(img, dst, h, w, c, h, w, c, *ex, radius)
    return dst


BOX_BLUR = KernelSpec(
    name="acme.box_blur",
    doc="box blur: mean of the (2 radius + 1)^2 window, replicate border (C/OpenMP)",
    params=(Param("radius", int, 2, "half-width of the window in pixels", 1, 100),),
    aliases=("acme.box",),
    halo=lambda p: int(p["radius"]),
    function=box_blur,
)

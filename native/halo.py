"""How far each kernel reaches: the halo a tile needs for its centre to equal the untiled run.

A property of each kernel and its parameters, declared in its specification
(:attr:`native.spec.KernelSpec.halo`; the built-ins' in :mod:`native.builtins`), for plugins
the same way. ``stepchain submit --tile`` adds these up along a pipeline's route and refuses,
with the kernel's own reason, a pipeline holding a kernel that is not tileable.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from native.registry import entry
from native.spec import NotTileable, Reach

__all__ = ["NotTileable", "Reach", "halo_in_input_pixels", "kernel_reach"]


def kernel_reach(kernel: str, params: dict[str, Any] | None = None) -> Reach:
    """The halo and scale of `kernel` with `params`; NotTileable says why it has none."""
    spec = entry(kernel).spec
    return spec.reach(spec.validate(params or {}))


def halo_in_input_pixels(halo: int, scale_before: Fraction) -> int:
    """A step's halo (in its own input pixels) measured in the pipeline's input pixels, where
    everything before it scaled the image by `scale_before`."""
    return math.ceil(Fraction(halo) / scale_before)

"""stepchain's native C/OpenMP image kernels.

``native.grayscale(img, threads=2)``, ``native.gaussian_blur(img, sigma=3.0)``, ... and
``native.run(name, img, **params)`` by canonical name or alias. See :mod:`native.registry` for
every kernel's parameters.

Importing the package makes OpenMP's idle threads sleep instead of spin (``OMP_WAIT_POLICY``
defaults to ``PASSIVE`` here unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set; it takes
effect when the OpenMP runtime loads with the kernels). libgomp's default spins idle team
threads for a while after each region; on a node with more runnable threads than cores the
spinning threads and the team's final barrier fight other processes for the cores, and a
2-thread call that takes 0.2 ms on its own took 30-80 ms on this project's loaded 2-core VM
(with PASSIVE: 0.2 ms). Set ``OMP_WAIT_POLICY=ACTIVE`` for dedicated cores.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from native.kernels import (
    as_image,
    brightness,
    check_size,
    classify,
    deblur,
    edges,
    gaussian_blur,
    grayscale,
    identity,
    output_kind,
    resize,
    resize_shape,
    run,
    sharpen,
)
from native.registry import KERNELS, canonical_name, validate_params

__all__ = [
    "KERNELS", "as_image", "brightness", "canonical_name", "check_size", "classify", "deblur",
    "edges", "gaussian_blur", "grayscale", "identity", "output_kind", "resize", "resize_shape",
    "run", "sharpen", "validate_params",
]

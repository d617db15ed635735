"""stepchain's native C/OpenMP image kernels.

``native.grayscale(img, threads=2)``, ``native.gaussian_blur(img, sigma=3.0)``, ... and
``native.run(name, img, **params)`` by canonical name or alias. See :mod:`native.registry` for
every kernel's parameters.
"""

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

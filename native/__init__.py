"""stepchain's image kernels: the native C/OpenMP built-ins and the installed plugins.

``native.grayscale(img, threads=2)``, ``native.gaussian_blur(img, sigma=3.0)``, ... and
``native.run(name, img, **params)`` by canonical name or alias, built-in or plugin
(``native.run("acme.denoise", img)``). :mod:`native.registry` lists every kernel and its
parameters; :mod:`native.spec` holds the public specification types a plugin is written with
(:class:`KernelSpec`, :class:`Param`, :class:`Reach`), and :func:`get_include` the folder of
the C headers a C/OpenMP plugin builds against (docs/plugins.md).

Importing the package makes OpenMP's idle threads sleep instead of spin (``OMP_WAIT_POLICY``
defaults to ``PASSIVE`` here unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set; it takes
effect when the OpenMP runtime loads with the kernels). libgomp's default spins idle team
threads for a while after each region; on a node with more runnable threads than cores the
spinning threads and the team's final barrier fight other processes for the cores, and a
2-thread call that takes 0.2 ms on its own took 30-80 ms on this project's loaded 2-core VM
(with PASSIVE: 0.2 ms). Set ``OMP_WAIT_POLICY=ACTIVE`` for dedicated cores.
"""

import os
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from native.builtins import BUILTINS, check_size, resize_shape
from native.dispatch import PluginError, output_kind, output_shape, run
from native.kernels import (
    as_image,
    brightness,
    classify,
    deblur,
    edges,
    gaussian_blur,
    grayscale,
    identity,
    resize,
    sharpen,
)
from native.registry import canonical_name, entries, failures, load_plugins, validate_params
from native.spec import EXEC_PARAMS, KernelSpec, NotTileable, Param, Reach, Shape, exec_args


def get_include() -> str:
    """The folder holding ``stepchain/kernel.h`` and ``stepchain/python.h``, the C headers a
    C/OpenMP plugin includes (pass it to setuptools' ``include_dirs``, as NumPy's is)."""
    return str(Path(__file__).resolve().parent / "include")


__all__ = [
    "BUILTINS", "EXEC_PARAMS", "KernelSpec", "NotTileable", "Param", "PluginError", "Reach",
    "Shape", "as_image", "brightness", "canonical_name", "check_size", "classify", "deblur",
    "edges", "entries", "exec_args", "failures", "gaussian_blur", "get_include", "grayscale",
    "identity", "load_plugins", "output_kind", "output_shape", "resize", "resize_shape", "run",
    "sharpen", "validate_params",
]

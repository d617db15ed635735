"""Build of the native OpenMP kernels; all metadata lives in pyproject.toml.

`STEPCHAIN_NATIVE_ARCH` (e.g. `native`, `x86-64-v3`) adds `-march=` for a machine-specific
build; the default build is portable and still picks AVX2 paths at run time (target_clones).
"""

import os
import sys
from glob import glob

from setuptools import Extension, find_packages, setup

# Flags that decide whether the pixel loops vectorise:
# -fno-wrapv undoes the -fwrapv CPython passes to extensions (with wrapping int arithmetic GCC
#   cannot prove `3 * x`-style indices affine and leaves the loops scalar);
# -fno-trapping-math lets GCC if-convert clamp-then-convert (float -> uint8) loops;
# -ffp-contract=fast allows FMA in the portable loops (-std=c11 would turn it off).
# None changes results between thread counts: every element is computed by the same code.
compile_args = ["-std=c11", "-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                "-ffp-contract=fast", "-fno-wrapv", "-Wall", "-Wextra", "-Wno-unused-parameter"]
arch = os.environ.get("STEPCHAIN_NATIVE_ARCH", "")
if arch:
    compile_args.append(f"-march={arch}")
if sys.platform == "darwin":  # Apple clang needs libomp; kept for contributors on macOS
    compile_args = [a.replace("-fopenmp", "-Xpreprocessor -fopenmp") for a in compile_args]

kernels = Extension(
    "native._native",
    sources=[*sorted(glob("native/src/*.c")), "native/_native.c"],
    include_dirs=["native/src", "native/include"],
    extra_compile_args=compile_args,
    extra_link_args=["-fopenmp"],
)

setup(
    packages=[*find_packages(include=["native*", "stepsvc*", "topology*", "loadtest*", "bench*"]),
              "stepchain", "stepchain.v1"],
    package_dir={"stepchain": "protos/stepchain"},
    ext_modules=[kernels],
)

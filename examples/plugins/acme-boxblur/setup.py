"""The C/OpenMP extension, compiled against stepchain's plugin headers (native.get_include())."""

from setuptools import Extension, setup

import native

setup(ext_modules=[Extension(
    "acme_boxblur._boxblur",
    sources=["src/box_blur.c", "src/binding.c"],
    include_dirs=[native.get_include()],
    # the built-ins' flags (stepchain's setup.py): vectorisable loops, OpenMP
    extra_compile_args=["-std=c11", "-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                        "-fno-wrapv", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=["-fopenmp"],
)])

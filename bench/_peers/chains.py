"""The chains every system runs, and how raw pixels travel over the HTTP peers.

A chain is three kernels of the ``native`` package with their parameters; every system calls
``native.run(name, img, threads=T, **params)`` for each, in one process per step, so only the
serving machinery differs. The HTTP peers (Ray Serve's ingress) carry the pixels as the body
with the shape in three headers: the same bytes a stepchain client sends inside its gRPC
message, never re-encoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import native

Kernels = tuple[tuple[str, dict[str, Any]], ...]

#: Passes of the heavy chain's blur (each pass a full separable sigma-2 blur of the frame).
HEAVY_BLUR_PASSES = 8


def chains(heavy_passes: int = HEAVY_BLUR_PASSES) -> dict[str, Kernels]:
    """``light``: transport dominates (a grayscale frame is a third of the input, the last
    step halves it); ``heavy``: the kernels dominate (blur `heavy_passes` times, then sharpen
    and edges on the full RGB frame)."""
    return {
        "light": (("grayscale", {}), ("gaussian_blur", {"sigma": 2.0}),
                  ("resize", {"scale": 0.5})),
        "heavy": (("gaussian_blur", {"sigma": 2.0, "passes": heavy_passes}),
                  ("sharpen", {"amount": 1.0}), ("edges", {})),
    }


def describe(kernels: Kernels) -> str:
    """``grayscale -> gaussian_blur(sigma=2.0) -> ...`` for tables."""
    return " -> ".join(name + (f"({', '.join(f'{k}={v}' for k, v in params.items())})"
                               if params else "") for name, params in kernels)


def run_kernel(kernels: Kernels, index: int, img: np.ndarray, threads: int) -> np.ndarray:
    """Step `index` of the chain, as every system's step calls it."""
    name, params = kernels[index]
    return native.run(name, img, threads=threads, **params)


def run_in_process(kernels: Kernels, img: np.ndarray, threads: int) -> np.ndarray:
    """The whole chain in this process: the answer every system must give."""
    for i in range(len(kernels)):
        img = run_kernel(kernels, i, img, threads)
    return img


# -- the chain and thread count handed to a peer's processes through the environment ----------

KERNELS_ENV = "STEPCHAIN_PEERS_KERNELS"
THREADS_ENV = "STEPCHAIN_PEERS_THREADS"


def to_env(kernels: Kernels, threads: int) -> dict[str, str]:
    return {KERNELS_ENV: json.dumps(kernels), THREADS_ENV: str(threads),
            "OMP_NUM_THREADS": str(threads)}


def from_env(env: Mapping[str, str] = os.environ) -> tuple[Kernels, int]:
    """The chain and thread count a peer's process was started with (:func:`to_env`)."""
    try:
        raw = json.loads(env[KERNELS_ENV])
        threads = int(env[THREADS_ENV])
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"{KERNELS_ENV} and {THREADS_ENV} must be set by "
                         f"`stepchain bench peers` ({exc})") from None
    return tuple((str(name), dict(params)) for name, params in raw), threads


# -- raw pixels over HTTP -------------------------------------------------------------------------

SHAPE_HEADERS = ("x-height", "x-width", "x-channels")


def shape_headers(img: np.ndarray) -> dict[str, str]:
    h, w = img.shape[:2]
    c = img.shape[2] if img.ndim == 3 else 1
    return dict(zip(SHAPE_HEADERS, (str(h), str(w), str(c)), strict=True))


def from_body(body: bytes | memoryview, headers: Mapping[str, str]) -> np.ndarray:
    """The image a body of raw pixels with :func:`shape_headers` carries (no copy)."""
    try:
        shape: Sequence[int] = [int(headers[k]) for k in SHAPE_HEADERS]
    except (KeyError, ValueError):
        raise ValueError(f"raw pixels need the headers {', '.join(SHAPE_HEADERS)}") from None
    h, w, c = shape
    if len(body) != h * w * c:
        raise ValueError(f"body has {len(body)} bytes, {h}x{w}x{c} needs {h * w * c}")
    return np.frombuffer(body, np.uint8).reshape(h, w, c)

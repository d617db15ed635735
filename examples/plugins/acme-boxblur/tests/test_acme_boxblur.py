"""acme.box_blur (C/OpenMP): exact against a NumPy reference, the same for every thread count
and schedule, and refusing bad calls with ValueError rather than crashing."""

from __future__ import annotations

import numpy as np
import pytest

import native

_boxblur = pytest.importorskip("acme_boxblur._boxblur", reason="the example plugins are not installed in this venv: run `make venv`")
RNG = np.random.default_rng(3)


def reference(img: np.ndarray, r: int) -> np.ndarray:
    """Exact integer box mean, replicate border, round half up: (sum + area // 2) // area."""
    h, w, _ = img.shape
    pad = np.pad(img.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="edge")
    total = np.zeros(img.shape, np.int64)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            total += pad[dy:dy + h, dx:dx + w]
    area = (2 * r + 1) ** 2
    return ((total + area // 2) // area).astype(np.uint8)


@pytest.mark.parametrize(("shape", "radius"), [((1, 1, 1), 1), ((17, 5, 3), 2), ((33, 41, 4), 5),
                                                ((3, 90, 3), 7)])
def test_box_blur_is_the_exact_box_mean(shape: tuple[int, int, int], radius: int) -> None:
    img = RNG.integers(0, 256, shape, dtype=np.uint8)
    assert (native.run("acme.box_blur", img, radius=radius) == reference(img, radius)).all()


def test_the_result_is_the_same_for_every_thread_count_and_schedule() -> None:
    img = RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    first = native.run("acme.box_blur", img, radius=3, threads=1)
    for threads in (2, 3, 8):
        for schedule in ("static", "dynamic", "guided,4"):
            out = native.run("acme.box_blur", img, radius=3, threads=threads, schedule=schedule)
            assert (out == first).all(), (threads, schedule)


def test_passes_repeat_the_same_computation() -> None:
    img = RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    once = native.run("acme.box_blur", img)
    assert (native.run("acme.box_blur", img, passes=3) == once).all()


def test_the_binding_refuses_mismatched_buffers_with_value_error() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    small = np.zeros((2, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="buffers hold 48 and 24 bytes"):
        _boxblur.box_blur(img, small, 4, 4, 3, 4, 4, 3, 1, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="threads and passes must be >= 1"):
        _boxblur.box_blur(img, img.copy(), 4, 4, 3, 4, 4, 3, 0, 0, 0, 1, 2)


def test_out_is_written_in_place() -> None:
    img = RNG.integers(0, 256, (9, 9, 1), dtype=np.uint8)
    out = np.empty_like(img)
    assert native.run("acme.box_blur", img, out=out) is out
    assert (out == reference(img, 2)).all()


def test_the_headers_ship_with_stepchain() -> None:
    from pathlib import Path
    include = Path(native.get_include())
    assert (include / "stepchain" / "kernel.h").is_file()
    assert (include / "stepchain" / "python.h").is_file()

"""Amdahl's law fitted to measured speed-ups (pure): how far more threads help a step.

The console's Run fits it to a pipeline's speed-ups per thread count, ``stepchain bench kernels``
to each kernel's; both read the fit from here.

With a parallel fraction ``p`` of the work, ``n`` threads give a speed-up
``S(n) = 1 / ((1 - p) + p / n)``. Rewritten as ``1/S - 1 = p (1/n - 1)`` it is linear in ``p``
through the origin, so the least-squares fit has a closed form.
"""

from __future__ import annotations

from collections.abc import Sequence


def speedup(p: float, threads: float) -> float:
    """Amdahl's speed-up of `threads` threads for parallel fraction `p`."""
    return 1.0 / ((1.0 - p) + p / threads)


def fit_parallel_fraction(points: Sequence[tuple[float, float]]) -> float | None:
    """The parallel fraction (0..1) that best explains (threads, speed-up) points, by least
    squares on ``1/S - 1 = p (1/n - 1)``; None when no point has more than one thread."""
    num = den = 0.0
    for threads, s in points:
        if threads <= 1 or s <= 0:
            continue
        x = 1.0 / threads - 1.0
        y = 1.0 / s - 1.0
        num += x * y
        den += x * x
    if den == 0:
        return None
    return min(1.0, max(0.0, num / den))

"""Amdahl's law fitted to measured speed-ups: one fit for the console's Run and bench kernels."""

import pytest

from topology.load.amdahl import fit_parallel_fraction, speedup


def test_fit_recovers_the_parallel_fraction_it_was_made_with() -> None:
    points = [(n, speedup(0.9, n)) for n in (1, 2, 4, 8)]
    assert fit_parallel_fraction(points) == pytest.approx(0.9)


def test_perfect_scaling_is_all_parallel_and_none_is_all_serial() -> None:
    assert fit_parallel_fraction([(1, 1.0), (2, 2.0)]) == pytest.approx(1.0)
    assert fit_parallel_fraction([(1, 1.0), (2, 1.0)]) == pytest.approx(0.0)


def test_one_thread_count_says_nothing() -> None:
    assert fit_parallel_fraction([(1, 1.0)]) is None

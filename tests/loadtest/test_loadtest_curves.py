"""Load curves over simulated time: shape, peak, duration, stop, and parameter checks.

The curves are pure (``loadtest.curves``); the Locust ``LoadTestShape`` wrappers are checked in
a child process because importing Locust monkey-patches the interpreter with gevent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from loadtest_fixtures import ROOT, child_env

from loadtest import curves
from loadtest.curves import (
    CURVES,
    FlatCurve,
    RampCurve,
    SinusCurve,
    SpikeCurve,
    StepCurve,
    make_curve,
)


def series(curve: curves.Curve, step: float = 1.0) -> list[int]:
    return [users for _, users in curves.sample(curve, step)]


def test_ramp_rises_linearly_to_the_peak_at_ramp_up_then_holds() -> None:
    curve = RampCurve(users=10, duration=20, ramp_up=10)
    assert series(curve) == [1, 1, 2, 3, 4, 5, 6, 7, 8, 9] + [10] * 10
    assert max(series(curve, 0.1)) == 10 == curve.peak()


def test_ramp_defaults_to_n_t_over_d_across_the_whole_run() -> None:
    curve = RampCurve(users=100, duration=180)
    assert curve.ramp_up == 180
    assert curve.users_at(45) == 25 and curve.users_at(90) == 50
    assert curve.users_at(178.2) == 99 and curve.users_at(179.9) == 100
    assert curve.users_at(0) == 1  # someone sends from the first second


def test_step_holds_equal_plateaus_each_adding_a_share_of_the_peak() -> None:
    curve = StepCurve(users=100, duration=40, step_count=4)
    assert series(curve, 10.0) == [25, 50, 75, 100]
    assert set(series(curve, 0.5)) == {25, 50, 75, 100}
    assert curve.users_at(9.99) == 25 and curve.users_at(10.0) == 50


def test_step_defaults_to_five_plateaus_of_k_plus_one_fifths_of_the_peak() -> None:
    curve = StepCurve(users=20, duration=60)
    assert curve.step_count == 5
    assert series(curve, 12.0) == [4, 8, 12, 16, 20]
    assert set(series(curve, 0.5)) == {4, 8, 12, 16, 20}
    assert curve.users_at(11.99) == 4 and curve.users_at(12.0) == 8
    # Fewer users than plateaus: (k+1)·N/5 rounded up, so some plateaus repeat.
    assert series(StepCurve(users=3, duration=5)) == [1, 2, 2, 3, 3]


def test_spike_defaults_to_the_peak_between_a_quarter_and_three_quarters_tenth_outside() -> None:
    curve = SpikeCurve(users=100, duration=180)
    assert (curve.base_users, curve.spike_at, curve.spike_length) == (10, 45, 90)
    assert curve.users_at(44.9) == 10
    assert curve.users_at(45) == 100 and curve.users_at(134.9) == 100
    assert curve.users_at(135) == 10 and curve.users_at(179) == 10
    assert sorted(set(series(curve))) == [10, 100]


def test_spike_parameters_place_the_spike() -> None:
    curve = SpikeCurve(users=8, duration=10, base_users=2, spike_at=4, spike_length=2)
    assert series(curve) == [2, 2, 2, 2, 8, 8, 2, 2, 2, 2]


def test_sinus_knobs_set_the_base_and_period_of_the_wave() -> None:
    curve = SinusCurve(users=100, duration=120, base_users=10, period=60)
    assert curve.users_at(0) == 55  # halfway up, rising
    assert curve.users_at(15) == 100 and curve.users_at(45) == 10
    assert curve.users_at(75) == 100 and curve.users_at(105) == 10
    values = series(curve, 0.5)
    assert min(values) == 10 and max(values) == 100
    # periodic (up to rounding at exact halves)
    assert max(abs(a - b) for a, b in zip(values[:120], values[120:240], strict=True)) <= 1


def test_sinus_defaults_to_one_wave_n_half_one_plus_sine_over_the_duration() -> None:
    curve = SinusCurve(users=50, duration=100)
    assert curve.period == 100 and curve.base_users == 0
    for t in range(100):
        assert curve.users_at(t) == round(25 * (1 + math.sin(2 * math.pi * t / 100)))
    assert curve.users_at(25) == 50 and curve.users_at(75) == 0


def test_flat_runs_the_peak_from_first_to_last_second() -> None:
    assert series(FlatCurve(users=7, duration=5)) == [7] * 5


@pytest.mark.parametrize("name", list(CURVES))
def test_every_curve_ticks_users_and_rate_until_duration_then_none(name: str) -> None:
    curve = make_curve(name, users=20, duration=30)
    for t in (0.0, 0.5, 10.0, 29.99):
        tick = curve.tick_at(t)
        assert tick is not None
        users, rate = tick
        assert 0 < users <= 20
        assert rate == curve.rate >= curves.DEFAULT_SPAWN_RATE == 2.0  # the replaced tool's
    assert curve.tick_at(30.0) is None
    assert curve.tick_at(1000.0) is None
    assert curve.users_at(30.0) == 0 and curve.users_at(-1) == 0
    assert max(series(curve, 0.25)) == 20 == curve.peak()


def test_spawn_rate_given_is_the_rate_every_tick_uses() -> None:
    curve = make_curve("spike", users=10, duration=10, spawn_rate=2.5)
    assert curve.tick_at(0) == (1, 2.5)
    assert curve.tick_at(4) == (10, 2.5)


@pytest.mark.parametrize(("name", "kwargs", "rate"), [
    # the jump from ⌈N/10⌉ to N (and back) lands within a second
    ("spike", {"users": 20, "duration": 60}, 18.0),
    ("spike", {"users": 100, "duration": 180, "base_users": 40}, 60.0),
    # every user from the first second
    ("flat", {"users": 20, "duration": 60}, 20.0),
    # each plateau adds N/K users at once
    ("step", {"users": 20, "duration": 60}, 4.0),
    ("step", {"users": 100, "duration": 100, "step_count": 4}, 25.0),
    # starts at N/2, then at most π·N/P users a second
    ("sinus", {"users": 20, "duration": 60}, 11.0),
    # a gentle ramp keeps the replaced tool's 2 users/s; a steep one is faster
    ("ramp", {"users": 20, "duration": 60}, 2.0),
    ("ramp", {"users": 100, "duration": 60, "ramp_up": 10}, 10.0),
])
def test_without_spawn_rate_a_curve_spawns_as_fast_as_its_shape_needs(
        name: str, kwargs: dict[str, float], rate: float) -> None:
    curve = make_curve(name, **kwargs)  # type: ignore[arg-type]
    assert curve.rate == rate
    assert {tick[1] for tick in map(curve.tick_at, range(int(curve.duration)))
            if tick is not None} == {rate}
    # Spawning at that rate, every change of the shape lands within a second (Locust's tick).
    for t in range(1, int(curve.duration)):
        assert abs(curve.users_at(t) - curve.users_at(t - 1)) <= curve.rate


def test_an_explicit_spawn_rate_wins_over_the_shapes_need() -> None:
    assert make_curve("spike", users=20, duration=60, spawn_rate=2).rate == 2.0
    assert make_curve("flat", users=20, duration=60, spawn_rate=50).rate == 50.0


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("flat", {"users": 0}, "--users must be a whole number >= 1, got 0"),
    ("flat", {"users": 2.5}, "--users must be a whole number >= 1, got 2.5"),
    ("ramp", {"duration": 0}, "--duration must be a finite number > 0, got 0"),
    ("ramp", {"duration": -5}, "--duration must be a finite number > 0, got -5"),
    ("flat", {"spawn_rate": 0}, "--spawn-rate must be a finite number > 0, got 0"),
    ("ramp", {"duration": 10, "ramp_up": 11}, "--ramp-up must be in (0, 10]"),
    ("ramp", {"ramp_up": 0}, "--ramp-up must be in (0, 60]"),
    ("step", {"duration": 3, "step_count": 4}, "--step-count must be a whole number between 1 "
                                               "and 3 so each plateau lasts at least a second"),
    ("step", {"step_count": 0}, "--step-count must be a whole number between 1"),
    ("spike", {"users": 5, "base_users": 6}, "--base-users must be a whole number between 0 "
                                             "and --users (5), got 6"),
    ("spike", {"duration": 10, "spike_at": 10}, "--spike-at must be in [0, 10)"),
    ("spike", {"duration": 10, "spike_at": 8, "spike_length": 3},
     "--spike-length must be in (0, 2] seconds (the spike must end by --duration)"),
    ("sinus", {"period": 0}, "--period must be in (0, 240) seconds (the wave must reach "
                             "--users before --duration), got 0"),
    ("sinus", {"duration": 10, "period": 40}, "--period must be in (0, 40)"),
    ("sinus", {"base_users": -1}, "--base-users must be a whole number between 0"),
])
def test_bad_parameters_are_rejected_naming_the_option(name: str, kwargs: dict[str, float],
                                                       message: str) -> None:
    with pytest.raises(ValueError) as err:
        make_curve(name, **kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert str(err.value).startswith(f"{name} curve: ")


def test_unknown_curve_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"--curve must be one of ramp, step, spike, sinus, "
                                         r"flat, got 'square'"):
        make_curve("square")


def test_a_knob_of_another_curve_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"--period applies to the sinus curve, not to "
                                         r"--curve flat"):
        make_curve("flat", period=10.0)
    with pytest.raises(ValueError, match=r"--base-users applies to the spike and sinus curves"):
        make_curve("ramp", base_users=1)


@pytest.mark.slow
def test_locust_shapes_tick_their_curve_at_the_run_time(tmp_path: Path) -> None:
    # Each LoadTestShape subclass, with get_run_time() driven by the test, in a fresh
    # interpreter (Locust monkey-patches the process it is imported into).
    script = """
import json, sys
from loadtest.curves import make_curve
from loadtest.shapes import SHAPES, CurveShape, FlatShape, shape_for
from locust import LoadTestShape
out = {}
for name in SHAPES:
    curve = make_curve(name, users=12, duration=20)
    shape = shape_for(curve)
    assert isinstance(shape, LoadTestShape) and type(shape) is SHAPES[name]
    ticks = []
    for t in [0, 1.5, 5, 7, 10, 13, 19.9, 20, 25]:
        shape.get_run_time = lambda t=t: t
        ticks.append(shape.tick())
    out[name] = ticks
cut = shape_for(make_curve("flat", users=3, duration=20), stop_after=5)
out["cut"] = []
for t in [0, 4.9, 5, 6]:
    cut.get_run_time = lambda t=t: t
    out["cut"].append(cut.tick())
out["default_flat"] = FlatShape().curve.users
out["abstract"] = CurveShape.abstract and not FlatShape.abstract
json.dump(out, sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ticks = json.loads(result.stdout)
    times = [0, 1.5, 5, 7, 10, 13, 19.9, 20, 25]
    for name in CURVES:
        curve = make_curve(name, users=12, duration=20)
        expected = [list(tick) if tick else None for tick in map(curve.tick_at, times)]
        assert ticks[name] == expected, name
        assert ticks[name][-2:] == [None, None]
    # Locust's --run-time cuts the curve short (Locust itself would wait for the shape).
    assert ticks["cut"] == [[3, 3.0], [3, 3.0], None, None]  # all 3 users from the start
    assert ticks["default_flat"] == curves.DEFAULT_USERS
    assert ticks["abstract"] is True


@pytest.mark.slow
def test_plot_script_writes_one_small_png_per_curve(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "loadtest.curves", "--plot", str(tmp_path)],
                            cwd=ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for name in CURVES:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 2_000 < png.stat().st_size < 100_000

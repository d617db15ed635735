"""Load curves: how many Locust users run at each second of a test.

Each curve is a frozen, validated set of parameters with two pure functions of time ``t``
(seconds since the test started):

* ``users_at(t)`` — the user count the curve asks for (0 outside ``[0, duration)``);
* ``tick_at(t)`` — what a Locust ``LoadTestShape.tick()`` returns: ``(users, spawn_rate)`` while
  the test runs, ``None`` from ``duration`` on (Locust then stops the test).

``loadtest.shapes`` wraps each curve in a ``LoadTestShape`` whose ``tick()`` is
``tick_at(self.get_run_time())``. This module never imports Locust (importing Locust
monkey-patches the process with gevent), so the curves can be tested and plotted anywhere.

``python -m loadtest.curves --plot DIR`` draws one small PNG per curve.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

#: Peak users, test length and spawn rate when the command line does not say: those of the
#: Flask-era ``pipeline_test.py`` this load test replaces (``--users 20 --duration 60
#: --spawn-rate 2``; its default curve, ``ramp``, is ``loadtest.options``' default).
DEFAULT_USERS = 20
DEFAULT_DURATION_S = 60.0
DEFAULT_SPAWN_RATE = 2.0
#: Plateaus of the step curve when ``--step-count`` is not given.
DEFAULT_STEP_COUNT = 5
#: How finely ``Curve.needed_rate`` samples a curve, in seconds.
_RATE_SAMPLE_S = 0.25


def _default_base_users(users: int) -> int:
    # A tenth of the peak keeps traffic flowing between spikes/waves; never 0 unless peak is 0.
    return min(users, max(1, math.ceil(users / 10)))


@dataclass(frozen=True)
class Curve:
    """A load curve: ``users`` at the peak, ``duration`` seconds long.

    ``spawn_rate`` (users started/stopped per second when the count changes) is
    ``--spawn-rate`` when given. Without it the curve spawns as fast as its own shape needs
    (``needed_rate``: a spike lands within a second instead of ramping at 2/s), never slower
    than the 2/s of the tool this replaces (``DEFAULT_SPAWN_RATE``).
    """

    #: Name on the command line (``--curve NAME``).
    name: ClassVar[str] = ""
    #: The formula, as documented in the README (``N`` = users, ``D`` = duration).
    formula: ClassVar[str] = ""

    users: int = DEFAULT_USERS
    duration: float = DEFAULT_DURATION_S
    spawn_rate: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.users, bool) or not isinstance(self.users, int) or self.users < 1:
            raise ValueError(
                f"{self.name} curve: --users must be a whole number >= 1, got {self.users!r}")
        _require_positive(self.name, "--duration", self.duration)
        if self.spawn_rate is not None:
            _require_positive(self.name, "--spawn-rate", self.spawn_rate)

    @property
    def rate(self) -> float:
        """Users started or stopped per second when the user count changes: ``--spawn-rate``
        when given, else ``needed_rate()`` (at least ``DEFAULT_SPAWN_RATE``)."""
        if self.spawn_rate is not None:
            return float(self.spawn_rate)
        return max(DEFAULT_SPAWN_RATE, float(self.needed_rate()))

    def needed_rate(self) -> int:
        """The largest change in users the curve asks for within any one second (the start,
        from 0, included): spawning this many users per second follows every change of the
        shape within about a second, Locust's tick."""
        return self._needed_rate

    @functools.cached_property
    def _needed_rate(self) -> int:
        # Sampled every quarter second against the count one second earlier: exact for the
        # jumps of spike and step, and within a user of the steepest slope of ramp and sinus.
        largest = 0
        for i in range(math.ceil(self.duration / _RATE_SAMPLE_S) + 1):
            t = min(i * _RATE_SAMPLE_S, math.nextafter(self.duration, 0.0))
            largest = max(largest, abs(self.users_at(t) - self.users_at(t - 1.0)))
        return max(1, largest)

    def users_at(self, t: float) -> int:
        """Users the curve asks for at ``t`` seconds; 0 before the start and from ``duration``."""
        if t < 0 or t >= self.duration:
            return 0
        return self._users(t)

    def tick_at(self, t: float) -> tuple[int, float] | None:
        """Locust's ``tick()`` at ``t`` seconds: ``(users, spawn_rate)``, or ``None`` to stop."""
        if t >= self.duration:
            return None
        return self.users_at(max(0.0, t)), self.rate

    def peak(self) -> int:
        """The most users this curve ever asks for."""
        return self.users

    def _users(self, t: float) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class RampCurve(Curve):
    """Linear rise to ``users`` over ``ramp_up`` seconds (default: the whole run, ``N·t/D``).

    A shorter ``--ramp-up`` holds the peak for the rest of the test: a steady state to read
    latency from. At least one user runs from the first second.
    """

    name: ClassVar[str] = "ramp"
    formula: ClassVar[str] = "u(t) = max(1, ⌈N · min(1, t / T_up)⌉), T_up = --ramp-up (default D)"

    ramp_up: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ramp_up is None:
            object.__setattr__(self, "ramp_up", self.duration)
        _require_in(self.name, "--ramp-up", self.ramp_up, 0.0, self.duration, open_low=True)

    def _users(self, t: float) -> int:
        assert self.ramp_up is not None
        return max(1, math.ceil(self.users * min(1.0, t / self.ramp_up) - 1e-9))


@dataclass(frozen=True)
class StepCurve(Curve):
    """``step_count`` equal plateaus (default 5), each ``duration / step_count`` long, plateau
    ``k`` at ``(k+1)·N/K`` users (rounded up); the last plateau is the peak."""

    name: ClassVar[str] = "step"
    formula: ClassVar[str] = "u(t) = ⌈N · (⌊t · K / D⌋ + 1) / K⌉, K = --step-count (default 5)"

    step_count: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_count is None:
            object.__setattr__(self, "step_count", DEFAULT_STEP_COUNT)
        k = self.step_count
        longest = max(1, math.floor(self.duration))
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= longest:
            raise ValueError(
                f"{self.name} curve: --step-count must be a whole number between 1 and "
                f"{longest} so each plateau lasts at least a second (Locust's tick) of the "
                f"{self.duration:g}s --duration, got {k!r}")

    def _users(self, t: float) -> int:
        assert self.step_count is not None
        index = min(self.step_count - 1, int(t * self.step_count / self.duration))
        return math.ceil(self.users * (index + 1) / self.step_count - 1e-9)


@dataclass(frozen=True)
class SpikeCurve(Curve):
    """``base_users`` (default ⌈N/10⌉), jumping to ``users`` at ``spike_at`` (default D/4) for
    ``spike_length`` seconds (default D/2, so the spike is the middle half), then back."""

    name: ClassVar[str] = "spike"
    formula: ClassVar[str] = (
        "u(t) = N if t_s ≤ t < t_s + L else B; t_s = --spike-at (default D/4), "
        "L = --spike-length (default D/2), B = --base-users (default ⌈N/10⌉)")

    base_users: int | None = None
    spike_at: float | None = None
    spike_length: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _resolve_base_users(self)
        if self.spike_at is None:
            object.__setattr__(self, "spike_at", self.duration / 4)
        if self.spike_length is None:
            object.__setattr__(self, "spike_length", self.duration / 2)
        _require_in(self.name, "--spike-at", self.spike_at, 0.0, self.duration, open_high=True)
        assert self.spike_at is not None
        _require_in(self.name, "--spike-length", self.spike_length, 0.0,
                    self.duration - self.spike_at, open_low=True,
                    why="the spike must end by --duration")

    def _users(self, t: float) -> int:
        assert self.spike_at is not None and self.spike_length is not None
        assert self.base_users is not None
        in_spike = self.spike_at <= t < self.spike_at + self.spike_length
        return self.users if in_spike else self.base_users


@dataclass(frozen=True)
class SinusCurve(Curve):
    """A sine wave between ``base_users`` (default 0) and ``users`` with ``period`` seconds
    (default D: one full wave, ``N/2·(1+sin(2πt/D))``); starts halfway, peaks at a quarter
    period, bottoms out at three quarters."""

    name: ClassVar[str] = "sinus"
    formula: ClassVar[str] = (
        "u(t) = round(B + (N − B) · (1 + sin(2πt / P)) / 2), P = --period (default D), "
        "B = --base-users (default 0)")

    base_users: int | None = None
    period: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _resolve_base_users(self, default=0)
        if self.period is None:
            object.__setattr__(self, "period", self.duration)
        _require_in(self.name, "--period", self.period, 0.0, 4 * self.duration, open_low=True,
                    open_high=True, why="the wave must reach --users before --duration")

    def _users(self, t: float) -> int:
        assert self.period is not None and self.base_users is not None
        wave = (1.0 + math.sin(2.0 * math.pi * t / self.period)) / 2.0
        return round(self.base_users + (self.users - self.base_users) * wave)


@dataclass(frozen=True)
class FlatCurve(Curve):
    """``users`` from the first second to the last."""

    name: ClassVar[str] = "flat"
    formula: ClassVar[str] = "u(t) = N"

    def _users(self, t: float) -> int:
        return self.users


#: Every curve by its command-line name, in the order the docs list them.
CURVES: dict[str, type[Curve]] = {
    cls.name: cls for cls in (RampCurve, StepCurve, SpikeCurve, SinusCurve, FlatCurve)
}

#: Curve-specific knobs: field name -> command-line option.
KNOB_OPTIONS: dict[str, str] = {
    "ramp_up": "--ramp-up",
    "step_count": "--step-count",
    "base_users": "--base-users",
    "spike_at": "--spike-at",
    "spike_length": "--spike-length",
    "period": "--period",
}


def make_curve(
    name: str,
    *,
    users: int | None = None,
    duration: float | None = None,
    spawn_rate: float | None = None,
    **knobs: Any,
) -> Curve:
    """Build the curve called ``name`` from command-line values (``None`` = the default).

    Raises ``ValueError`` naming the option when a value is out of range, the curve is unknown,
    or a knob belongs to a different curve.
    """
    cls = CURVES.get(name)
    if cls is None:
        raise ValueError(f"--curve must be one of {', '.join(CURVES)}, got {name!r}")
    accepted = {f.name for f in fields(cls)}
    given = {key: value for key, value in knobs.items() if value is not None}
    for key in given:
        if key not in KNOB_OPTIONS:
            raise ValueError(f"unknown curve parameter {key!r}; known: {', '.join(KNOB_OPTIONS)}")
        if key not in accepted:
            owners = [n for n, c in CURVES.items() if key in {f.name for f in fields(c)}]
            raise ValueError(
                f"{KNOB_OPTIONS[key]} applies to the {' and '.join(owners)} curve"
                f"{'s' if len(owners) > 1 else ''}, not to --curve {name}")
    return cls(
        users=DEFAULT_USERS if users is None else users,
        duration=DEFAULT_DURATION_S if duration is None else duration,
        spawn_rate=spawn_rate,
        **given,
    )


def _resolve_base_users(curve: SpikeCurve | SinusCurve, *, default: int | None = None) -> None:
    if curve.base_users is None:
        object.__setattr__(curve, "base_users",
                           _default_base_users(curve.users) if default is None else default)
    base = curve.base_users
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base <= curve.users:
        raise ValueError(
            f"{curve.name} curve: --base-users must be a whole number between 0 and --users "
            f"({curve.users}), got {base!r}")


def _require_positive(curve: str, option: str, value: Any) -> None:
    if not _is_number(value) or not value > 0 or math.isinf(value):
        raise ValueError(f"{curve} curve: {option} must be a finite number > 0, got {value!r}")


def _require_in(curve: str, option: str, value: Any, low: float, high: float, *,
                open_low: bool = False, open_high: bool = False, why: str = "") -> None:
    ok = _is_number(value) and (value > low if open_low else value >= low) and (
        value < high if open_high else value <= high)
    if not ok:
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        reason = f" ({why})" if why else ""
        raise ValueError(f"{curve} curve: {option} must be in {lo}{low:g}, {high:g}{hi} "
                         f"seconds{reason}, got {value!r}")


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not math.isnan(value))


def sample(curve: Curve, step: float = 1.0) -> list[tuple[float, int]]:
    """``(t, users)`` every ``step`` seconds from 0 to the end of the curve (plotting, docs)."""
    points: list[tuple[float, int]] = []
    n = math.ceil(curve.duration / step)
    for i in range(n):
        t = i * step
        points.append((t, curve.users_at(t)))
    return points


def plot_curves(out_dir: Path, *, users: int = 100, duration: float = 180.0) -> list[Path]:
    """Write ``<out_dir>/<curve>.png`` — a small plot of each curve with its defaults."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in CURVES:
        curve = make_curve(name, users=users, duration=duration)
        points = sample(curve, step=0.25)
        fig, ax = plt.subplots(figsize=(4.0, 2.2), dpi=100)
        ax.step([t for t, _ in points], [u for _, u in points], where="post", color="tab:blue")
        ax.set_xlim(0, duration)
        ax.set_ylim(0, users * 1.1)
        ax.set_title(f"--curve {name}  (N={users}, D={duration:g}s)", fontsize=9)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel("users", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.curves --plot DIR``: draw each curve; without --plot, print them."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.curves",
                                     description="Plot or print stepchain's load curves.")
    parser.add_argument("--plot", metavar="DIR", type=Path,
                        help="write DIR/<curve>.png for every curve")
    parser.add_argument("--users", type=int, default=100, help="peak users (default 100)")
    parser.add_argument("--duration", type=float, default=180.0,
                        help="test length in seconds (default 180)")
    args = parser.parse_args(argv)
    try:
        if args.plot is not None:
            for path in plot_curves(args.plot, users=args.users, duration=args.duration):
                print(path)
            return 0
        for name, cls in CURVES.items():
            curve = make_curve(name, users=args.users, duration=args.duration)
            every = max(1, int(curve.duration // 12))
            series = " ".join(str(u) for _, u in sample(curve, step=every))
            print(f"{name:6} {cls.formula}\n       every {every}s: {series}")
    except ValueError as exc:
        print(f"loadtest.curves: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

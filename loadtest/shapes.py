"""One Locust ``LoadTestShape`` per load curve (imports Locust: use inside Locust only).

Each shape's ``tick()`` is the pure ``tick_at`` of its curve (``loadtest.curves``) at
``self.get_run_time()``. Used by ``loadtest/locustfile.py`` through ``--curve``, and usable in a
locustfile of your own::

    from loadtest.curves import SpikeCurve
    from loadtest.shapes import SpikeShape  # alone: a spike with the curve's defaults

    class MySpike(SpikeShape):
        def __init__(self) -> None:
            super().__init__(SpikeCurve(users=200, duration=300))
"""

from __future__ import annotations

from typing import ClassVar

from locust import LoadTestShape

from loadtest.curves import (
    Curve,
    FlatCurve,
    RampCurve,
    SinusCurve,
    SpikeCurve,
    StepCurve,
)


class CurveShape(LoadTestShape):
    """A ``LoadTestShape`` driven by a ``Curve``; subclasses fix which curve."""

    abstract: ClassVar[bool] = True
    #: The curve a subclass follows; built with its defaults when no curve is given.
    curve_class: ClassVar[type[Curve]] = Curve
    #: We read --users/--spawn-rate ourselves, so Locust should not warn they are ignored.
    use_common_options: ClassVar[bool] = True

    def __init__(self, curve: Curve | None = None, *, stop_after: float | None = None) -> None:
        super().__init__()
        if curve is not None and not isinstance(curve, self.curve_class):
            raise TypeError(f"{type(self).__name__} needs a {self.curve_class.__name__}, "
                            f"got {type(curve).__name__}")
        self.curve: Curve = curve if curve is not None else self.curve_class()
        #: Locust's --run-time: Locust applies it only after a shape ends, so the shape does.
        self.stop_after = stop_after

    def tick(self) -> tuple[int, float] | None:
        """``(users, spawn_rate)`` for the current second; ``None`` ends the test."""
        t = self.get_run_time()
        if self.stop_after is not None and t >= self.stop_after:
            return None
        return self.curve.tick_at(t)


class RampShape(CurveShape):
    """Linear ramp to the peak, then hold (``--curve ramp``)."""

    curve_class = RampCurve


class StepShape(CurveShape):
    """Equal plateaus up to the peak (``--curve step``)."""

    curve_class = StepCurve


class SpikeShape(CurveShape):
    """Base load with one spike to the peak (``--curve spike``)."""

    curve_class = SpikeCurve


class SinusShape(CurveShape):
    """A wave between base and peak (``--curve sinus``)."""

    curve_class = SinusCurve


class FlatShape(CurveShape):
    """The peak from start to end (``--curve flat``)."""

    curve_class = FlatCurve


#: Shape class by curve name.
SHAPES: dict[str, type[CurveShape]] = {
    shape.curve_class.name: shape
    for shape in (RampShape, StepShape, SpikeShape, SinusShape, FlatShape)
}


def shape_for(curve: Curve, *, stop_after: float | None = None) -> CurveShape:
    """The ``LoadTestShape`` that follows ``curve`` (cut short at ``stop_after`` seconds)."""
    return SHAPES[curve.name](curve, stop_after=stop_after)

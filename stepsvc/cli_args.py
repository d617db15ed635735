"""argparse types shared by every stepchain command that takes ports, counts, sizes or seconds.

Each type checks its range while parsing, so an out-of-range value is an argparse error (exit 2,
``argument --port: must be an integer in 0..65535, got 70000``) instead of a silently wrapped
port, an OverflowError deep in a socket call, or a gRPC crash at startup.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from stepsvc.limits import MAX_MESSAGE_MB

#: Largest TCP port.
MAX_PORT = 65_535


def native_limit(name: str) -> Callable[[], int]:
    """`native.registry.<name>` (e.g. "MAX_PIXELS"), looked up only when a value is checked."""
    def limit() -> int:
        from native import registry  # imported late: loading the kernels is not free

        return int(getattr(registry, name))

    return limit


def int_range(lo: int, hi: int | Callable[[], int] | None = None) -> Callable[[str], int]:
    """An argparse type accepting integers in lo..hi (no upper bound when `hi` is None)."""

    def parse(text: str) -> int:
        top = hi() if callable(hi) else hi
        allowed = f"in {lo}..{top}" if top is not None else f">= {lo}"
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer {allowed}, got {text!r}") from None
        if value < lo or (top is not None and value > top):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value

    parse.__name__ = "integer"  # what argparse calls the type in its own messages
    return parse


def float_range(lo: float, *, exclusive: bool = False) -> Callable[[str], float]:
    """An argparse type accepting finite numbers >= lo (> lo when `exclusive`)."""
    allowed = f"{'>' if exclusive else '>='} {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number {allowed}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (exclusive and value == lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: A TCP port; 0 means "any free port" (or "off" where the flag says so).
port = int_range(0, MAX_PORT)
#: A count of at least one (in-flight slots, passes cap, ...).
positive_int = int_range(1)
#: A count where 0 means "none" or "the default".
non_negative_int = int_range(0)
#: Seconds that must be > 0 (timeouts: 0 or less would fail every call at once).
positive_seconds = float_range(0.0, exclusive=True)
#: Seconds that may be 0 (a grace period of 0 stops at once).
non_negative_seconds = float_range(0.0)
#: The largest gRPC message, in MiB.
message_mb = int_range(1, MAX_MESSAGE_MB)


def image_size(text: str) -> tuple[int, int]:
    """An argparse type for an image size: ``1920x1080`` -> ``(1920, 1080)``, both sides >= 1."""
    width, sep, height = text.strip().lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
        raise argparse.ArgumentTypeError(
            f"size must be WIDTHxHEIGHT (both >= 1), e.g. 1920x1080, got {text!r}")
    return int(width), int(height)


image_size.__name__ = "size"  # what argparse calls the type in its own messages

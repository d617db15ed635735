"""The load-test options, defined once for both ``locust -f loadtest/locustfile.py`` and
``stepchain loadtest``.

Locust already owns ``--users``, ``--spawn-rate`` and ``--host``; the locustfile reuses them and
``stepchain loadtest`` passes its own ``--users``/``--spawn-rate``/``--target`` through to them.
Everything else (the curve, its knobs, the image, the request settings) is added here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from loadtest import curves

#: The curve when ``--curve`` is not given: the ramp, as the tool this replaces.
DEFAULT_CURVE = "ramp"

_SPAN = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"2.5"``, ``"3m"``, ``"1h30m"`` (Locust's time spans)."""
    value = text.strip()
    match = _SPAN.match(value)
    if not value or match is None or not any(match.groupdict().values()):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use seconds (180, 2.5) or a time span (90s, 3m, 1h30m)")
    parts = match.groupdict()
    return (int(parts["h"] or 0) * 3600 + int(parts["m"] or 0) * 60
            + float(parts["s"] or 0.0))


def add_load_options(parser: Any) -> None:
    """Add the stepchain load options to ``parser`` (argparse or Locust's configargparse)."""
    parser.add_argument(
        "--curve", choices=list(curves.CURVES), default=DEFAULT_CURVE,
        help="load curve: " + ", ".join(curves.CURVES) + f" (default {DEFAULT_CURVE})")
    parser.add_argument(
        "--duration", type=parse_duration, default=None,
        help="the curve's length: seconds or a time span like 3m (default 60, or Locust's "
             "--run-time when given); the curve stops the test at its end")
    parser.add_argument(
        "--image", default=None,
        help="image file sent with every request (PNG/JPEG/...; default: a built-in 256x256 "
             "test pattern)")
    parser.add_argument(
        "--send-encoded", action="store_true", default=False,
        help="send the image file's encoded bytes (the entry step decodes them) instead of raw "
             "pixels")
    parser.add_argument("--ramp-up", type=float, default=None,
                        help="ramp: seconds to reach --users (default: the whole duration)")
    parser.add_argument("--step-count", type=int, default=None,
                        help="step: number of equal plateaus (default 5)")
    parser.add_argument("--base-users", type=int, default=None,
                        help="spike, sinus: users outside the spike (default ceil(users/10)) "
                             "/ at the wave's bottom (default 0)")
    parser.add_argument("--spike-at", type=float, default=None,
                        help="spike: second the spike starts (default duration/4)")
    parser.add_argument("--spike-length", type=float, default=None,
                        help="spike: seconds the spike lasts (default duration/2)")
    parser.add_argument("--period", type=float, default=None,
                        help="sinus: seconds per wave (default: the whole duration)")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="gRPC deadline per request in seconds (default 30)")
    parser.add_argument("--threads", type=int, default=0,
                        help="per-request OpenMP threads override for every step (0 = the "
                             "step's own)")
    parser.add_argument("--passes", type=int, default=0,
                        help="per-request kernel passes override (0 = the step's own); makes "
                             "kernels heavier on purpose. Steps refuse more than their "
                             "--max-passes (default 100) with INVALID_ARGUMENT")
    parser.add_argument("--think-time", type=float, default=0.0,
                        help="seconds each user waits between requests (default 0: back to "
                             "back)")
    parser.add_argument("--namespace", default=None,
                        help="without a host: Kubernetes namespace to look for entry Services "
                             "in (default: all namespaces)")
    parser.add_argument("--node-address", default=None,
                        help="without a host: address to reach NodePorts on (default: a node's "
                             "ExternalIP, else its InternalIP)")


def check_request_settings(options: Any) -> None:
    """``ValueError`` naming the option when a request setting is out of range."""
    if not options.request_timeout > 0:
        raise ValueError(f"--request-timeout must be > 0 seconds, got {options.request_timeout}")
    if not options.think_time >= 0:
        raise ValueError(f"--think-time must be >= 0 seconds, got {options.think_time}")


def knob_values(options: Any) -> dict[str, Any]:
    """The curve-specific knobs from parsed options, keyed by curve field name."""
    return {field: getattr(options, field, None) for field in curves.KNOB_OPTIONS}


def build_curve(options: Any, *, users: int | None, spawn_rate: float | None,
                run_time: float | None = None) -> curves.Curve:
    """The curve the options ask for; ``ValueError`` with the offending option otherwise.

    ``run_time`` (Locust's ``--run-time``) is the curve's length when ``--duration`` is absent.
    """
    duration = options.duration if options.duration is not None else run_time
    return curves.make_curve(options.curve, users=users, duration=duration,
                             spawn_rate=spawn_rate, **knob_values(options))


def locust_arguments(options: Any) -> list[str]:
    """The locustfile options from ``options`` as command-line words for a Locust process."""
    words = ["--curve", options.curve]
    if options.duration is not None:
        words += ["--duration", f"{options.duration:g}"]
    if options.image is not None:
        words += ["--image", str(Path(options.image).resolve())]
    if options.send_encoded:
        words.append("--send-encoded")
    for field, option in curves.KNOB_OPTIONS.items():
        value = getattr(options, field, None)
        if value is not None:
            words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    words += ["--request-timeout", f"{options.request_timeout:g}",
              "--threads", str(options.threads), "--passes", str(options.passes),
              "--think-time", f"{options.think_time:g}"]
    if options.namespace:
        words += ["--namespace", options.namespace]
    if options.node_address:
        words += ["--node-address", options.node_address]
    return words

"""``stepchain trace show|list``: draw a request's per-step waterfall in the terminal."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Same as stepsvc.telemetry.TRACE_FILE_ENV, spelled out so `stepchain --help` does not import
#: grpc and OpenTelemetry just to register this command.
TRACE_FILE_ENV = "STEPCHAIN_TRACE_FILE"
#: How long ``trace show`` waits for a trace to be whole: steps export every few seconds at most.
DEFAULT_WAIT_S = 6.0
#: Between two looks at the trace source while waiting.
POLL_S = 0.25


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``stepchain trace show`` and ``stepchain trace list``."""
    trace = sub.add_parser("trace", help="show a request's trace as a per-step waterfall")
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    show = trace_sub.add_parser(
        "show", help="draw one trace's waterfall",
        description="Draw one trace as a waterfall: a row per span, indented by depth, bars on "
                    "the trace's time axis. SOURCE is an OTLP JSON lines file (shows its latest "
                    "trace) or a 32-hex trace id read from --jaeger, --file or "
                    f"${TRACE_FILE_ENV}. Waits up to --wait seconds for the trace to be whole "
                    "(spans arrive in batches from each step) and says what is missing if it "
                    "is not.")
    show.add_argument("source", metavar="TRACE_ID|FILE")
    show.add_argument("--jaeger", metavar="URL",
                      help="Jaeger query/UI base URL, e.g. http://localhost:16686")
    show.add_argument("--file", metavar="FILE", type=Path,
                      help=f"OTLP JSON lines file to look the trace id up in "
                           f"(default: ${TRACE_FILE_ENV})")
    show.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                      help="wait up to SECONDS for the whole trace (every parent span, every "
                           "step of the route) before drawing what has arrived with an "
                           f"'incomplete: missing ...' line (default {DEFAULT_WAIT_S:g}; 0: "
                           "draw at once)")
    show.add_argument("--width", type=int, default=0,
                      help="output width in columns (default: the terminal's)")
    show.add_argument("--ascii", action="store_true", help="draw bars with # instead of blocks")
    show.set_defaults(func=_show)

    listing = trace_sub.add_parser("list", help="list the traces in an OTLP JSON lines file")
    listing.add_argument("file", metavar="FILE", type=Path, nargs="?",
                         help=f"OTLP JSON lines file (default: ${TRACE_FILE_ENV})")
    listing.set_defaults(func=_list)


def _width(requested: int) -> int:
    return requested if requested > 0 else shutil.get_terminal_size((120, 24)).columns


def _wants_ascii(flag: bool) -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
    return flag or "utf" not in encoding


def _show(args: argparse.Namespace) -> int:
    from stepsvc.client.trace import show as trace_show
    from stepsvc.client.trace.completeness import incomplete_line, missing_parts

    if not args.wait >= 0:
        print(f"stepchain trace show: --wait must be >= 0 seconds, got {args.wait:g}",
              file=sys.stderr)
        return 2
    load = _span_source(args)
    if load is None:
        return 2
    deadline = time.monotonic() + args.wait
    while True:
        try:
            spans = load()
            error: trace_show.TraceSourceError | None = None
            gaps = missing_parts(spans)
        except trace_show.TraceNotThereYet as exc:
            spans, error, gaps = [], exc, []
        except trace_show.TraceSourceError as exc:  # unreachable, unreadable: waiting won't help
            print(f"stepchain trace show: {exc}", file=sys.stderr)
            return 1
        if (error is None and not gaps) or time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    if error is not None:
        print(f"stepchain trace show: {error}", file=sys.stderr)
        return 1
    print(trace_show.render_waterfall(spans, _width(args.width),
                                      ascii_only=_wants_ascii(args.ascii)))
    if gaps:
        print(incomplete_line(gaps, args.wait))
    return 0


def _span_source(args: argparse.Namespace) -> Callable[[], list[Any]] | None:
    """A function reading the asked-for trace's spans afresh each call; None after a usage
    error was printed."""
    from stepsvc.client.trace import show as trace_show

    source: str = args.source
    if args.jaeger:
        return lambda: trace_show.fetch_jaeger_trace(args.jaeger, source)
    if Path(source).is_file() and not args.file:
        return lambda: trace_show.select_trace(trace_show.read_otlp_json_lines(source),
                                               where=source)
    if not trace_show.TRACE_ID_RE.match(source):
        print(f"stepchain trace show: {source!r} is neither a file nor a trace id "
              "(32 hex digits)", file=sys.stderr)
        return None
    file = args.file or (Path(os.environ[TRACE_FILE_ENV])
                         if os.environ.get(TRACE_FILE_ENV) else None)
    if file is None:
        print("stepchain trace show: where should trace "
              f"{source} come from? pass --jaeger URL (e.g. http://localhost:16686) "
              f"or --file FILE, or set {TRACE_FILE_ENV}", file=sys.stderr)
        return None
    return lambda: trace_show.select_trace(trace_show.read_otlp_json_lines(file), source,
                                           where=str(file))


def _list(args: argparse.Namespace) -> int:
    from stepsvc.client.trace import show as trace_show

    file = args.file or (Path(os.environ[TRACE_FILE_ENV])
                         if os.environ.get(TRACE_FILE_ENV) else None)
    if file is None:
        print(f"stepchain trace list: give FILE or set {TRACE_FILE_ENV}", file=sys.stderr)
        return 2
    try:
        spans = trace_show.read_otlp_json_lines(file)
    except trace_show.TraceSourceError as exc:
        print(f"stepchain trace list: {exc}", file=sys.stderr)
        return 1
    print(trace_show.render_trace_list(spans))
    return 0

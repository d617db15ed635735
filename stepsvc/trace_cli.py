"""``stepchain trace show|list``: draw a request's per-step waterfall in the terminal."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

#: Same as stepsvc.telemetry.TRACE_FILE_ENV, spelled out so `stepchain --help` does not import
#: grpc and OpenTelemetry just to register this command.
TRACE_FILE_ENV = "STEPCHAIN_TRACE_FILE"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``stepchain trace show`` and ``stepchain trace list``."""
    trace = sub.add_parser("trace", help="show a request's trace as a per-step waterfall")
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    show = trace_sub.add_parser(
        "show", help="draw one trace's waterfall",
        description="Draw one trace as a waterfall: a row per span, indented by depth, bars on "
                    "the trace's time axis. SOURCE is an OTLP JSON lines file (shows its latest "
                    "trace) or a 32-hex trace id read from --jaeger, --file or "
                    f"${TRACE_FILE_ENV}.")
    show.add_argument("source", metavar="TRACE_ID|FILE")
    show.add_argument("--jaeger", metavar="URL",
                      help="Jaeger query/UI base URL, e.g. http://localhost:16686")
    show.add_argument("--file", metavar="FILE", type=Path,
                      help=f"OTLP JSON lines file to look the trace id up in "
                           f"(default: ${TRACE_FILE_ENV})")
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
    from stepsvc import trace_show

    source: str = args.source
    try:
        if args.jaeger:
            spans = trace_show.fetch_jaeger_trace(args.jaeger, source)
        elif Path(source).is_file() and not args.file:
            spans = trace_show.select_trace(trace_show.read_otlp_json_lines(source),
                                            where=source)
        else:
            if not trace_show.TRACE_ID_RE.match(source):
                print(f"stepchain trace show: {source!r} is neither a file nor a trace id "
                      "(32 hex digits)", file=sys.stderr)
                return 2
            file = args.file or (Path(os.environ[TRACE_FILE_ENV])
                                 if os.environ.get(TRACE_FILE_ENV) else None)
            if file is None:
                print("stepchain trace show: where should trace "
                      f"{source} come from? pass --jaeger URL (e.g. http://localhost:16686) "
                      f"or --file FILE, or set {TRACE_FILE_ENV}", file=sys.stderr)
                return 2
            spans = trace_show.select_trace(trace_show.read_otlp_json_lines(file), source,
                                            where=str(file))
    except trace_show.TraceSourceError as exc:
        print(f"stepchain trace show: {exc}", file=sys.stderr)
        return 1
    print(trace_show.render_waterfall(spans, _width(args.width),
                                      ascii_only=_wants_ascii(args.ascii)))
    return 0


def _list(args: argparse.Namespace) -> int:
    from stepsvc import trace_show

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

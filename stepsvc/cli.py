"""The `stepchain` command: one argparse tree; each package registers its own subcommands.

Command modules are imported only to register their parsers; heavy imports happen inside the
command functions so `stepchain --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

#: Modules exposing ``register(subparsers)``; each adds its commands with ``set_defaults(func=)``.
COMMAND_MODULES = (
    "native.cli",
    "stepsvc.commands",
    "stepsvc.trace_cli",
    "topology.cli",
    "loadtest.cli",
)

BENCHMARKS = ("kernels", "chain", "tracing")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "bench" / f"{args.benchmark}.py"
    if not script.exists():
        print(f"stepchain bench: {script} not found; run from a stepchain source checkout",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.bench_args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepchain", description="gRPC step-chained image pipelines for Kubernetes")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # the command module itself is absent (a trimmed install): skip its commands;
            # a dependency missing *inside* it is a real error and surfaces
            if exc.name not in (name, name.partition(".")[0]):
                raise
            continue
        module.register(sub)
    bench = sub.add_parser("bench", help="run a benchmark from bench/ (prints a table, writes JSON)")
    bench.add_argument("benchmark", choices=BENCHMARKS)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `stepchain` command: one argparse tree; each package registers its own subcommands.

Command modules are imported only to register their parsers; heavy imports happen inside the
command functions so `stepchain --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules exposing ``register(subparsers)``; each adds its commands with ``set_defaults(func=)``.
COMMAND_MODULES = (
    "native.cli",
    "stepsvc.serve",
    "stepsvc.client.commands",
    "stepsvc.client.trace.cli",
    "topology.cli",
    "topology.jobs_cli",
    "topology.load.top",
    "loadtest.cli",
)


def _benchmarks() -> list[str]:
    """Modules of the installed `bench` package (empty when it is not installed)."""
    try:
        import bench
    except ModuleNotFoundError:
        return []
    return bench.names()


def _bench(args: argparse.Namespace) -> int:
    """Runs ``bench.<name>.main(args)`` from the installed package."""
    module = importlib.import_module(f"bench.{args.benchmark}")
    return int(module.main(list(args.bench_args)) or 0)


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
    bench = sub.add_parser(
        "bench", help="run a benchmark (bench.<name>: prints a table, writes JSON + Markdown)")
    bench.add_argument("benchmark", choices=_benchmarks())
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

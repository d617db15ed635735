"""`stepchain kernels`: list the native kernels, their aliases and parameters."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="list the native kernels and their parameters")
    p.add_argument("--json", action="store_true", help="print the parameter schemas as JSON")
    p.set_defaults(func=_kernels)


def _kernels(args: argparse.Namespace) -> int:
    from native.registry import EXEC_PARAMS, KERNELS, params_json_schema

    if args.json:
        print(json.dumps({name: {"aliases": list(spec.aliases), "doc": spec.doc,
                                 "params": params_json_schema(name)}
                          for name, spec in KERNELS.items()}, indent=2))
        return 0
    print(f"{'kernel':<14} {'aliases':<24} parameters")
    for spec in KERNELS.values():
        params = ", ".join(
            f"{p.name}={p.default if p.default is not None else '-'}" for p in spec.params)
        print(f"{spec.name:<14} {', '.join(spec.aliases) or '-':<24} {params or '-'}")
    print("\nevery kernel also takes: " + ", ".join(p.name for p in EXEC_PARAMS))
    return 0

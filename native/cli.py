"""`stepchain kernels`: every kernel (built-in or plugin) with its package, aliases and
parameters, and the plugins that failed to load with the reason."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="list the kernels (built-in and plugins) and their "
                                       "parameters, and plugins that failed to load")
    p.add_argument("--json", action="store_true",
                   help="print every kernel's specification and the failed plugins as JSON")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a plugin failed to load (image builds, CI)")
    p.set_defaults(func=_kernels)


def _kernels(args: argparse.Namespace) -> int:
    from native.registry import EXEC_PARAMS, catalog, entries, failures

    kernels, failed = entries(), failures()
    if args.json:
        print(json.dumps(catalog(), indent=2))
        return 1 if args.check and failed else 0
    rows = [(e.spec.name, e.source, ", ".join(e.spec.aliases) or "-",
             (", ".join(f"{p.name}={p.default if p.default is not None else '-'}"
                        for p in e.spec.params) or "-")
             + ("" if e.spec.releases_gil else "  (holds the GIL)"))
            for e in kernels]
    widths = [max(len(r[i]) for r in [("kernel", "package", "aliases", ""), *rows])
              for i in range(3)]
    for row in [("kernel", "package", "aliases", "parameters"), *rows]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False))
              + "  " + row[3])
    print("\nevery kernel also takes: " + ", ".join(p.name for p in EXEC_PARAMS))
    if failed:
        print("\nplugins that failed to load (their kernels are not available):")
        for f in failed:
            print(f"  {f.name:<16} {f.package} {f.version}: {f.reason}")
    return 1 if args.check and failed else 0

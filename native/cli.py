"""`stepchain kernels`: every kernel (built-in or plugin) with its package, aliases and
parameters, and the plugins that failed to load with the reason."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="list the kernels (built-in and plugins) and their "
                                       "parameters, and plugins that failed to load")
    p.add_argument("--json", action="store_true",
                   help="print every kernel's specification and the failed plugins as JSON")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a plugin failed to load (image builds, CI)")
    p.set_defaults(func=_kernels)


def describe(entry: Any) -> dict[str, Any]:
    """One kernel as JSON: what `stepchain kernels --json` prints and the console reads."""
    from native.spec import NotTileable

    spec = entry.spec
    try:
        tiling: dict[str, Any] = {"tileable": True,
                                  "halo_default": spec.reach(spec.validate({})).halo}
    except NotTileable as exc:
        tiling = {"tileable": False, "reason": str(exc)}
    return {"name": spec.name, "aliases": list(spec.aliases), "doc": spec.doc,
            "package": entry.package, "version": entry.version, "builtin": entry.builtin,
            "entry_point": entry.entry_point, "output": spec.output,
            "resizes": spec.resizes,
            "output_bound": spec.output_bound, "releases_gil": spec.releases_gil,
            "tiling": tiling, "params": spec.params_json_schema()}


def _kernels(args: argparse.Namespace) -> int:
    from native.registry import EXEC_PARAMS, entries, failures

    kernels, failed = entries(), failures()
    if args.json:
        print(json.dumps({"kernels": [describe(e) for e in kernels],
                          "failed": [{"name": f.name, "package": f.package,
                                      "version": f.version, "entry_point": f.entry_point,
                                      "reason": f.reason} for f in failed]}, indent=2))
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

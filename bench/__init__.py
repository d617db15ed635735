"""stepchain's benchmarks: one module per benchmark, each run as ``stepchain bench <name> [args]``.

A benchmark is a module ``bench/<name>.py`` (a name not starting with ``_``) with
``main(argv: Sequence[str] | None = None) -> int``. ``stepchain bench <name> ARGS...`` imports
``bench.<name>`` from the installed package and returns ``main(ARGS)``; ``python -m
bench.<name>`` does the same. Nothing edits ``sys.path``: every import is a package import, and
child processes are started with ``sys.executable -m ...`` (the installed packages, no
``PYTHONPATH``). Each benchmark prints a table and writes JSON + Markdown into ``--out``
(default :data:`RESULTS_DIR`).
"""

from __future__ import annotations

import json
import os
import pkgutil
from pathlib import Path
from typing import Any

#: Default output folder: ``bench/results`` beside this package (the checkout's folder in the
#: editable install ``make venv`` makes).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def names() -> list[str]:
    """The benchmark modules of this package, sorted (``kernels``, ``chain``, ...)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and not m.ispkg)


def save_results(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """Prints `markdown` and writes it as ``<name>.md`` beside ``<name>.json`` (`result`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


def write_results(out: Path, name: str, result: dict[str, Any], title: str, command: str,
                  body: str) -> None:
    """Prints `body` with the load line and writes ``<name>.json`` (`result`) and ``<name>.md``.

    `result` carries ``load_average_before``; ``load_average_after`` is added here. Every
    result says the machine was shared, since these figures were taken beside other work."""
    result.setdefault("machine", os.uname().machine)
    result.setdefault("cpus", os.cpu_count())
    result["shared_machine"] = True
    result["load_average_after"] = list(os.getloadavg())
    load = (f"load average before {result['load_average_before']}, after "
            f"{result['load_average_after']} ({os.cpu_count()} CPUs, shared machine)")
    print(load)
    save_results(out, name, result, f"# {title}\n\n`{command}`; {load}.\n\n{body}\n")

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

import pkgutil
from pathlib import Path

#: Default output folder: ``bench/results`` beside this package (the checkout's folder in the
#: editable install ``make venv`` makes).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def names() -> list[str]:
    """The benchmark modules of this package, sorted (``kernels``, ``chain``, ...)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and not m.ispkg)

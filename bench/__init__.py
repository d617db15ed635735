"""stepchain's benchmarks: one module per benchmark, each run as ``stepchain bench <name> [args]``.

A benchmark is a module ``bench/<name>.py`` (a name not starting with ``_``) with
``main(argv: Sequence[str] | None = None) -> int``. ``stepchain bench <name> ARGS...`` imports
``bench.<name>`` from the installed package and returns ``main(ARGS)``; ``python -m
bench.<name>`` does the same. Nothing edits ``sys.path``: every import is a package import, and
child processes are started with ``sys.executable -m ...`` (the installed packages, no
``PYTHONPATH``). Each benchmark prints a table and writes JSON + Markdown into ``--out``
(default :data:`bench._harness.RESULTS_DIR`). What they share lives in private modules:
:mod:`bench._harness` (results, timing, step processes, requests) and :mod:`bench._echo` (the
floors a hop is compared with: TCP and gRPC echoes, an HTTP+JPEG step).
"""

from __future__ import annotations

import pkgutil


def names() -> list[str]:
    """The benchmark modules of this package, sorted (``kernels``, ``chain``, ...)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and not m.ispkg)

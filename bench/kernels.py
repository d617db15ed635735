"""Benchmark: every native kernel against OpenCV and Pillow at 1080p and 4K, threads 1..N.

Prints a table and writes ``bench/results/kernels.json``, ``kernels.md`` and ``kernels.png``
(speed-up vs threads with an Amdahl fit). The logic lives in :mod:`native.benchmark`.

Usage: ``python bench/kernels.py [--sizes 1920x1080 3840x2160] [--threads 1 2] [--repeat 9]
[--quick] [--out DIR]`` (``PYTHONPATH=.`` from a checkout, or ``stepchain bench kernels``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from native.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Suite-wide setup: the repo root and the generated proto package importable from a checkout."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "protos"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

"""The tile-loss demo inverted, as a test: replicas SIGKILLed mid-job, no tile missing, the
output equal to the untiled run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_killing_replicas_while_tiles_are_in_flight_loses_no_tile() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tile_chaos.py"), "--size", "384",
         "--tile", "64", "--kills", "3"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "expected 36, received 36, missing 0, retried" in out
    assert out.count("SIGKILL blur replica") == 3
    assert "killed 3 blur replica(s); the local backend restarted" in out
    assert "output equals the untiled reference: yes" in out

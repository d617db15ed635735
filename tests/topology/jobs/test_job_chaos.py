"""The chaos example as a test: the service and a worker SIGKILLed three times mid-job, and
the job still ends succeeded with one output per input, byte-identical to an undisturbed run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_sigkilling_the_service_and_a_worker_three_times_loses_and_duplicates_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "job_chaos.py"), "--images", "24",
         "--kills", "3", "--timeout", "240"],
        capture_output=True, text=True, timeout=420, cwd=ROOT)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("SIGKILL the topology service; starting it again") == 3
    assert out.count(": SIGKILL worker pid ") == 3
    assert "succeeded after 3 service restart(s)" in out
    assert "expected 24, written 24, duplicated 0, missing 0" in out
    assert "outputs byte-identical to the uninterrupted run: yes (0 differ)" in out

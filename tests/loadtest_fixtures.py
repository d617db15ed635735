"""Helpers for the load-test tests: running ``stepchain loadtest`` / Locust as subprocesses.

The step servers they load are :class:`step_fixtures.ProcessPipeline`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """Environment for child processes: one OpenMP thread, no tracing, no LOCUST_* settings,
    no PYTHONPATH (children import the installed stepchain, as a user's would)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LOCUST_")) and k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_stepchain(args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``stepchain ARGS`` from the checkout, output captured."""
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", *args], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def run_locust(args: Sequence[str], *, cwd: Path, timeout: float
               ) -> subprocess.CompletedProcess[str]:
    """``locust -f loadtest/locustfile.py ARGS`` (from ``cwd``, not the checkout), output captured."""
    locust = Path(sys.executable).parent / "locust"
    return subprocess.run([str(locust), "-f", str(ROOT / "loadtest" / "locustfile.py"), *args],
                          cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_locust(args: Sequence[str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``locust -f loadtest/locustfile.py ARGS`` in the background, output into ``log``;
    the caller stops it (:func:`stop_locust`)."""
    locust = Path(sys.executable).parent / "locust"
    with log.open("wb") as handle:
        return subprocess.Popen([str(locust), "-f", str(ROOT / "loadtest" / "locustfile.py"),
                                 *args], cwd=cwd, env=child_env(),
                                stdout=handle, stderr=subprocess.STDOUT)


def stop_locust(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM (Locust writes its reports and exits), then SIGKILL if it will not."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()

"""`stepchain bench <name>` runs `bench.<name>.main(argv)` from the installed `bench` package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from stepsvc.cli import main


def test_every_benchmark_module_is_listed() -> None:
    assert {"kernels", "chain", "tracing"} <= set(bench.names())
    assert all(not name.startswith("_") for name in bench.names())


def test_stepchain_bench_runs_the_kernel_benchmark_with_its_arguments(tmp_path: Path) -> None:
    assert main(["bench", "kernels", "--quick", "--threads", "1", "--kernels", "grayscale",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert {r["label"] for r in doc["results"]} == {"grayscale"}


def test_stepchain_bench_rejects_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "sepia"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'sepia'" in err and "kernels" in err


@pytest.mark.slow
def test_benchmarks_import_from_the_installed_package_outside_the_checkout(
        tmp_path: Path) -> None:
    """No sys.path/PYTHONPATH help: run from an unrelated folder with a clean environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in ("kernels", "chain", "tracing"):
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout

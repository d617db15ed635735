"""The kernel benchmark runs end to end and writes its three result files (timings not checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.kernels import main, serial_fraction
from topology.load.amdahl import speedup


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plot(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--threads", "1", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert doc["config"]["sizes"] == ["160x96"]
    assert doc["config"]["threads"] == [1, 2]
    labels = {r["label"] for r in doc["results"]}
    assert labels == {"identity", "grayscale", "gaussian_blur", "sharpen", "edges", "brightness",
                      "resize (bilinear)", "resize (bicubic)", "deblur", "classify"}
    row = next(r for r in doc["results"] if r["label"] == "gaussian_blur" and r["threads"] == 2)
    assert row.keys() >= {"size", "kernel", "threads", "stepchain_ms", "opencv_ms", "pillow_ms",
                          "vs_opencv", "pillow_speedup", "opencv_op", "pillow_op"}
    assert row["opencv_ms"] > 0 and row["pillow_ms"] > 0 and row["stepchain_ms"] > 0
    scaling = doc["scaling"]["160x96"]["gaussian_blur"]
    assert scaling["threads"] == [1, 2] and scaling["speedup"][0] == pytest.approx(1.0)
    targets = {t["target"] for t in doc["targets"]}
    assert "resize (bicubic) time / OpenCV time, 2 thread(s)" in targets
    assert any(t.startswith("gaussian_blur speed-up 1 -> 2 threads (wall)") or
               t.startswith("gaussian_blur GB/s at 2 threads") for t in targets)
    assert set(doc["copy_bandwidth_gb_per_s"]["160x96"]) == {"1", "2"}
    assert row["roofline"] > 0 and row["bytes"] == 2 * 160 * 96 * 3
    one = next(r for r in doc["results"] if r["label"] == "gaussian_blur" and r["threads"] == 1)
    assert one["vs_opencv_cpu"] > 0 and row["vs_opencv_cpu"] is None  # CPU ratio: 1 thread only
    assert scaling["memory_bound"] in (True, False)
    assert row["cpu_speedup"] is None or row["cpu_speedup"] > 0
    md = (tmp_path / "kernels.md").read_text()
    assert "| kernel | threads | stepchain ms | OpenCV ms |" in md
    assert "## Targets" in md and "| gaussian_blur | 2 |" in md
    assert "Load average" in md and "shared" in md and "Copy bandwidth" in md
    assert (tmp_path / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote " in capsys.readouterr().out


def test_serial_fraction_is_what_the_amdahl_fit_leaves_serial() -> None:
    threads = [1, 2, 4, 8]
    assert serial_fraction(threads, [speedup(0.9, t) for t in threads]) == pytest.approx(0.1)
    assert serial_fraction([1], [1.0]) is None


@pytest.mark.slow
def test_benchmark_can_run_a_subset_of_kernels_by_alias(tmp_path: Path) -> None:
    assert main(["--quick", "--threads", "1", "--kernels", "blur", "grayscale",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert {r["label"] for r in doc["results"]} == {"gaussian_blur", "grayscale"}


def test_benchmark_rejects_unknown_kernel_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--quick", "--kernels", "sepia"])
    assert "unknown kernel type 'sepia'" in capsys.readouterr().err

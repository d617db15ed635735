"""`stepchain bench plugins`: each plugin beside a built-in of similar cost, through a step
server too, with the JSON and Markdown a reader checks the figures in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepsvc.cli import main


@pytest.mark.slow
def test_bench_plugins_reports_every_pair_in_process_through_a_step_and_concurrently(
        tmp_path: Path) -> None:
    pytest.importorskip("acme_boxblur", reason="the example plugins are not installed in this "
                                               "venv: run `make venv`")
    assert main(["bench", "plugins", "--size", "96x64", "--requests", "2", "--gil-rounds", "1",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "plugins.json").read_text())
    kernels = {"gaussian_blur", "acme.box_blur", "brightness", "acme.sepia", "sharpen",
               "acme.denoise"}
    assert set(doc["in_process"]) == set(doc["hop"]) == set(doc["overlap"]) == kernels
    assert set(doc["dispatch"]) == {"acme.box_blur", "acme.sepia", "acme.denoise"}
    for name in kernels:
        a = doc["in_process"][name]
        assert a["cpu_ms_1"] > 0 and a["cpu_ms_2"] > 0 and 0 < a["cores_used_2"] <= 2.5
        hop = doc["hop"][name]
        assert hop["kernel"]["median_ms"] > 0 and hop["round_trip"]["n"] == 2
    assert doc["overlap"]["acme.sepia"]["releases_gil"] is False
    assert set(doc["gil"]) == kernels | {"control: sorted() holding the GIL"}
    assert all(r["ticker_rate_beside_sleep"] > 0 for r in doc["gil"].values())
    text = (tmp_path / "plugins.md").read_text()
    assert "| C/OpenMP | `acme.box_blur` | acme-boxblur 0.1.0 |" in text
    assert "load average before" in text
    assert "| C/OpenMP | `acme.box_blur` | " in text.split("## (a) CPU time")[1]

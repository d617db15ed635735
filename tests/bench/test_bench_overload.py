"""`stepchain bench overload` and `bench soak` in quick mode: real step processes, tiny frames,
a second of load; they write their tables and every call is answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import overload, soak


@pytest.mark.slow
def test_overload_quick_run_answers_every_call_and_writes_its_results(tmp_path: Path) -> None:
    code = overload.main(["--duration", "1", "--saturation-seconds", "1", "--rates", "1,3",
                          "--clients", "2", "--width", "64", "--height", "48",
                          "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "overload.json").read_text())
    assert doc["saturation"]["throughput_rps"] > 0
    assert [r["factor"] for r in doc["rounds"]] == [1.0, 3.0]
    for r in doc["rounds"]:
        assert r["hung"] == 0 and r["answered"] == r["sent"] > 0
    text = (tmp_path / "overload.md").read_text()
    assert "Shared machine" in text and "load average" in text


@pytest.mark.slow
def test_soak_quick_run_samples_every_step_between_requests(tmp_path: Path) -> None:
    assert soak.main(["--requests", "30", "--sample-every", "10", "--width", "64",
                      "--height", "48", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["codes"] == {"OK": 30}
    assert [s["type"] for s in doc["steps"]] == ["grayscale", "gaussian_blur", "identity"]
    idle = [s for s in doc["samples"] if s["idle"]]
    assert [s["requests"] for s in idle] == [0, 30, 30]
    assert all(s["rss_end_mib"] > 0 for s in doc["steps"])

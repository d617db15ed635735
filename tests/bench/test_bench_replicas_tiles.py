"""Quick modes of the replicas and tiles benchmarks: they run, account for every request and
tile, and write their results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import replicas, tiles


@pytest.mark.slow
def test_replicas_benchmark_counts_each_replicas_requests(tmp_path: Path) -> None:
    assert replicas.main(["--replicas", "1,3", "--requests", "12", "--clients", "3",
                          "--passes", "1", "--size", "32", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "replicas.json").read_text())["runs"]
    assert [r["replicas"] for r in runs] == [1, 3]
    assert sum(runs[1]["per_replica"].values()) == 12 and len(runs[1]["per_replica"]) == 3
    assert (tmp_path / "replicas.md").read_text().startswith("# Replicas")


@pytest.mark.slow
def test_tiles_benchmark_assembles_an_identical_image(tmp_path: Path) -> None:
    assert tiles.main(["--side", "700", "--tile", "256", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "tiles.json").read_text())["result"]
    assert (result["tiles"], result["done"], result["failed"]) == (9, 9, 0)
    assert result["identical"] is True and result["client_peak_rss_mb"] > 0

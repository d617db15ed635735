"""`stepchain bench peers`: the harness (rows, targets, tables) and a short real run of
stepchain's local backend and the Flask-era HTTP+JPEG steps; Ray Serve and BentoML only where
they are installed (``make bench-peers`` puts them in a venv of their own)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import peers
from bench._peers.chains import chains, from_body, run_in_process, shape_headers
from bench._peers.load import Refused, closed_loop
from bench._peers.meter import TreeMeter
from bench._peers.systems import missing
from stepsvc.cli import main

FIELDS = {"system", "chain", "concurrency", "throughput_rps", "p50_ms", "p99_ms",
          "cpu_ms_per_request", "peak_rss_mb", "startup_s"}


def _row(system: str, chain: str, c: int, rps: float, p99: float) -> dict[str, Any]:
    return {"system": system, "chain": chain, "concurrency": c, "throughput_rps": rps,
            "p99_ms": p99}


def test_targets_compare_stepchain_with_the_best_peer_in_each_cell() -> None:
    rows = [_row("stepchain", "light", 4, 30.0, 100.0), _row("ray-serve", "light", 4, 10.0, 400.0),
            _row("bentoml", "light", 4, 12.0, 150.0), _row("stepchain", "heavy", 1, 2.0, 600.0),
            _row("bentoml", "heavy", 1, 2.5, 500.0)]
    got = {(t["figure"], t["concurrency"]): t for t in peers.targets(rows)}
    light_rps = got[("light: throughput / best peer's", 4)]
    assert (light_rps["peer"], light_rps["ratio"], light_rps["met"]) == ("bentoml", 2.5, True)
    light_p99 = got[("light: p99 / best peer's", 4)]  # the best peer's p99 is the lowest
    assert (light_p99["peer"], light_p99["ratio"], light_p99["met"]) == ("bentoml", 0.667, False)
    heavy = got[("heavy: throughput / best peer's", 1)]
    assert (heavy["ratio"], heavy["met"]) == (0.8, False)


def test_raw_pixels_over_http_name_what_is_wrong() -> None:
    img = np.zeros((4, 6, 3), np.uint8)
    assert from_body(img.tobytes(), shape_headers(img)).shape == (4, 6, 3)
    with pytest.raises(ValueError, match="x-height"):
        from_body(img.tobytes(), {})
    with pytest.raises(ValueError, match="72 bytes, 4x6x1 needs 24"):
        from_body(img.tobytes(), {**shape_headers(img), "x-channels": "1"})


def test_both_chains_run_in_process_and_a_missing_peer_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    every = chains(heavy_passes=2)
    assert run_in_process(every["light"], img, 1).shape == (32, 48, 1)
    assert run_in_process(every["heavy"], img, 1).shape == (64, 96, 3)
    assert missing("stepchain") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "make bench-peers" in (missing("bentoml") or "")


def test_a_closed_loop_waits_for_answers_from_a_system_slower_than_its_window() -> None:
    """Four callers of a 0.2 s call and a 0.05 s window: the run goes on until every caller
    got two answers (none would finish inside the window), and counts each; refusals apart."""
    calls = iter(range(1000))

    def factory() -> Any:
        def call() -> None:
            time.sleep(0.2)
            if next(calls) % 5 == 4:
                raise Refused("at its limit")
        return call

    meter = TreeMeter([os.getpid()])
    try:
        run = closed_loop(factory, 4, 0.05, meter, warmup_calls=0)
    finally:
        meter.close()
    assert run.completed + run.refused >= 8 and run.refused >= 1 and run.errors == 0
    assert 0.35 <= run.seconds < 2.0 and min(run.latencies_ms) >= 200
    assert run.throughput_rps == run.completed / run.seconds


def _check(out: Path, systems: set[str]) -> dict[str, Any]:
    doc = json.loads((out / "peers.json").read_text())
    assert doc["failures"] == [], doc["failures"]
    assert {r["system"] for r in doc["rows"]} == systems
    for r in doc["rows"]:
        assert set(r) >= FIELDS, r
        assert r["errors"] == 0 and r["requests"] > 0, r
        assert r["cpu_ms_per_request"] > 0 and r["peak_rss_mb"] > 0 and r["startup_s"] > 0, r
    for info in doc["systems"].values():
        assert info["left_behind"] == [], info
    assert "| system | callers | req/s |" in (out / "peers.md").read_text()
    assert (out / "peers.png").read_bytes()[:4] == b"\x89PNG"
    return doc


@pytest.mark.slow
def test_stepchain_bench_peers_runs_stepchain_and_the_flask_shape(tmp_path: Path) -> None:
    """A short real run: ``topology serve`` + POST /pipeline, and three HTTP+JPEG steps."""
    assert main(["bench", "peers", "--quick", "--systems", "stepchain", "flask-jpeg",
                 "--chains", "light", "--concurrency", "2", "--seconds", "1",
                 "--open-seconds", "1", "--size", "320x240", "--out", str(tmp_path)]) == 0
    doc = _check(tmp_path, {"stepchain", "flask-jpeg"})
    answers = {k: v["answer"] for k, v in doc["systems"].items()}
    assert answers == {"stepchain/light": "exact", "flask-jpeg/light": "shape (JPEG is lossy)"}
    assert {r["concurrency"] for r in doc["rows"]} == {2, "open"}
    # the local backend's processes: the topology service and one per step
    cpu = next(r for r in doc["rows"] if r["system"] == "stepchain")
    assert any(name.startswith("stepchain step serve") for name in
               cpu["cpu_ms_per_request_by_process"]), cpu


@pytest.mark.slow
@pytest.mark.skipif(missing("ray-serve") is not None or missing("bentoml") is not None,
                    reason="Ray Serve and BentoML are installed by make bench-peers")
def test_stepchain_bench_peers_runs_ray_serve_and_bentoml(tmp_path: Path) -> None:
    assert main(["bench", "peers", "--quick", "--systems", "ray-serve", "bentoml",
                 "--chains", "light", "--concurrency", "2", "--seconds", "1",
                 "--open-seconds", "0", "--size", "320x240", "--out", str(tmp_path)]) == 0
    doc = _check(tmp_path, {"ray-serve", "bentoml"})
    assert {v["answer"] for v in doc["systems"].values()} == {"exact"}

"""`stepchain top`'s frame at a terminal's default 80 columns (pure: a report in, text out):
nothing cut, no phrase split over two lines, long sentences indented under their first word."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.console import Console

from topology.load.top import render

REASON = ("its host's 2 cores are 98% busy (every process on it together) while the step runs "
          "at 140% against a 70% target; 9.0 req/s x 120.0 ms CPU per request = 1.08 cores "
          "busy; a replica has 2 core(s) (the host's cores): 1.08 / (2 x 70%) = 0.77 -> "
          "1 replica. More replicas on this host add no CPU")


def step(step_id: int, step_type: str, action: str, bottleneck: bool = False) -> dict[str, Any]:
    return {"step_id": step_id, "step_type": step_type, "replicas": 1, "busy": 3,
            "max_inflight": 16, "utilisation": 1.4 if bottleneck else 0.05, "queued": 0,
            "max_queue": 64, "requests_per_s": 9.0, "p95_s": 0.8, "error_pct": 0.0,
            "cpu_pct": 97.0, "next_steps": [{"step_id": 2, "reachable": step_id != 0}],
            "host_busy_pct": 99.6, "host_cpu_cores": 2.0,
            "advice": {"action": action, "replicas": 1, "advised_replicas": 1,
                       "bottleneck": bottleneck, "confidence": "high",
                       "confidence_score": 0.93, "kubectl": "",
                       "reason": REASON if bottleneck else "within the target"}}


def frame(width: int) -> list[str]:
    report = {"pipeline_id": "demo", "target_utilisation": 0.7, "degraded": True,
              "totals": {"requests_per_s": 9.0, "refusals_per_s": 0.0, "cancelled_per_s": 0.4,
                         "cpu_pct": 190.0, "window_s": 12.5},
              "problems": ["step 0 cannot reach step 2: channel TRANSIENT_FAILURE; its "
                           "requests fail over to its other next steps"],
              "steps": [step(0, "classify", "maintain"),
                        step(1, "grayscale", "host is the limit"),
                        step(2, "deblur", "host is the limit", bottleneck=True),
                        step(3, "resize", "host is the limit")]}
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render([report], "URL", 0.0,
                                                                   width=width))
    return out.getvalue().splitlines()


def test_an_80_column_frame_keeps_each_phrase_whole_and_indents_what_wraps() -> None:
    lines = frame(80)
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines) and "…" not in text
    assert re.search(r"^pipeline demo  DEGRADED  window 12\.5 s  target 70%$", text, re.M), text
    assert re.search(r"^  in 9\.0 req/s .* cancelled 0\.4/s  CPU 190%$", text, re.M), text
    assert any(line.startswith("2 deblur*") for line in lines), text  # the bottleneck mark
    # A long sentence wraps under its first word, never back at the margin.
    problem = lines.index(next(line for line in lines if line.startswith("  ! step 0")))
    assert lines[problem + 1].startswith("    ") and lines[problem + 1].strip(), text
    advice = lines.index(next(line for line in lines if line.startswith("  step 2 ")))
    assert all(line.startswith(" " * 9) for line in lines[advice + 1:advice + 4]), text
    assert "More replicas on this host add no CPU" in " ".join(text.split())
    # The bottleneck says why; the other steps the host holds back take a line each, so a
    # 4-step pipeline on a saturated host fits a terminal's 24 rows.
    assert "  step 3 host is the limit 1->1: its host's 2 cores are 100% busy" in lines, text
    assert len(lines) <= 24, text

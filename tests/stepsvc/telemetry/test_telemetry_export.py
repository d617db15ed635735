"""An unreachable OTLP collector costs a CLI or a step about a second at exit, and one log line.

The OTLP exporter retries an unreachable collector until ``OTEL_EXPORTER_OTLP_TIMEOUT``; the
tests set it to 30 s, so an exit that waited for the exporter would take 30 s, and the bounds
asserted here (well above the 1 s bound, well below 30 s) hold on a loaded machine.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage
from step_fixtures import free_port, in_process, noisy_image, step_env

from stepsvc.telemetry import EXPORT_SHUTDOWN_TIMEOUT_S, Tracing

#: What an exit that waited for the exporter's retries would take.
EXPORTER_TIMEOUT_S = 30
#: Far above the 1 s bound plus a loaded machine's slack, far below EXPORTER_TIMEOUT_S.
GENEROUS_S = 12.0


def unreachable_collector_env() -> dict[str, str]:
    """OTLP over gRPC to a loopback port nothing listens on (connection refused: retried)."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORTER_TIMEOUT_S)}


def test_shutdown_gives_up_on_an_unreachable_collector_after_the_bound_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    env = unreachable_collector_env()
    tracing = Tracing.from_env("export-test", env=env)
    assert tracing.enabled
    for n in range(3):
        with tracing.span(f"work {n}"):
            pass
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    flushed = tracing.force_flush(EXPORT_SHUTDOWN_TIMEOUT_S)
    stopped = tracing.shutdown()
    elapsed = time.monotonic() - started
    assert (flushed, stopped) == (False, False)  # the spans did not reach anyone
    assert elapsed < GENEROUS_S
    ours = [r for r in caplog.records if r.name.startswith("stepsvc.telemetry")]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert ours[0].levelno == logging.WARNING
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] in ours[0].getMessage()
    retries = [r for r in caplog.records if r.getMessage().startswith("Transient error")]
    assert retries == []  # the exporter's per-retry warnings are not repeated to the user


def test_shutdown_with_a_reachable_file_exporter_exports_everything(tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    tracing = Tracing.from_env("export-test", env={"STEPCHAIN_TRACE_FILE": str(trace_file)})
    with tracing.span("work"):
        pass
    assert tracing.shutdown() is True
    assert '"name":"work"' in trace_file.read_text()


def test_submit_with_an_unreachable_collector_returns_promptly_with_one_line_about_it(
        tmp_path: Path) -> None:
    photo = tmp_path / "in.png"
    buf = io.BytesIO()
    PILImage.fromarray(noisy_image(48, 64)).save(buf, format="PNG")
    photo.write_bytes(buf.getvalue())
    with in_process() as pipe:
        server = pipe.add(0, [{"id": 0, "type": "grayscale"}])
        env = {**step_env(), **unreachable_collector_env()}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "stepsvc.cli", "submit", str(photo), "--target",
             server.address, "--out", str(tmp_path / "out.png")],
            env=env, capture_output=True, text=True, timeout=EXPORTER_TIMEOUT_S * 2)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").stat().st_size > 0
    assert elapsed < GENEROUS_S, f"submit took {elapsed:.1f} s"
    about_export = [line for line in done.stderr.splitlines() if "not exported" in line]
    assert len(about_export) == 1, done.stderr
    assert "Transient error" not in done.stderr

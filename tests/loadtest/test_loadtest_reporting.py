"""What load-test users send and report, and how results are read and plotted (no servers)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stepchain.v1 import step_pb2

from loadtest import entries, options, payload
from loadtest.interval_stats import IntervalStats, step_name
from loadtest.plot import csv_prefix, plot_run
from loadtest.results import latest_progress, read_request_seconds
from loadtest.step_format import REQUEST_HEADER, STEP_HEADER, request_cells, step_cells


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 4), ("P", 3)])
def test_request_carries_the_image_as_raw_pixels(tmp_path: Path, mode: str,
                                                 channels: int) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(pixels).convert(mode).save(path)
    request = payload.build_request(path, threads=2, passes=3)
    assert (request.image.width, request.image.height, request.image.channels) == (
        20, 12, channels)
    assert request.image.encoding == step_pb2.IMAGE_ENCODING_RAW
    assert len(request.image.data) == 20 * 12 * channels
    if mode == "RGB":
        assert request.image.data == pixels.tobytes()
    assert (request.overrides.threads, request.overrides.passes) == (2, 3)
    assert request.request_id == ""  # the entry step generates one per request


def test_without_an_image_the_built_in_pattern_is_sent() -> None:
    request = payload.build_request(None)
    assert (request.image.width, request.image.height, request.image.channels) == (256, 256, 3)
    assert len(set(request.image.data)) > 100  # a real pattern, not a blank image


def test_send_encoded_sends_the_file_bytes_with_their_encoding(tmp_path: Path) -> None:
    path = tmp_path / "in.jpg"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="JPEG")
    request = payload.build_request(path, send_encoded=True)
    assert request.image.encoding == step_pb2.IMAGE_ENCODING_JPEG
    assert request.image.data == path.read_bytes()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image": "/nonexistent/x.png"}, "--image /nonexistent/x.png: no such file"),
    ({"threads": 257}, "--threads must be between 0 (the step's own) and 256, got 257"),
    ({"passes": -1}, "--passes must be between 0 (the step's own) and 1000, got -1"),
    ({"send_encoded": True}, "--send-encoded needs --image FILE"),
])
def test_bad_request_options_are_rejected_naming_the_option(kwargs: dict[str, object],
                                                            message: str) -> None:
    with pytest.raises(ValueError) as err:
        payload.build_request(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_a_file_that_is_not_an_image_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        payload.build_request(path)
    bmp = tmp_path / "x.bmp"
    Image.new("RGB", (4, 4)).save(bmp)
    with pytest.raises(ValueError, match="steps decode only PNG and JPEG"):
        payload.build_request(bmp, send_encoded=True)


def test_steps_are_named_by_id_and_type_and_requests_by_pipeline() -> None:
    timings = [step_pb2.StepTiming(step_id=1, step_type="identity"),
               step_pb2.StepTiming(step_id=2, step_type="")]
    assert [step_name(t) for t in timings] == ["step-1:identity", "step-2:unknown"]
    assert step_name(timings[0], "shop") == "shop/step-1:identity"
    assert entries.request_name(None) == "Process"
    assert entries.request_name("shop") == "Process shop"


def test_grpc_failures_lead_with_the_status_code_name() -> None:
    error = entries.GrpcStatusError("RESOURCE_EXHAUSTED", "step 1 queue full")
    assert str(error) == "RESOURCE_EXHAUSTED: step 1 queue full"
    assert "RESOURCE_EXHAUSTED: step 1 queue full" in repr(error)


@pytest.mark.parametrize(("text", "seconds"), [("180", 180.0), ("2.5", 2.5), ("90s", 90.0),
                                               ("3m", 180.0), ("1h30m", 5400.0)])
def test_duration_takes_seconds_or_locust_time_spans(text: str, seconds: float) -> None:
    assert options.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "3x", "-5"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        options.parse_duration(text)


def test_command_line_options_round_trip_to_locust_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    options.add_load_options(parser)
    parsed = parser.parse_args(["--curve", "spike", "--duration", "3m", "--spike-at", "30",
                                "--base-users", "2", "--passes", "5"])
    words = options.locust_arguments(parsed)
    again = parser.parse_args(words)
    assert vars(again) == vars(parsed)
    curve = options.build_curve(again, users=20, spawn_rate=None)
    assert (curve.name, curve.duration, curve.users_at(30), curve.users_at(29)) == (
        "spike", 180.0, 20, 2)


def test_progress_is_the_last_written_second_and_the_totals_so_far(tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    write_run(prefix, seconds=6)
    progress = latest_progress(read_request_seconds(Path(f"{prefix}_requests.csv")))
    assert progress is not None
    # write_run: 2 users send 10 requests a second, 10 users 50 in seconds 4 and 5
    assert (progress.users, progress.rps, progress.requests, progress.failures) == (
        10, 50.0, 4 * 10 + 2 * 50, 1)
    assert latest_progress([]) is None


def write_run(prefix: Path, seconds: int = 12) -> None:
    """A spike run's CSV: 2 users, 10 between seconds 4 and 8, two steps, sub-ms kernels."""
    stats = IntervalStats()
    t0 = 1_800_000_000
    for i in range(seconds):
        target = 10 if 4 <= i < 8 else 2
        stats.note_users(t0 + i, target, target)
        for n in range(target * 5):
            stats.record_request(t0 + i, 3.0 * target + n % 3, failed=n == 0 and i == 5)
            stats.record_steps(t0 + i, [
                step_pb2.StepTiming(step_id=1, step_type="identity", kernel_ms=0.012,
                                    queue_wait_ms=0.25 * target, total_ms=1.0),
                step_pb2.StepTiming(step_id=2, step_type="grayscale", kernel_ms=0.4 + n / 100,
                                    total_ms=0.5)])
    request_rows, step_rows = stats.close_before()
    Path(f"{prefix}_requests.csv").write_text("\n".join(
        ",".join(cells) for cells in [REQUEST_HEADER, *map(request_cells, request_rows)]) + "\n")
    Path(f"{prefix}_steps.csv").write_text("\n".join(
        ",".join(cells) for cells in [STEP_HEADER, *map(step_cells, step_rows)]) + "\n")


@pytest.mark.slow
def test_plot_is_drawn_from_the_per_second_csv_and_refuses_a_run_without_seconds(
        tmp_path: Path) -> None:
    prefix = tmp_path / "loadtest"
    write_run(prefix)
    png = plot_run(prefix, tmp_path / "out.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 800
    # Any of the run's CSV files names the run too.
    assert csv_prefix(tmp_path / "loadtest_steps.csv") == prefix
    empty = tmp_path / "empty"
    Path(f"{empty}_requests.csv").write_text(",".join(REQUEST_HEADER) + "\n")
    with pytest.raises(ValueError, match="no seconds to plot"):
        plot_run(empty, tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--request-timeout", "0"], "--request-timeout must be > 0 seconds, got 0.0"),
    (["--think-time", "-1"], "--think-time must be >= 0 seconds, got -1.0"),
])
def test_bad_request_settings_are_rejected_naming_the_option(argv: list[str],
                                                             message: str) -> None:
    parser = argparse.ArgumentParser()
    options.add_load_options(parser)
    with pytest.raises(ValueError) as err:
        options.check_request_settings(parser.parse_args(argv))
    assert str(err.value) == message

"""`stepchain step serve`, `submit` and `request`: arguments and the errors a user sees."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image as PILImage
from step_fixtures import noisy_image
from stepchain.v1 import step_pb2

from stepsvc.cli import build_parser, main
from stepsvc.frames import codec
from stepsvc.limits import DEFAULT_MAX_PIXELS

TWO_STEPS = {"pipeline_id": "p1", "step_id": 1,
             "steps": [{"id": 1, "type": "blur", "next_step": 2}, {"id": 2, "type": "grayscale"}]}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    PILImage.fromarray(noisy_image(10, 12, 3)).save(path)
    return path


def test_serve_needs_discovery_when_the_step_has_next_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TWO_STEPS))
    assert main(["step", "serve", "--config", str(cfg), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "step 1 forwards to [2]" in err and "--discovery static:FILE" in err


def test_serve_reads_the_config_from_the_named_environment_variable(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("PIPELINE_CONFIG", json.dumps(TWO_STEPS))
    assert main(["step", "serve", "--config-env", "PIPELINE_CONFIG", "--port", "0"]) == 2
    assert "step 1 forwards to [2]" in capsys.readouterr().err  # parsed from the variable
    monkeypatch.delenv("PIPELINE_CONFIG")
    assert main(["step", "serve", "--config-env", "PIPELINE_CONFIG", "--port", "0"]) == 2
    assert "PIPELINE_CONFIG is not set or empty" in capsys.readouterr().err


def test_serve_rejects_a_bad_config_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pipeline_id: p1\nstep_id: 1\nsteps:\n  - {id: 1, type: nosuchkernel}\n")
    assert main(["step", "serve", "--config", str(cfg), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "PIPELINE_CONFIG" in err and "nosuchkernel" in err


def test_serve_rejects_an_unknown_discovery_backend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TWO_STEPS))
    assert main(["step", "serve", "--config", str(cfg), "--port", "0",
                 "--discovery", "consul"]) == 2
    assert "unknown discovery 'consul'" in capsys.readouterr().err


def test_serve_reports_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"pipeline_id": "p1", "step_id": 1,
                               "steps": [{"id": 1, "type": "identity"}]}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["step", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                     "--port", str(port), "--metrics-port", "0"])
    assert code == 1
    assert str(port) in capsys.readouterr().err


def test_request_prints_grpcurl_json_with_the_file_and_png_output(
        photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["request", str(photo), "--threads", "2"]) == 0
    req = json_format.Parse(capsys.readouterr().out, step_pb2.ProcessRequest())
    assert req.image.encoding == codec.PNG and req.image.data == photo.read_bytes()
    assert req.output_encoding == codec.PNG and req.overrides.threads == 2


def test_request_raw_sends_pixels_with_their_size(
        photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["request", str(photo), "--raw", "--output-encoding", "raw"]) == 0
    req = json_format.Parse(capsys.readouterr().out, step_pb2.ProcessRequest())
    assert (req.image.width, req.image.height, req.image.channels) == (12, 10, 3)
    np.testing.assert_array_equal(codec.decode_image(req.image), np.asarray(PILImage.open(photo)))


def test_request_reads_a_npy_array_as_raw_pixels_and_refuses_a_non_uint8_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = noisy_image(10, 12, 3, seed=3)
    np.save(tmp_path / "in.npy", image)
    assert main(["request", str(tmp_path / "in.npy"), "--output-encoding", "raw"]) == 0
    req = json_format.Parse(capsys.readouterr().out, step_pb2.ProcessRequest())
    np.testing.assert_array_equal(codec.decode_image(req.image), image)
    np.save(tmp_path / "bad.npy", image.astype(np.float32))
    assert main(["request", str(tmp_path / "bad.npy")]) == 2
    assert "must be uint8" in capsys.readouterr().err


def test_request_reports_an_unreadable_image(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["request", str(bad)]) == 2
    assert "notes.txt" in capsys.readouterr().err


def test_submit_refuses_an_output_suffix_it_cannot_encode(
        photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(photo), "--target", "127.0.0.1:1",
                 "--out", str(tmp_path / "out.gif")]) == 2
    assert "must be .png, .jpg or .jpeg" in capsys.readouterr().err


def test_serve_reports_a_metrics_port_in_use(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"pipeline_id": "p1", "step_id": 1,
                               "steps": [{"id": 1, "type": "identity"}]}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["step", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                     "--port", "0", "--metrics-port", str(port)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"--metrics-port {port}" in err and "0 to turn metrics off" in err


@pytest.mark.parametrize(("argv", "flag", "allowed"), [
    (["step", "serve", "--port", "70000"], "--port", "0..65535"),
    (["step", "serve", "--port", "-1"], "--port", "0..65535"),
    (["step", "serve", "--metrics-port", "70000"], "--metrics-port", "0..65535"),
    (["step", "serve", "--max-message-mb", "5000"], "--max-message-mb", "1..2047"),
    (["step", "serve", "--max-message-mb", "0"], "--max-message-mb", "1..2047"),
    (["step", "serve", "--max-pixels", "0"], "--max-pixels", "1..268435456"),
    (["step", "serve", "--max-inflight", "0"], "--max-inflight", ">= 1"),
    (["step", "serve", "--max-passes", "1001"], "--max-passes", "1..1000"),
    (["step", "serve", "--grace", "-1"], "--grace", ">= 0"),
    (["step", "serve", "--grace", "nan"], "--grace", ">= 0"),
    (["step", "serve", "--forward-timeout", "-3"], "--forward-timeout", "> 0"),
    (["step", "serve", "--forward-timeout", "0"], "--forward-timeout", "> 0"),
    (["submit", "in.png", "--target", "h:1", "--out", "o.png", "--timeout", "-1"],
     "--timeout", "> 0"),
    (["submit", "in.png", "--target", "h:1", "--out", "o.png", "--threads", "999"],
     "--threads", "0..256"),
    (["submit", "in.png", "--target", "h:1", "--out", "o.png", "--passes", "5000"],
     "--passes", "0..1000"),
    (["request", "in.png", "--passes", "-2"], "--passes", "0..1000"),
    (["topology", "serve", "--port", "70000"], "--port", "0..65535"),
    (["bench", "kernels", "--sizes", "1920x0"], "--sizes", "WIDTHxHEIGHT (both >= 1)"),
])
def test_out_of_range_flags_are_usage_errors_naming_the_flag_and_range(
        argv: list[str], flag: str, allowed: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    if argv[:2] == ["step", "serve"]:
        argv = [*argv, "--config", str(tmp_path / "cfg.json")]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and allowed in err, err


@pytest.mark.parametrize(("out", "problem"), [
    ("missing/dir/o.png", "directory"),
    ("folder.png", "is a directory"),
])
def test_submit_refuses_an_output_it_cannot_write_before_sending(
        photo: Path, tmp_path: Path, out: str, problem: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.png").mkdir()
    target = tmp_path / out
    # port 1 refuses connections: reaching it would be exit 1 with UNAVAILABLE, not a usage error
    assert main(["submit", str(photo), "--target", "127.0.0.1:1", "--timeout", "5",
                 "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--out {target}" in err and problem in err and "UNAVAILABLE" not in err


def test_serve_defaults_to_a_pixel_limit_a_default_pod_can_hold(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["step", "serve", "--config", "cfg.json"])
    assert args.max_pixels == DEFAULT_MAX_PIXELS == 40_000_000
    assert build_parser().parse_args(["step", "serve", "--config", "c", "--max-pixels",
                                      str(1 << 28)]).max_pixels == 1 << 28
    with pytest.raises(SystemExit):
        main(["step", "serve", "--help"])
    assert "about 8K x 5K" in " ".join(capsys.readouterr().out.split())


def test_serve_help_says_it_listens_on_every_interface_unless_told_otherwise(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["step", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Listens on every interface (0.0.0.0) by default" in text
    assert "gRPC, the HTTP face and metrics alike; --host 127.0.0.1 keeps all three" in text

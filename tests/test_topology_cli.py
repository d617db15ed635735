"""`stepchain topology render`: what would be applied, as YAML; bad pipelines name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stepsvc.cli import main as stepchain
from topology.pipeline import parse_pipeline
from topology.render import RenderOptions, render_manifests

ROOT = Path(__file__).resolve().parent.parent


def test_render_prints_the_manifests_as_multi_document_yaml(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = stepchain(["topology", "render", str(ROOT / "examples" / "pipeline.json"),
                      "--namespace", "imaging", "--image", "ghcr.io/stepchain/step:dev"])
    assert code == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    expected = render_manifests(
        parse_pipeline(json.loads((ROOT / "examples" / "pipeline.json").read_text())),
        RenderOptions(namespace="imaging", image="ghcr.io/stepchain/step:dev"))
    assert docs == expected
    assert {d["metadata"]["namespace"] for d in docs} == {"imaging"}


def test_render_uses_the_pipeline_namespace_when_no_flag_is_given(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert stepchain(["topology", "render", str(ROOT / "examples" / "scaled.json")]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"imaging"}


def test_render_of_an_invalid_pipeline_names_the_field_and_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"type": "blur"}, [{"type": "edges"},
                                                            {"type": "sepia"}]]}))
    assert stepchain(["topology", "render", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "steps[1][1].type" in err
    assert "sepia" in err


def test_render_of_a_missing_file_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert stepchain(["topology", "render", "/nonexistent/pipeline.json"]) == 2
    assert "cannot read" in capsys.readouterr().err

"""`stepchain topology render`: what would be applied, as YAML; bad pipelines name the field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from topology_fixtures import api_client

from stepsvc.cli import main as stepchain
from topology.kube.manifests import render_manifests
from topology.kube.objects import RenderOptions
from topology.local.backend import LocalBackend
from topology.pipeline.graph import parse_pipeline
from topology.service.app import create_app
from topology.service.settings import settings_from

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture()
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the STEPCHAIN_* variables they mean; none leak in from the shell."""
    for name in list(os.environ):
        if name.startswith("STEPCHAIN_"):
            monkeypatch.delenv(name)


BLUR = {"name": "p", "steps": [{"type": "blur"}]}


@pytest.mark.usefixtures("no_service_env")
@pytest.mark.parametrize(("pipeline", "flags", "env", "named"), [
    (BLUR | {"image": "docker.io/evil/miner:1"}, [], {}, "  image: "),
    (BLUR | {"image": "ghcr.io/stepchain/step:1"}, [],
     {"STEPCHAIN_IMAGE_ALLOWLIST": "registry.example.com/*",
      "STEPCHAIN_STEP_IMAGE": "registry.example.com/step:1"}, "  image: "),
    (BLUR, ["--step-image", "ghcr.io/stepchain/step:1"],
     {"STEPCHAIN_IMAGE_ALLOWLIST": "registry.example.com/*"}, "--step-image"),
    ({"name": "p", "steps": [{"type": "blur", "volumes": [
        {"name": "host", "mountPath": "/data", "hostPath": "/var/lib/secrets"}]}]},
     ["--hostpath-allowlist", "/srv/images"], {}, "  steps[0].volumes[0].hostPath: "),
    ({"name": "p", "steps": [{"type": "blur", "gpu": 2}]}, ["--max-gpus", "1"], {},
     "  steps[0].gpu: "),
    (BLUR | {"namespace": "kube-system"}, ["--namespace", "imaging"], {}, "  namespace: "),
    (BLUR | {"namespace": "kube-system"}, [], {"STEPCHAIN_NAMESPACE": "imaging"},
     "  namespace: "),
])
def test_render_refuses_what_the_service_policy_refuses_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        pipeline: dict[str, Any], flags: list[str], env: dict[str, str], named: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(pipeline), encoding="utf-8")
    assert stepchain(["topology", "render", str(path), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert named in captured.err


@pytest.mark.usefixtures("no_service_env")
def test_render_prints_what_the_service_would_apply_for_the_same_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = {"name": "p", "steps": [{"type": "blur", "gpu": 1, "volumes": [
        {"name": "host", "mountPath": "/data", "hostPath": "/srv/images/a"}]}]}
    monkeypatch.setenv("STEPCHAIN_IMAGE_ALLOWLIST", "registry.example.com/*")
    monkeypatch.setenv("STEPCHAIN_STEP_SERVICE_ACCOUNT", "pipeline-step")
    flags = ["--namespace", "imaging", "--step-image", "registry.example.com/step:2",
             "--hostpath-allowlist", "/srv/images", "--max-gpus", "1"]
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(pipeline), encoding="utf-8")
    assert stepchain(["topology", "render", str(path), *flags]) == 0
    rendered = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]

    settings = settings_from({"namespace": "imaging", "step_image": "registry.example.com/step:2",
                              "hostpath_allowlist": "/srv/images", "max_gpus": 1,
                              "state_dir": str(tmp_path / "state")}, os.environ)
    app = create_app(settings, LocalBackend(tmp_path / "state", namespace="imaging"))
    with api_client(app) as api:
        dry_run = api.post("/pipeline", params={"dry_run": "true"}, json=pipeline)
    assert dry_run.status_code == 200, dry_run.text
    assert rendered == dry_run.json()["manifests"]
    pod = rendered[-1]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pipeline-step"
    assert pod["containers"][0]["image"] == "registry.example.com/step:2"


@pytest.mark.usefixtures("no_service_env")
def test_rendered_steps_run_as_the_stepchain_step_service_account_by_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert stepchain(["topology", "render", str(ROOT / "examples" / "pipeline.json")]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    accounts = {d["spec"]["template"]["spec"].get("serviceAccountName")
                for d in docs if d["kind"] == "Deployment"}
    assert accounts == {"stepchain-step"}


@pytest.mark.usefixtures("no_service_env")
def test_render_ignores_the_service_only_settings_it_has_no_use_for(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A shell set up for `topology serve` (public address, token file) still renders.
    monkeypatch.setenv("STEPCHAIN_HOST", "0.0.0.0")
    monkeypatch.setenv("STEPCHAIN_TOKEN_FILE", "/nonexistent/token")
    assert stepchain(["topology", "render", str(ROOT / "examples" / "pipeline.json")]) == 0
    assert "kind: Deployment" in capsys.readouterr().out


FLASK_BODY = {"steps": [
    {"step_id": 0, "type": "upscaling", "params": {"scale": 2}, "next_step": 1},
    {"step_id": 1, "type": "classifier", "params": {}, "next_step": 2}]}


def test_render_accepts_a_next_step_to_no_step_and_warns_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(FLASK_BODY))
    assert stepchain(["topology", "render", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "warning: steps[1].next_step: step id 2 is not a step of this pipeline" in err
    assert "step 1 ends the pipeline there" in err
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert kinds.count("Deployment") == 2


def test_render_strict_refuses_a_next_step_to_no_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(FLASK_BODY))
    assert stepchain(["topology", "render", "--strict", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "steps[1].next_step" in err

"""examples/plugins/Dockerfile: the step (or topology) image with the example plugins installed.

No Docker engine here: the file is read and checked for what a build would give (both stages
FROM the base image argument, the C plugin built against the installed stepchain, the final
stage back to the pods' non-root uid, the plugin check run at build time, a context that carries
every COPY source and no build outputs).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from stepsvc.cli import build_parser, main
from topology.kube.objects import RUN_AS_USER

PLUGINS = Path(__file__).resolve().parents[2] / "examples" / "plugins"
DOCKERFILE = PLUGINS / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(kw.upper(), args.strip()) for kw, _, args in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


def test_every_stage_builds_from_the_base_image_argument() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=stepchain-step:0.1.0")
    froms = [args for kw, args in steps if kw == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]


def test_the_plugins_are_built_against_the_installed_stepchain_and_checked() -> None:
    runs = " ".join(args for kw, args in instructions() if kw == "RUN")
    assert "pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels" in runs
    check = runs[runs.index("stepchain kernels"):].split("&&")[0]
    args = build_parser().parse_args(shlex.split(check)[1:])
    assert args.check  # a plugin that fails to load fails the build


def test_the_final_stage_runs_as_the_pods_uid_and_copies_existing_folders() -> None:
    steps = instructions()
    final = steps[max(i for i, (kw, _) in enumerate(steps) if kw == "FROM"):]
    assert final[-1] == ("USER", f"{RUN_AS_USER}:{RUN_AS_USER}")
    sources = [args.split()[0] for kw, args in steps if kw == "COPY" and "--from" not in args]
    assert sources and all((PLUGINS / src).is_dir() for src in sources)
    assert {s.rstrip("/") for s in sources} == {p.parent.name for p in
                                               PLUGINS.glob("*/pyproject.toml")}


def test_the_build_context_leaves_build_outputs_out() -> None:
    ignored = (PLUGINS / ".dockerignore").read_text().split()
    assert {"**/build", "**/*.egg-info", "**/*.so", "**/__pycache__"} <= set(ignored)


def test_the_docs_pipeline_names_an_allowed_image_and_validates_with_the_plugins_installed(
) -> None:
    import json

    from topology.pipeline.graph import parse_pipeline
    from topology.service.allowlist import image_allowed

    pytest.importorskip("acme_boxblur", reason="the example plugins are not installed in this "
                                               "venv: run `make venv`")
    docs = (PLUGINS.parents[1] / "docs" / "plugins.md").read_text()
    block = docs[docs.index("```json\n", docs.index("## On Kubernetes")) + 8:]
    pipeline = json.loads(block[:block.index("```")])
    allow = re.search(r"imageAllowlist=\{([^}]*)\}", docs)
    assert allow and image_allowed(pipeline["image"], (allow.group(1),))
    parsed = parse_pipeline(pipeline)
    assert [s.type for s in parsed.steps][:2] == ["acme.contrast", "acme.clahe"]
    local = json.loads((PLUGINS / "pipeline.json").read_text())
    assert local["steps"] == pipeline["steps"]  # the local example is the same pipeline


def test_the_docs_render_command_renders_the_docs_pipeline_with_the_plugin_image(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("acme_boxblur", reason="the example plugins are not installed in this "
                                               "venv: run `make venv`")
    docs = (PLUGINS.parents[1] / "docs" / "plugins.md").read_text()
    block = docs[docs.index("```json\n", docs.index("## On Kubernetes")) + 8:]
    (tmp_path / "acme.json").write_text(block[:block.index("```")])
    line = re.search(r"`(stepchain topology render acme\.json [^`]+)`", docs)
    assert line, "docs/plugins.md shows the render command"
    args = shlex.split(line.group(1))[1:]
    args[args.index("acme.json")] = str(tmp_path / "acme.json")
    assert main(args) == 0
    manifests = [m for m in yaml.safe_load_all(capsys.readouterr().out) if m]
    images = {c["image"] for m in manifests if m["kind"] == "Deployment"
              for c in m["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/you/stepchain-step-acme:0.1.0"}

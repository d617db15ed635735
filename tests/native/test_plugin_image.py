"""examples/plugins/Dockerfile: the step (or topology) image with the example plugins installed.

The file is read and checked for what a build gives on the shell-less step and topology images
(docker/rootfs.sh): a builder on the base's Debian with a copy of the base's virtual
environment, the C plugin built against the installed stepchain, the plugins installed without
putting back what the image left out, a final stage that only copies (no shell there) and runs
the plugin check in exec form as the base's non-root user, a context that carries every COPY
source and no build outputs. (Built and run for real with podman against `make images`' step
and topology images: see the commit that made this layout.)
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from stepsvc.cli import build_parser, main

PLUGINS = Path(__file__).resolve().parents[2] / "examples" / "plugins"
DOCKERFILE = PLUGINS / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(kw.upper(), args.strip()) for kw, _, args in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each FROM ... stage (the ARGs before the first are left out)."""
    found: list[list[tuple[str, str]]] = []
    for kw, args in instructions():
        if kw == "FROM":
            found.append([])
        if found:
            found[-1].append((kw, args))
    return found


def test_the_builder_runs_on_the_bases_debian_with_the_bases_virtual_environment() -> None:
    steps = instructions()
    assert steps[:2] == [("ARG", "BASE_IMAGE=stepchain-step:0.1.0"),
                         ("ARG", "BUILDER_IMAGE=docker.io/library/debian:bookworm-slim")]
    base, builder, final = stages()
    assert base == [("FROM", "${BASE_IMAGE} AS base")]
    assert builder[0] == ("FROM", "${BUILDER_IMAGE} AS builder")
    assert ("COPY", "--from=base /opt/stepchain /opt/stepchain") in builder
    assert final[0] == ("FROM", "${BASE_IMAGE}")


def test_the_plugins_are_built_against_the_installed_stepchain_without_its_left_out_deps(
) -> None:
    _, builder, _ = stages()
    runs = " ".join(args for kw, args in builder if kw == "RUN")
    assert "--no-deps --no-build-isolation /src/acme-numpy /src/acme-opencv /src/acme-boxblur" \
        in runs
    assert "pip uninstall -y -q setuptools wheel pip" in runs  # the base has no pip either


def test_the_final_stage_only_copies_and_checks_the_plugins_as_the_bases_user() -> None:
    _, _, final = stages()
    # no shell in the base: COPY, and RUN in exec form only
    assert {kw for kw, _ in final} == {"FROM", "COPY", "RUN"}
    (run,) = [json.loads(args) for kw, args in final if kw == "RUN"]
    assert run[0] == "stepchain"
    assert build_parser().parse_args(run[1:]).check  # a plugin that fails to load fails the build
    assert [args for kw, args in final if kw == "COPY"] == [
        "--from=builder /opt/stepchain /opt/stepchain", "--from=builder /extra/ /"]
    assert "USER" not in {kw for kw, _ in instructions()}  # the base's uid 10001 stays


def test_the_build_copies_existing_folders() -> None:
    steps = instructions()
    sources = [args.split()[0] for kw, args in steps if kw == "COPY" and "--from" not in args]
    assert sources and all((PLUGINS / src).is_dir() for src in sources)
    assert {s.rstrip("/") for s in sources} == {p.parent.name for p in
                                               PLUGINS.glob("*/pyproject.toml")}


def test_the_build_context_leaves_build_outputs_out() -> None:
    ignored = (PLUGINS / ".dockerignore").read_text().split()
    assert {"**/build", "**/*.egg-info", "**/*.so", "**/__pycache__"} <= set(ignored)


def test_the_docs_pipeline_names_an_allowed_image_and_validates_with_the_plugins_installed(
) -> None:
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

"""The container images' recipes: docker/step.Dockerfile and docker/topology.Dockerfile.

Read without building (tests/docker/test_images.py and the container tests check the built
images): one BASE_IMAGE for every stage (the public Debian image by default, the debootstrap
base under `make images`), a builder stage that compiles the kernels and installs the pinned
dependencies into a virtual environment, a final stage that only copies it (no compiler, no
pip), a non-root numeric user matching the pods' runAsUser, the right ports, and a CMD the real
`stepchain` CLI accepts. The build context (.dockerignore) must carry every COPY source and
none of this machine's build outputs.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
#: The default base for users building with Docker; `make images` passes its own.
DEFAULT_BASE_IMAGE = "docker.io/library/debian:bookworm-slim"


@dataclass
class Stage:
    """One FROM ... of a Dockerfile and its instructions, as (KEYWORD, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Arguments of every `keyword` instruction of this stage, in order."""
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: the ARGs declared before the first FROM, and the stages."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found


def parse_dockerfile(path: Path) -> Dockerfile:
    """Stages of a Dockerfile: continuation lines joined, comments and blank lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert match, f"{path.name}: cannot read FROM {args!r}"
            stages.append(Stage(match.group(1), match.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        else:
            assert keyword == "ARG", f"{path.name}: {keyword} before FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) ENTRYPOINT/CMD as a list; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


IMAGES: dict[str, dict[str, Any]] = {
    # The packages each image installs (setup.py installs what the build context holds).
    "step": {"ports": {50051, 8080, 9464},
             "packages": {"native/", "protos/", "stepsvc/", "topology/"}},
    "topology": {"ports": {8080}, "packages": {"native/", "protos/", "stepsvc/", "topology/"}},
}


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _parsed(image: str) -> Dockerfile:
    return parse_dockerfile(DOCKER / f"{image}.Dockerfile")


def _stages(image: str) -> list[Stage]:
    return _parsed(image).stages


def test_builder_starts_from_the_base_image_argument_and_the_final_stage_from_scratch(
        image: str) -> None:
    parsed = _parsed(image)
    assert parsed.global_args["BASE_IMAGE"] == DEFAULT_BASE_IMAGE
    builder, final = parsed.stages
    assert (builder.name, builder.base) == ("builder", "${BASE_IMAGE}")
    # Nothing of the base but what docker/rootfs.sh picks: no shell, no package manager.
    assert (final.name, final.base) == (None, "scratch")


def test_builder_compiles_the_kernels_into_a_venv_with_pinned_dependencies(image: str) -> None:
    builder = _parsed(image).stage("builder")
    runs = builder.args("RUN")
    installed = re.search(r"apt-get install -y --no-install-recommends ([\w.+ -]+?) &&", runs[0])
    assert installed and {"python3", "libgomp1", "gcc", "python3-dev"} <= set(
        installed.group(1).split())
    assert "rm -rf /var/lib/apt/lists/*" in runs[0]
    assert any(r == "python3 -m venv /opt/stepchain" for r in runs)
    deps = [r for r in runs if "-r " in r]
    expected = ["step"] if image == "step" else ["step", "topology"]
    assert [re.search(r"-c constraints.txt -r (\w+)-requirements.txt", r).group(1)  # type: ignore[union-attr]
            for r in deps] == expected
    assert "sh trim-venv.sh && sh rootfs.sh" in runs
    project = runs[-1]
    assert re.search(r"pip install .*--no-deps --no-build-isolation \.", project)
    assert "pip uninstall -y -q setuptools wheel pip" in project
    copied = {src for args in builder.args("COPY") for src in args.split()[:-1]}
    assert {".ci/constraints.txt", f"docker/{image}-requirements.txt", "docker/rootfs.sh",
            "docker/trim-venv.sh", "pyproject.toml", "setup.py", "README.md"} <= copied
    # Only the packages this image runs: setup.py installs the ones the context holds.
    packages = {src for src in copied if src.endswith("/")}
    assert packages == IMAGES[image]["packages"]


def test_final_stage_only_copies_the_root_filesystem_and_the_venv(image: str) -> None:
    final = _stages(image)[-1]
    assert final.args("RUN") == []
    assert final.args("COPY") == ["--from=builder /rootfs /",
                                  "--from=builder /opt/stepchain /opt/stepchain"]
    env = " ".join(final.args("ENV"))
    assert "PATH=/opt/stepchain/bin:/usr/bin" in env and "PYTHONDONTWRITEBYTECODE=1" in env


def test_final_stage_runs_as_the_non_root_uid_of_the_pods(image: str) -> None:
    from topology.kube.objects import RUN_AS_USER

    final = _stages(image)[-1]
    users = final.args("USER")
    assert users, "the final stage never switches away from root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes can verify runAsNonRoot without resolving a name.
    assert uid == str(RUN_AS_USER) and gid == str(RUN_AS_USER)
    # ... and the image's /etc/passwd names it (docker/rootfs.sh writes it).
    rootfs = (DOCKER / "rootfs.sh").read_text(encoding="utf-8")
    assert f"UID_GID={RUN_AS_USER}" in rootfs
    assert "stepchain:x:$UID_GID:$UID_GID:" in rootfs


def test_labels_name_version_and_source(image: str) -> None:
    final = _stages(image)[-1]
    labels = " ".join(final.args("LABEL"))
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    version = next(a for a in final.args("ARG") if a.startswith("VERSION="))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version == f"VERSION={project['version']}"


def test_final_stage_exposes_the_service_ports(image: str) -> None:
    exposed = {int(p.split("/")[0]) for args in _stages(image)[-1].args("EXPOSE")
               for p in args.split()}
    assert exposed == IMAGES[image]["ports"]


def test_step_image_ports_match_the_rendered_step_deployments() -> None:
    from topology.kube.names import GRPC_PORT, HTTP_PORT, METRICS_PORT

    assert IMAGES["step"]["ports"] == {GRPC_PORT, HTTP_PORT, METRICS_PORT}


def test_entrypoint_is_the_stepchain_console_script(image: str) -> None:
    final = _stages(image)[-1]
    assert [exec_form(a) for a in final.args("ENTRYPOINT")] == [["stepchain"]]


def test_step_image_command_is_a_valid_step_serve_with_kubernetes_discovery() -> None:
    from stepsvc.cli import build_parser

    (cmd,) = _stages("step")[-1].args("CMD")
    args = build_parser().parse_args(exec_form(cmd))
    assert args.command == "step"
    assert args.config_env == "PIPELINE_CONFIG"
    assert args.port == 50051 and args.metrics_port == 9464 and args.http_port == 8080
    assert args.discovery == "kubernetes"


def test_topology_image_command_serves_the_kubernetes_backend_on_all_interfaces() -> None:
    from stepsvc.cli import build_parser

    (cmd,) = _stages("topology")[-1].args("CMD")
    args = build_parser().parse_args(exec_form(cmd))
    assert args.command == "topology"
    assert (args.backend, args.host, args.port) == ("kubernetes", "0.0.0.0", 8080)


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: a path is out when it or
    one of its parent directories matches; the last matching pattern wins (`!` re-includes)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        variants = [body]
        if body.startswith("**/"):
            variants.append(body[3:])  # `**/x` also matches x at the top level
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            verdict = not negate
    return verdict


def test_build_context_carries_every_copy_source(image: str) -> None:
    patterns = _dockerignore_patterns()
    for args in _parsed(image).stage("builder").args("COPY"):
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # The kernels' C sources must reach the builder, even though the folder is filtered.
    assert not ignored("native/src/grayscale.c", patterns)
    assert not ignored("native/_native.c", patterns)


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", ".cache/helm/helm", "build/lib/native/x.o", "out/images/x.tar",
    "tests/docker/test_images.py", "docker/images.sh", ".ci/run",
    "native/_native.cpython-311-x86_64-linux-gnu.so", "stepsvc/__pycache__/cli.cpython-311.pyc",
    "stepchain.egg-info/PKG-INFO",
])
def test_build_context_leaves_out_local_build_outputs(path: str) -> None:
    assert ignored(path, _dockerignore_patterns())

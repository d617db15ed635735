"""The container images: docker/step.Dockerfile and docker/topology.Dockerfile.

No Docker engine exists here, so the images are not built; these tests read the Dockerfiles and
check what a build would give: a builder stage that compiles the kernels into a wheel, a final
stage with the OpenMP runtime and no compiler, a non-root numeric user matching the pods'
runAsUser, the right ports, and a CMD the real `stepchain` CLI accepts. The build context
(.dockerignore) must carry every COPY source and none of this machine's build outputs.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BASE_IMAGE = "python:3.11-slim"


@dataclass
class Stage:
    """One FROM ... of a Dockerfile and its instructions, as (KEYWORD, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Arguments of every `keyword` instruction of this stage, in order."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
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
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert match, f"{path.name}: cannot read FROM {args!r}"
            stages.append(Stage(match.group(1), match.group(2)))
        else:
            assert stages or keyword in ("ARG",), f"{path.name}: {keyword} before FROM"
            if stages:
                stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) ENTRYPOINT/CMD as a list; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


IMAGES = {
    "step": {"ports": {50051, 8080, 9464}},
    "topology": {"ports": {8080}},
}


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _stages(image: str) -> list[Stage]:
    return parse_dockerfile(DOCKER / f"{image}.Dockerfile")


def test_builder_stage_compiles_the_kernels_into_a_wheel(image: str) -> None:
    stages = _stages(image)
    assert len(stages) >= 2, "expected a multi-stage build"
    builder = stages[0]
    assert builder.name == "builder"
    assert builder.base == BASE_IMAGE
    runs = " ".join(builder.args("RUN"))
    assert re.search(r"apt-get install\b.*\bbuild-essential\b", runs)
    assert re.search(r"\bpip wheel\b.*--wheel-dir /wheels \.$", builder.args("RUN")[-1])
    copied = {src for args in builder.args("COPY") for src in args.split()[:-1]}
    # Everything setup.py's build needs: metadata, the C sources and every Python package.
    assert {"pyproject.toml", "setup.py", "README.md", "native/", "protos/", "stepsvc/",
            "topology/", "loadtest/"} <= copied


def test_final_stage_has_the_openmp_runtime_and_no_compiler(image: str) -> None:
    final = _stages(image)[-1]
    assert final.base == BASE_IMAGE
    runs = " ".join(final.args("RUN"))
    assert re.search(r"apt-get install\b.*\blibgomp1\b", runs)
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+", runs)
    assert any(args.startswith("--from=builder /wheels") for args in final.args("COPY"))
    # Installs only the wheels the builder made: no network, no source build in the final image.
    assert re.search(r"pip install\b.*--no-index --find-links /wheels stepchain", runs)


def test_final_stage_runs_as_the_non_root_uid_of_the_pods(image: str) -> None:
    from topology.kube.objects import RUN_AS_USER

    final = _stages(image)[-1]
    users = final.args("USER")
    assert users, "the final stage never switches away from root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes can verify runAsNonRoot without resolving a name.
    assert uid == str(RUN_AS_USER) and gid == str(RUN_AS_USER)
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


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
    for args in _stages(image)[0].args("COPY"):
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # The kernels' C sources must reach the builder, even though the folder is filtered.
    assert not ignored("native/src/grayscale.c", patterns)
    assert not ignored("native/_native.c", patterns)


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", ".cache/helm/helm", "build/lib/native/x.o",
    "native/_native.cpython-311-x86_64-linux-gnu.so", "stepsvc/__pycache__/cli.cpython-311.pyc",
    "stepchain.egg-info/PKG-INFO",
])
def test_build_context_leaves_out_local_build_outputs(path: str) -> None:
    assert ignored(path, _dockerignore_patterns())

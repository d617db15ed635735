"""docs/plugins.md's `helm install` for plugin images, rendered by the real chart: the topology
service runs the plugin topology image, steps default to the plugin step image, and the
allow-list it sets admits the image the docs' pipeline names (and the service's own check of its
step image passes)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml
from helm_fixtures import CHART, NAMESPACE, env_of, render

from stepsvc.cli import build_parser
from topology.service.allowlist import image_allowed
from topology.service.settings import settings_from

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def docs_helm_install() -> tuple[str, list[str]]:
    """(REGISTRY, the `--set` arguments) of the docs' `helm install`, $REGISTRY expanded."""
    text = DOCS.read_text()
    registry = re.search(r"^REGISTRY=(\S+)$", text, re.MULTILINE)
    assert registry, "docs/plugins.md sets REGISTRY= before its docker build"
    start = text.index("helm install stepchain helm/stepchain")
    command = text[start:text.index("```", start)].replace("\\\n", " ")
    args = shlex.split(command.replace("$REGISTRY", registry.group(1)))
    sets = [arg for i, arg in enumerate(args) if i and args[i - 1] == "--set"]
    assert args[args.index("--namespace") + 1] == NAMESPACE
    return registry.group(1), [a for s in sets for a in ("--set", s)]


def test_the_docs_helm_install_runs_the_plugin_images_and_allows_the_docs_pipeline(
        tmp_path: Path) -> None:
    registry, sets = docs_helm_install()
    version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    deployment = render("defaults", *sets).one("Deployment", "topology")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{registry}/stepchain-topology-acme:{version}"
    environ = {name: (NAMESPACE if "valueFrom" in e else e["value"])
               for name, e in env_of(container).items()}
    token = tmp_path / "token"
    token.write_text("a-token-of-at-least-thirty-two-characters", encoding="utf-8")
    environ["STEPCHAIN_TOKEN_FILE"] = str(token)
    # the service refuses to start when its own step image is not on its allow-list
    settings = settings_from(vars(build_parser().parse_args(container["args"])), environ)
    assert settings.step_image == f"{registry}/stepchain-step-acme:{version}"
    text = DOCS.read_text()
    block = text[text.index("```json\n", text.index("## On Kubernetes")) + 8:]
    pipeline = json.loads(block[:block.index("```")])
    assert image_allowed(pipeline["image"], settings.image_allowlist)
    assert not image_allowed(f"{registry}/stepchain-step:0.1.0", settings.image_allowlist)

"""Shared by tests/helm/test_helm_*.py: a real Helm binary and the chart rendered with it.

Helm comes from `helm/fetch-helm.sh` (cached under `.cache/helm/`), or from `$STEPCHAIN_HELM`.
A missing Helm is a test failure, never a skip: CI must not go green without checking the chart.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "stepchain"
ALL_OPTIONS_VALUES = CHART / "ci" / "all-options-values.yaml"
EXTERNAL_IDENTITIES_VALUES = CHART / "ci" / "external-identities-values.yaml"
FETCH_SCRIPT = ROOT / "helm" / "fetch-helm.sh"
RELEASE = "demo"
NAMESPACE = "imaging"

#: Named value sets every chart test runs against: helm arguments for each.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "jaeger": ("--set", "jaeger.enabled=true"),
    "all-options": ("--values", str(ALL_OPTIONS_VALUES)),
}
#: Plus value sets that switch parts of the chart off (not every test applies to them).
ALL_VALUE_SETS: dict[str, tuple[str, ...]] = {
    **VALUE_SETS,
    "external-identities": ("--values", str(EXTERNAL_IDENTITIES_VALUES)),
}


@functools.cache
def helm_binary() -> str:
    """Path of a working Helm from fetch-helm.sh: `$STEPCHAIN_HELM` when set, else the cached
    one (fetched once if needed). Raises RuntimeError with the fix when there is none."""
    result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True,
                            timeout=300, check=False)
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not path:
        raise RuntimeError(
            f"no Helm binary: `bash {FETCH_SCRIPT.relative_to(ROOT)}` exited "
            f"{result.returncode}:\n{result.stderr.strip()}\n"
            "Run `make helm`, or set STEPCHAIN_HELM to a Helm 3.18+ or 4 binary.")
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs Helm with `args`, offline (no repositories, no cluster), and returns the result."""
    env = {**os.environ, "HELM_CACHE_HOME": str(ROOT / ".cache" / "helm" / "home" / "cache"),
           "HELM_CONFIG_HOME": str(ROOT / ".cache" / "helm" / "home" / "config"),
           "HELM_DATA_HOME": str(ROOT / ".cache" / "helm" / "home" / "data"),
           # Never talk to whatever cluster the developer's kubeconfig points at.
           "KUBECONFIG": os.devnull}
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@dataclass(frozen=True)
class Rendering:
    """The manifests `helm template` printed for one value set."""

    name: str
    manifests: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every manifest of `kind`."""
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, component: str) -> dict[str, Any]:
        """The single manifest of `kind` labelled app.kubernetes.io/component=`component`."""
        found = [m for m in self.of_kind(kind)
                 if m["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"{self.name}: expected one {kind} of component {component}, " \
                                f"got {[m['metadata']['name'] for m in found]}"
        return found[0]


@functools.cache
def render(value_set: str, *extra: str) -> Rendering:
    """`helm template` of the chart with the named value set (plus `extra` arguments), parsed.
    Raises AssertionError with Helm's message when rendering fails."""
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                  *ALL_VALUE_SETS[value_set], *extra)
    assert result.returncode == 0, f"helm template ({value_set}) failed:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Rendering(value_set, docs)


def pod_specs(rendering: Rendering) -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every workload the chart renders."""
    workloads = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
    specs = []
    for manifest in rendering.manifests:
        if manifest["kind"] not in workloads:
            continue
        spec = manifest["spec"]
        if manifest["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if manifest["kind"] != "Pod":
            spec = spec["template"]["spec"]
        specs.append((manifest["metadata"]["name"], spec))
    return specs


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}

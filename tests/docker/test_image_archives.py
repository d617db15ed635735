"""The OCI archives `make images` exports, loaded the ways docs/kubernetes.md shows: into a real
containerd with `ctr images import` (what `kind load image-archive` runs on a node) and into a
real registry with `skopeo copy`. Both are private instances on loopback and temp dirs that the
test starts and stops (Debian's containerd and docker-registry, installed by `make
image-tools`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib
from container_fixtures import archive_path, built_images, image_names, wait_until

from stepsvc.ports import free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CONTAINERD_CONFIG = """\
version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{tmp}/c.sock"
[ttrpc]
  address = "{tmp}/c.sock.ttrpc"
[debug]
  address = "{tmp}/d.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"
"""
REGISTRY_CONFIG = """\
version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {tmp}/data}}}}
http: {{addr: "127.0.0.1:{port}"}}
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make image-tools` installs it"
    return path


def kubernetes_reference(image: str) -> str:
    """How the kubelet reads an image name without a registry: docker.io/library/NAME."""
    return image if "/" in image.split(":")[0] else f"docker.io/library/{image}"


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A private containerd on a socket in a temp dir: (ctr path, socket)."""
    ctr = _tool("ctr")
    config = tmp_path / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(tmp=tmp_path))
    socket = tmp_path / "c.sock"
    with (tmp_path / "containerd.log").open("wb") as log:
        daemon = subprocess.Popen([_tool("containerd"), "--config", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: socket.exists() or daemon.poll() is not None, 60,
                   "containerd listening")
        assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()
        yield ctr, socket
    finally:
        daemon.terminate()
        daemon.wait(30)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A private registry (distribution) on a free loopback port: its host:port."""
    (port,) = free_ports(1)
    config = tmp_path / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(tmp=tmp_path, port=port))
    with (tmp_path / "registry.log").open("wb") as log:
        daemon = subprocess.Popen([_tool("docker-registry"), "serve", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return daemon.poll() is not None

    try:
        wait_until(answers, 60, "the registry answering /v2/")
        assert daemon.poll() is None, (tmp_path / "registry.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        daemon.terminate()
        daemon.wait(30)


def test_ctr_import_gives_containerd_the_charts_image_name(
        containerd: tuple[str, Path]) -> None:
    # One archive per way of loading (both archives carry their names the same way:
    # tests/docker/test_images.py reads them): the step image, which every node pulls.
    built_images()
    ctr, socket = containerd
    base = [ctr, "--address", str(socket), "--namespace", "k8s.io"]
    # kind load image-archive runs exactly this on the node (its snapshotter aside).
    imported = subprocess.run([*base, "images", "import", "--digests", "--snapshotter",
                               "native", str(archive_path("step"))], capture_output=True,
                              text=True, timeout=300, check=False)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    listed = subprocess.run([*base, "images", "ls", "--quiet"], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    # The chart asks for stepchain-step:<version>, which the kubelet reads as docker.io/library/.
    assert kubernetes_reference(image_names()["step"]) in listed, listed


def test_skopeo_copy_pushes_an_archive_to_a_registry(registry: str) -> None:
    built_images()
    target = f"docker://{registry}/you/stepchain-topology:{VERSION}"
    copied = subprocess.run([_tool("skopeo"), "copy", "--dest-tls-verify=false",
                             f"oci-archive:{archive_path('topology')}", target],
                            capture_output=True, text=True, timeout=300, check=False)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    pushed = json.loads(subprocess.run([_tool("skopeo"), "inspect", "--tls-verify=false", target],
                                       capture_output=True, text=True, timeout=120,
                                       check=True).stdout)
    labels = pushed["Labels"]
    assert labels["org.opencontainers.image.title"] == "stepchain-topology"
    assert labels["org.opencontainers.image.version"] == VERSION

"""Shared by the container tests: the images `make images` built from this checkout, and
podman containers and volumes the tests create and always remove.

Podman runs with the project's configuration (docker/podman/), as `make images` does. A test
touches only what it created, by the id podman gave it, and removes it even when it fails.
The images are required, never skipped: `make test` builds them first, and a test run without
them (or with images built from other sources) fails and says to run `make images`.

Kubernetes securityContext and volumes are translated to podman flags by
:func:`security_flags` and :func:`volume_flags`, so the containers run exactly as the rendered
manifests (the topology service's step Deployments, the chart's Deployment) would; a setting
it does not know fails the test instead of being dropped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepsvc.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
#: The `stepchain` command of this venv (the local backend's side of the comparisons).
STEPCHAIN = str(Path(sys.executable).parent / "stepchain")
IMAGES_SCRIPT = ROOT / "docker" / "images.sh"
PODMAN_CONF = ROOT / "docker" / "podman"
#: The explicit limits every container gets (docker/podman/containers.conf has the same).
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
#: podman run flags of every test container: host networking, nothing pulled.
BASE_RUN_FLAGS = ("--network", "host", "--pull", "never", *ULIMITS)


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(PODMAN_CONF / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(PODMAN_CONF / "registries.conf")}


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """Runs `podman args...` with the project's configuration; fails with its output."""
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}{result.stderr}")
    return result


@functools.cache
def image_names() -> dict[str, str]:
    """{"step": "stepchain-step:<version>", "topology": ...}: what `make images` builds."""
    out = subprocess.run(["bash", str(IMAGES_SCRIPT), "names"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def archive_path(kind: str) -> Path:
    """out/images/stepchain-<kind>-<version>.tar, the OCI archive `make images` exports."""
    name = image_names()[kind]
    repository, _, tag = name.partition(":")
    return ROOT / "out" / "images" / f"{repository}-{tag}.tar"


@functools.cache
def built_images() -> dict[str, str]:
    """{kind: image id} of the images `make images` built from this checkout as it is now.
    Fails (never skips) when podman is not usable or the images are missing or stale."""
    if os.geteuid() != 0:
        pytest.fail("the container tests need rootful podman: run them as root (CI does)")
    check = subprocess.run(["bash", str(IMAGES_SCRIPT), "check"], capture_output=True,
                           text=True, timeout=120, check=False)
    if check.returncode != 0:
        pytest.fail(f"no images built from these sources:\n{check.stdout}{check.stderr}"
                    "run `make images` (make test does it first)")
    ids = {}
    for kind in image_names():
        image_id = archive_path(kind).with_suffix(".tar.id").read_text().split()[0]
        podman("image", "exists", image_id)
        ids[kind] = image_id
    return ids


def security_flags(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """podman flags for a pod's and a container's Kubernetes securityContext (the container's
    wins). Raises ValueError on a setting with no translation here."""
    merged = {**pod, **container}
    flags: list[str] = []
    known = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "seccompProfile",
             "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"}
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"securityContext keys with no podman translation: {sorted(unknown)}")
    if "runAsUser" in merged:
        user = str(merged["runAsUser"])
        if "runAsGroup" in merged:
            user += f":{merged['runAsGroup']}"
        flags += ["--user", user]
    if merged.get("runAsNonRoot") and int(merged.get("runAsUser", 0)) == 0:
        raise ValueError("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse")
    if "fsGroup" in merged:
        flags += ["--group-add", str(merged["fsGroup"])]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp != "RuntimeDefault":  # podman's default profile is the runtime default
        raise ValueError(f"seccompProfile {seccomp!r} has no podman translation here")
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if merged.get("readOnlyRootFilesystem"):
        # Only the volumes the manifest mounts are writable (podman's --read-only would add
        # its own tmpfs on /tmp, /var/tmp and /run otherwise).
        flags += ["--read-only", "--read-only-tmpfs=false"]
    caps = merged.get("capabilities", {})
    for cap in caps.get("drop", []):
        flags += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        flags += ["--cap-add", cap]
    return flags


def volume_flags(mounts: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]],
                 sources: Mapping[str, str]) -> list[str]:
    """podman flags for a container's volumeMounts. An emptyDir becomes a tmpfs of its own
    (writable by anyone, as an emptyDir with fsGroup is for the pod's user) unless `sources`
    names a podman volume or a host directory for it (shared between containers, or holding a
    ConfigMap's or Secret's files); every other volume must be in `sources`."""
    by_name = {v["name"]: v for v in volumes}
    flags: list[str] = []
    for mount in mounts:
        name, path = mount["name"], mount["mountPath"]
        volume = by_name[name]
        mode = "ro" if mount.get("readOnly") else "rw"
        if name in sources:
            flags += ["--volume", f"{sources[name]}:{path}:{mode}"]
        elif "emptyDir" in volume:
            flags += ["--tmpfs", f"{path}:rw,mode=1777"]
        else:
            raise ValueError(f"volume {name!r} ({sorted(volume)}) needs a source in this test")
    return flags


@dataclass
class Container:
    """One container a test created; `id` is what podman answered."""

    id: str
    name: str

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(podman("container", "inspect", self.id).stdout)[0])

    def logs(self) -> str:
        result = podman("logs", self.id, check=False)
        return result.stdout + result.stderr

    def signal(self, sig: str) -> None:
        podman("kill", "--signal", sig, self.id)

    def wait(self, timeout: float) -> int:
        """Exit code once the container has stopped (fails after `timeout` seconds)."""
        result = podman("wait", self.id, timeout=timeout)
        return int(result.stdout.strip().splitlines()[-1])

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def host_pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])


@dataclass
class Containers:
    """Creates containers and volumes, and removes exactly those (by id) on :meth:`close`."""

    prefix: str = field(default_factory=lambda: f"stepchain-test-{secrets.token_hex(3)}")
    created: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def run(self, image: str, args: Sequence[str], *, name: str,
            flags: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Container:
        """`podman create` + `podman start`: the id is recorded before anything can fail."""
        full_name = f"{self.prefix}-{name}"
        env_flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        created = podman("create", "--name", full_name, *BASE_RUN_FLAGS, *flags, *env_flags,
                         image, *args)
        container = Container(created.stdout.strip().splitlines()[-1], full_name)
        self.created.append(container)
        podman("start", container.id)
        return container

    def tmpfs_volume(self, name: str, uid: int, gid: int) -> str:
        """A podman volume backed by one in-memory tmpfs (shared by the containers mounting
        it, like an emptyDir with medium Memory), owned by uid:gid."""
        full_name = f"{self.prefix}-{name}"
        podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
               "--opt", f"o=uid={uid},gid={gid},mode=0770", full_name)
        self.volumes.append(full_name)
        return full_name

    def close(self) -> None:
        errors = []
        for container in reversed(self.created):
            result = podman("rm", "--force", "--time", "0", container.id, check=False)
            if result.returncode != 0 and "no such container" not in result.stderr.lower():
                errors.append(result.stderr)
        for volume in reversed(self.volumes):
            result = podman("volume", "rm", "--force", volume, check=False)
            if result.returncode != 0 and "no such volume" not in result.stderr.lower():
                errors.append(result.stderr)
        self.created.clear()
        self.volumes.clear()
        assert not errors, f"could not remove what the test created: {errors}"


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Polls `predicate()` until true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"not {what} after {timeout} s")


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def submit(photo: Path, target: str, out: Path) -> dict[str, Any]:
    """`stepchain submit PHOTO --target TARGET --out OUT --json`, its JSON."""
    result = subprocess.run([STEPCHAIN, "submit", str(photo), "--target", target, "--out",
                             str(out), "--json"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


@contextlib.contextmanager
def local_topology_service(state: Path) -> Iterator[str]:
    """`stepchain topology serve --backend local` on this machine (no auth, loopback): its
    URL. Stopped with SIGTERM (it stops the steps it started) when the block ends."""
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with (state / "topology.log").open("wb") as log:
        server = subprocess.Popen(
            [STEPCHAIN, "topology", "serve", "--backend", "local", "--host", "127.0.0.1",
             "--port", str(port), "--state-dir", str(state), "--no-auth"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz") or server.poll() is not None, 60,
                   "the local topology service serving /healthz")
        assert server.poll() is None, (state / "topology.log").read_text()
        yield url
    finally:
        server.terminate()
        server.wait(30)

"""What `make images` produced, read from podman's store and from the OCI archives: the names
the chart uses, sizes, labels, the user, what is (not) inside, and archives that load under the
chart's image names."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from container_fixtures import (  # noqa: F401  (containers: fixture)
    Containers,
    archive_path,
    built_images,
    containers,
    image_names,
    podman,
)
from helm_fixtures import env_of, render

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
#: The step image's budget (issue 22): pulled onto every node that runs a step.
STEP_IMAGE_MAX_BYTES = 250_000_000


@pytest.mark.slow
def test_chart_defaults_are_the_names_make_images_gives() -> None:
    names = image_names()
    assert names == {"step": f"stepchain-step:{VERSION}",
                     "topology": f"stepchain-topology:{VERSION}"}
    deployment = render("defaults").one("Deployment", "topology")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == names["topology"]
    assert env_of(container)["STEPCHAIN_STEP_IMAGE"]["value"] == names["step"]


def _inspect(image_id: str) -> dict:
    return dict(json.loads(podman("image", "inspect", image_id).stdout)[0])


@pytest.fixture(params=["step", "topology"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.slow
def test_image_config_runs_stepchain_as_the_pods_user_with_oci_labels(kind: str) -> None:
    image = _inspect(built_images()[kind])
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["stepchain"]  # exec form: no shell involved
    assert config["Cmd"][0] == kind
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == f"stepchain-{kind}"
    assert labels["org.opencontainers.image.source"]
    assert len(labels["org.opencontainers.image.revision"]) >= 7
    assert "Healthcheck" not in config  # Kubernetes probes gRPC health / GET /healthz instead


@pytest.mark.slow
def test_step_image_stays_under_its_size_budget() -> None:
    size = int(_inspect(built_images()["step"])["Size"])
    assert size < STEP_IMAGE_MAX_BYTES, f"step image is {size / 1e6:.0f} MB"


@pytest.fixture
def mounted(kind: str) -> Iterator[Path]:
    """The image's root filesystem, mounted read-only by podman for this test."""
    image_id = built_images()[kind]
    path = Path(podman("image", "mount", image_id).stdout.strip())
    try:
        yield path
    finally:
        podman("image", "unmount", image_id)


@pytest.mark.slow
def test_final_image_has_no_shell_no_package_manager_no_compiler_no_pip(
        kind: str, mounted: Path) -> None:
    usr_bin = {p.name for p in (mounted / "usr" / "bin").iterdir()}
    # Python and nothing else to run: `stepchain` starts in exec form, probes need no exec.
    assert usr_bin <= {"python3", "python3.11"}, usr_bin
    assert not (mounted / "usr" / "sbin").exists() or not any((mounted / "usr" / "sbin").iterdir())
    venv = mounted / "opt" / "stepchain"
    assert (venv / "bin" / "stepchain").exists()
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("pip")) and not list(site.glob("setuptools"))
    # The kernels, built in the builder stage.
    assert list((site / "native").glob("_native*.so"))
    # Not in any image: the load-test and plotting stack users get from `pip install stepchain`.
    for heavy in ("locust", "matplotlib", "gevent", "flask"):
        assert not (site / heavy).exists(), heavy


@pytest.mark.slow
def test_images_hold_the_servers_and_the_job_worker_but_no_load_tests(mounted: Path,
                                                                      kind: str) -> None:
    site = next((mounted / "opt" / "stepchain" / "lib").glob("python3*/site-packages"))
    packages = {"native", "stepsvc", "stepchain", "topology", "loadtest", "bench"}
    present = {p for p in packages if (site / p).is_dir()}
    assert present == {"native", "stepsvc", "stepchain", "topology"}
    # A job's worker pods run `stepchain jobs run` from the step image: the store's client.
    assert (site / "obstore").is_dir()
    # The topology service's web stack only where it is served.
    assert (site / "fastapi").is_dir() == (kind == "topology")


def _index(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return dict(json.load(member))


@pytest.mark.slow
def test_archives_carry_the_chart_names_for_containerd_and_skopeo(kind: str) -> None:
    built_images()
    archive = archive_path(kind)
    assert archive.name == f"stepchain-{kind}-{VERSION}.tar"
    (manifest,) = _index(archive)["manifests"]
    full = f"docker.io/library/{image_names()[kind]}"  # how Kubernetes reads the chart's name
    assert manifest["annotations"]["io.containerd.image.name"] == full
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == full
    # skopeo reads it back as the very image podman holds.
    inspected = json.loads(podman_skopeo("inspect", f"oci-archive:{archive}"))
    assert inspected["Labels"]["org.opencontainers.image.version"] == VERSION
    assert inspected["Digest"] == manifest["digest"]


def podman_skopeo(*args: str) -> str:
    import subprocess

    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


#: Imports every module of the stepchain packages the image holds, then lists the commands.
IMPORT_ALL = """
import importlib, pkgutil, sys
failed = []
for top in ("native", "stepsvc", "stepchain", "topology", "loadtest", "bench"):
    try:
        package = importlib.import_module(top)
    except ModuleNotFoundError:
        continue
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {exc!r}")
print("\\n".join(failed) or "all imported")
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_the_image_ships_imports_read_only(
        kind: str, containers: Containers) -> None:  # noqa: F811
    image = built_images()[kind]
    ran = containers.run(image, ["-c", IMPORT_ALL], name=f"imports-{kind}", flags=[
        "--entrypoint", '["/opt/stepchain/bin/python"]', "--read-only",
        "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777", "--cap-drop", "ALL"])
    assert ran.wait(timeout=300) == 0, ran.logs()
    assert "all imported" in ran.logs()

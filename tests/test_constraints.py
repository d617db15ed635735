"""The pinned constraints (.ci/constraints.txt) that `make venv`, CI and the images install.

pyproject.toml keeps ranges for users; the constraints pin one resolution of them. These checks
keep the two in step: every dependency (every extra's too) pinned inside its range, the images' requirement lists
naming only dependencies users get too, everything those lists pull in pinned, and this
virtual environment installed from the pins.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
IMAGE_REQUIREMENTS = {"step": ROOT / "docker" / "step-requirements.txt",
                      "topology": ROOT / "docker" / "topology-requirements.txt"}


def pins() -> dict[str, str]:
    """{canonical name: version} of the constraints file."""
    found = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"{CONSTRAINTS.name}: not a name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"{CONSTRAINTS.name}: {name} pinned twice"
        found[name] = match.group(2)
    return found


def image_requirements(path: Path) -> list[str]:
    """Requirement names of an image's list, following `-r` includes."""
    names: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names += image_requirements(path.parent / line[3:].strip())
        elif line:
            names.append(line)
    return names


def test_every_dependency_and_every_extra_is_pinned_inside_its_range() -> None:
    pinned = pins()
    extras = PROJECT.get("optional-dependencies", {}).values()
    for spec in [*PROJECT["dependencies"], *(spec for extra in extras for spec in extra)]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned: run `make constraints`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside pyproject.toml's {requirement.specifier}")


@pytest.mark.parametrize("image", sorted(IMAGE_REQUIREMENTS))
def test_images_install_only_dependencies_users_get_too(image: str) -> None:
    runtime = {canonicalize_name(Requirement(s).name) for s in PROJECT["dependencies"]}
    names = [canonicalize_name(n) for n in image_requirements(IMAGE_REQUIREMENTS[image])]
    assert names and len(names) == len(set(names))
    assert set(names) <= runtime, set(names) - runtime


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` need, read from this environment's installed metadata."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


@pytest.mark.parametrize("image", sorted(IMAGE_REQUIREMENTS))
def test_everything_an_image_pulls_in_is_pinned(image: str) -> None:
    needed = _closure(image_requirements(IMAGE_REQUIREMENTS[image]))
    assert needed - set(pins()) == set()


def test_this_environment_is_installed_from_the_pins() -> None:
    pinned = pins()
    drifted = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pinned and dist.version != pinned[name]:
            drifted[name] = (dist.version, pinned[name])
    assert not drifted, f"installed vs pinned: {drifted}; `make venv` reinstalls from the pins"

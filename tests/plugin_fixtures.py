"""Installed-looking plugin packages made in a temporary folder, for discovery tests.

:func:`make_distribution` writes ``<name>-<version>.dist-info`` (METADATA + entry_points.txt)
and the module next to it, exactly what pip leaves in site-packages, so
``importlib.metadata.distributions(path=[folder])`` finds it as it finds an installed one. A
test puts the folder on ``sys.path`` (``monkeypatch.syspath_prepend``) or, for a child server,
on the child's ``PYTHONPATH`` (:func:`env_with_path`): the project's venv stays untouched.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from native.plugins import GROUP

#: A valid plugin: ``test.invert`` (image, halo 0) whose function can be told to misbehave by a
#: parameter, so one installed package exercises every failure the server must survive.
INVERT_MODULE = '''
import numpy as np
from native import KernelSpec, Param

def invert(img, *, out=None, threads, schedule, chunk, passes, mode):
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "refuse":
        raise ValueError("this image is too dull")
    if mode == "float":
        return img.astype(np.float64)
    if mode == "shape":
        return np.zeros((1, 1, img.shape[2]), np.uint8)
    dst = out if out is not None else np.empty_like(img)
    np.subtract(255, img, out=dst)
    return dst

def half(img, *, out=None, threads, schedule, chunk, passes, grow):
    h, w, c = img.shape
    if grow:
        return np.zeros((h + 1, w, c), np.uint8)
    return np.ascontiguousarray(img[: max(1, h // 2), : max(1, w // 2)])

INVERT = KernelSpec(
    name="test.invert", doc="255 - value",
    params=(Param("mode", str, "ok", "misbehave on purpose",
                  choices=("ok", "raise", "refuse", "float", "shape")),),
    halo=0, function=invert)

def grow(img, *, out=None, threads, schedule, chunk, passes):
    dst = out if out is not None else np.empty((2 * img.shape[0], 2 * img.shape[1], img.shape[2]),
                                               np.uint8)
    dst[...] = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    return dst

GROW = KernelSpec(
    name="test.grow", doc="nearest-neighbour 2x upscale; declares its exact output shape",
    output_shape=lambda s, p: (2 * s[0], 2 * s[1], s[2]), resizes=True,
    not_tileable="test.grow declares no scale", function=grow)

HALF = KernelSpec(
    name="test.half", doc="top-left quarter; declares a bound, not an exact shape",
    params=(Param("grow", int, 0, "1 returns more than the bound", 0, 1),),
    output_shape=lambda s, p: (max(1, s[0] // 2), max(1, s[1] // 2), s[2]),
    output_bound=True, resizes=True, not_tileable="test.half crops", function=half)
'''


def make_distribution(root: Path, name: str, entry_points: Mapping[str, str],
                      modules: Mapping[str, str], version: str = "0.1.0") -> Path:
    """An installed-looking distribution `name` in `root`: entry points in the
    ``stepchain.kernels`` group ({"test.x": "module:OBJ"}) and top-level `modules` (source)."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{GROUP}]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def broken_plugins(root: Path) -> Path:
    """Three broken packages and one good one in `root`: an import error, a bad specification,
    a name clash with a built-in, and ``test-good`` providing test.invert, test.half (an output
    bound) and test.grow (an exact, larger output)."""
    make_distribution(root, "test-import-error", {"test.missing": "test_import_error:K"},
                      {"test_import_error": "import numpy_that_is_not_installed\n"})
    make_distribution(root, "test-bad-spec", {"test.bad": "test_bad_spec:K"},
                      {"test_bad_spec": """
                          from native import KernelSpec, Param
                          K = KernelSpec(name="test.bad", doc="bad", function=print,
                                         params=(Param("threads", int, 1, "clashes"),),
                                         halo=-3)
                          """})
    make_distribution(root, "test-clash", {"blur": "test_clash:K"},
                      {"test_clash": """
                          from native import KernelSpec
                          K = KernelSpec(name="blur", doc="shadows a built-in", halo=0,
                                         function=print)
                          """})
    make_distribution(root, "test-good", {"test.invert": "test_good:INVERT",
                                          "test.half": "test_good:HALF",
                                          "test.grow": "test_good:GROW"},
                      {"test_good": INVERT_MODULE})
    return root


def env_with_path(folder: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that also imports from `folder` (as if installed)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


def use_plugins_from(folder: Path, monkeypatch: Any) -> None:
    """This process's registry: the built-ins and the plugins installed in `folder` (as if in
    site-packages), for in-process servers and clients; undone with `monkeypatch`."""
    import native.registry
    from native.plugins import installed_entry_points

    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(native.registry, "registry", native.registry.Registry(
        native.registry._builtin_entries(), lambda: installed_entry_points([str(folder)])))

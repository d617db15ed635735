"""Plugins found by entry point and vetted: good ones registered beside the built-ins, broken
ones reported with the reason and one log line naming the package, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from plugin_fixtures import broken_plugins, make_distribution

from native import KernelSpec, Param, PluginError
from native.builtins import BUILTINS
from native.dispatch import output_shape, run_plugin
from native.plugins import installed_entry_points, spec_problems
from native.registry import Registry, _builtin_entries


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = broken_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def registry_of(folder: Path) -> Registry:
    return Registry(_builtin_entries(), lambda: installed_entry_points([str(folder)]))


def test_a_good_plugin_is_registered_with_its_package_and_version(plugin_dir: Path) -> None:
    reg = registry_of(plugin_dir)
    e = reg.entry("TEST.INVERT")
    assert (e.spec.name, e.package, e.version, e.builtin) == ("test.invert", "test-good",
                                                              "0.1.0", False)
    assert e.source == "test-good 0.1.0"
    assert "test.invert" in reg.kernel_types() and "gaussian_blur" in reg.kernel_types()


def test_broken_plugins_are_listed_failed_with_the_reason_and_one_log_line_each(
        plugin_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stepchain.plugins"):
        failed = {f.package: f.reason for f in registry_of(plugin_dir).failures()}
    assert set(failed) == {"test-import-error", "test-bad-spec", "test-clash"}
    assert "ModuleNotFoundError" in failed["test-import-error"]
    assert "numpy_that_is_not_installed" in failed["test-import-error"]
    assert "parameter 'threads' is reserved" in failed["test-bad-spec"]
    assert "halo must be pixels" in failed["test-bad-spec"]
    assert "'blur' is already the alias of built-in kernel gaussian_blur" in failed["test-clash"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert any(line.startswith("plugin package test-clash 0.1.0") for line in lines)


def test_a_built_in_lookup_never_loads_plugins(plugin_dir: Path) -> None:
    reg = registry_of(plugin_dir)
    assert reg.canonical_name("blur") == "gaussian_blur"
    assert not reg._loaded  # plain names cannot be plugins: nothing was imported


def test_a_failed_plugins_kernel_says_which_package_failed(plugin_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'test.missing' is from plugin package "
                                         r"test-import-error, which failed to load"):
        registry_of(plugin_dir).canonical_name("test.missing")


def test_an_unknown_type_lists_what_is_installed(plugin_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown kernel type 'acme.nope'; installed types: "
                                         r".*gaussian_blur.*test.invert"):
        registry_of(plugin_dir).canonical_name("acme.nope")


def test_the_second_package_claiming_a_name_fails_and_the_first_keeps_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ("from native import KernelSpec\n"
              "K = KernelSpec(name='test.same', doc='x', halo=0, function=print)\n")
    make_distribution(tmp_path, "pkg-a", {"test.same": "pkg_a:K"}, {"pkg_a": source})
    make_distribution(tmp_path, "pkg-b", {"test.same": "pkg_b:K"}, {"pkg_b": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry_of(tmp_path)
    assert reg.entry("test.same").package == "pkg-a"
    [failure] = reg.failures()
    assert failure.package == "pkg-b"
    assert "'test.same' is already the kernel test.same of package pkg-a" in failure.reason


@pytest.mark.parametrize(("spec", "problem"), [
    (KernelSpec("acme", "d", halo=0, function=print), "is not namespaced"),
    (KernelSpec("acme.x", "d", halo=0, function=print, aliases=("x",)), "alias 'x'"),
    (KernelSpec("acme.x", "d", halo=0), "function is missing"),
    (KernelSpec("acme.x", "d", function=print), "not_tileable does not say why"),
    (KernelSpec("acme.x", "d", halo=0, function=print, output="labels"),  # type: ignore[arg-type]
     "output must be one of image, measure"),
    (KernelSpec("acme.x", "d", halo=0, function=print, resizes=True), "output_shape is missing"),
    (KernelSpec("acme.x", "d", halo=0, function=print,
                params=(Param("k", int, 50, "d", 0, 10),)), "its default is not valid"),
    (KernelSpec("acme.x", "d", halo=0, function=print,
                params=(Param("k", int, 1, "d"), Param("k", int, 1, "d"))), "declared twice"),
    (KernelSpec("acme.x", "d", halo=0, function=print, params=(Param("k", list, 1, "d"),)),
     "kind must be int, float or str"),
])
def test_a_bad_specification_is_named_precisely(spec: KernelSpec, problem: str) -> None:
    assert any(problem in p for p in spec_problems(spec)), spec_problems(spec)


def test_every_built_in_spec_would_pass_the_plugin_vetting_but_for_its_plain_names() -> None:
    for e in _builtin_entries():
        problems = [p for p in spec_problems(e.spec) if "is not namespaced" not in p]
        assert problems == [], e.spec.name
    assert set(BUILTINS) == {e.spec.name for e in _builtin_entries()}


def test_a_plugin_gets_validated_params_and_a_read_only_input(plugin_dir: Path) -> None:
    seen = {}

    def spy(img, *, out=None, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw, writeable=img.flags.writeable)
        return np.zeros_like(img)

    reg = registry_of(plugin_dir)
    reg.load_plugins()
    from dataclasses import replace
    e = replace(reg.entry("test.invert"), spec=replace(reg.entry("test.invert").spec,
                                                       function=spy))
    run_plugin(e, np.zeros((4, 4, 3), np.uint8), {"schedule": "dynamic,8", "threads": 2})
    assert seen == {"threads": 2, "schedule": "dynamic", "chunk": 8, "passes": 1, "mode": "ok",
                    "writeable": False}


@pytest.mark.parametrize(("mode", "error", "text"), [
    ("raise", PluginError, r"plugin test.invert \(test-good 0.1.0\) raised RuntimeError: boom"),
    ("refuse", ValueError, r"plugin test.invert \(test-good 0.1.0\) refused the input: this "
                           r"image is too dull"),
    ("float", PluginError, r"returned dtype float64; kernels return uint8"),
    ("shape", PluginError, r"returned shape \(1, 1, 3\) but declares \(6, 5, 3\)"),
])
def test_a_misbehaving_plugin_raises_an_error_naming_it(plugin_dir: Path, mode: str,
                                                        error: type, text: str) -> None:
    e = registry_of(plugin_dir).entry("test.invert")
    with pytest.raises(error, match=text):
        run_plugin(e, np.zeros((6, 5, 3), np.uint8), {"mode": mode})


def test_out_is_filled_whether_or_not_the_plugin_writes_into_it(plugin_dir: Path) -> None:
    reg = registry_of(plugin_dir)
    img = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    out = np.empty_like(img)
    assert run_plugin(reg.entry("test.invert"), img, {"out": out}) is out
    assert (out == 255 - img).all()


def test_a_bounded_output_may_be_smaller_but_never_larger(plugin_dir: Path) -> None:
    e = registry_of(plugin_dir).entry("test.half")
    img = np.zeros((9, 7, 3), np.uint8)
    assert run_plugin(e, img, {}).shape == (4, 3, 3)
    with pytest.raises(PluginError, match=r"returned shape \(10, 7, 3\), which exceeds its "
                                          r"declared output bound \(4, 3, 3\)"):
        run_plugin(e, img, {"grow": 1})


def test_output_shape_answers_before_running_for_built_ins() -> None:
    assert output_shape("grayscale", (10, 20, 3)) == (10, 20, 1)
    assert output_shape("resize", (10, 20, 3), {"scale": 0.5}) == (5, 10, 3)
    assert output_shape("classify", (10, 20, 3)) == (10, 20, 3)
    with pytest.raises(ValueError, match="resize output is"):
        output_shape("resize", (60_000, 60_000, 3), {"scale": 2})


def test_a_plain_name_that_a_plugin_namespaces_suggests_it(plugin_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown kernel type 'invert' \(did you mean "
                                         r"test.invert\?\); installed types:"):
        registry_of(plugin_dir).canonical_name("invert")

"""`stepchain kernels` lists every kernel with the package it came from, and the plugins that
failed to load with the reason (a child process, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_fixtures import broken_plugins, env_with_path


def kernels(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepsvc.cli", "kernels", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=True)


def test_lists_built_ins_and_the_installed_example_plugins_with_their_package() -> None:
    pytest.importorskip("acme_numpy", reason="the example plugins are not installed in this "
                                             "venv: run `make venv`")
    lines = kernels().stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith(" ")}
    assert rows["gaussian_blur"].split()[1] == "built-in"
    assert "acme-boxblur 0.1.0" in rows["acme.box_blur"]
    assert "acme-numpy-kernels 0.1.0" in rows["acme.sepia"]
    assert "(holds the GIL)" in rows["acme.sepia"]
    assert "acme-opencv-kernels 0.1.0" in rows["acme.denoise"]


def test_a_broken_plugin_is_shown_failed_with_its_reason_and_the_rest_still_listed(
        tmp_path: Path) -> None:
    done = kernels(env=env_with_path(broken_plugins(tmp_path)))
    out = done.stdout
    assert "test.invert" in out and "test.half" in out and "gaussian_blur" in out
    failed = out[out.index("plugins that failed to load"):]
    assert "test.missing" in failed and "test-import-error 0.1.0: ModuleNotFoundError" in failed
    assert "blur" in failed and "is already the alias of built-in kernel gaussian_blur" in failed
    assert "test-bad-spec" in failed
    # one log line per broken package, naming it
    logged = [line for line in done.stderr.splitlines() if "plugin package" in line]
    assert len(logged) == 3, done.stderr


def test_json_gives_each_kernels_specification_and_the_failures(tmp_path: Path) -> None:
    doc = json.loads(kernels("--json", env=env_with_path(broken_plugins(tmp_path))).stdout)
    by_name = {k["name"]: k for k in doc["kernels"]}
    assert by_name["test.invert"]["tiling"] == {"tileable": True, "halo_default": 0}
    assert by_name["test.half"]["tiling"] == {"tileable": False, "reason": "test.half crops"}
    assert by_name["test.half"]["output_bound"] and by_name["test.half"]["resizes"]
    assert by_name["test.invert"]["package"] == "test-good"
    assert by_name["gaussian_blur"]["tiling"] == {"tileable": True, "halo_default": 6}
    assert by_name["classify"]["output"] == "measure" and by_name["classify"]["builtin"]
    assert by_name["deblur"]["params"]["properties"]["iterations"]["maximum"] == 500
    assert {f["package"] for f in doc["failed"]} == {"test-import-error", "test-bad-spec",
                                                    "test-clash"}


def test_check_exits_1_when_a_plugin_failed_and_0_when_all_loaded(tmp_path: Path) -> None:
    assert kernels("--check").returncode == 0
    broken = subprocess.run([sys.executable, "-m", "stepsvc.cli", "kernels", "--check"],
                            capture_output=True, text=True, timeout=120,
                            env=env_with_path(broken_plugins(tmp_path)))
    assert broken.returncode == 1 and "plugins that failed to load" in broken.stdout

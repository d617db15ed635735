"""Spans and metrics say which code computed a step: the kernel, its package and version, for
a plugin as for a built-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from plugin_fixtures import broken_plugins, use_plugins_from
from prometheus_client import generate_latest

from stepsvc.telemetry.metrics import StepMetrics
from stepsvc.telemetry.spans import kernel_identity, step_attributes


@pytest.fixture(autouse=True)
def _plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_plugins_from(broken_plugins(tmp_path / "site"), monkeypatch)
    kernel_identity.cache_clear()


def test_a_plugin_steps_span_carries_the_plugin_name_package_and_version() -> None:
    attributes = step_attributes(pipeline_id="p", step_id=3, step_type="test.invert", threads=1,
                                 pixels=100, kernel_seconds=0.001, request_id="r")
    assert attributes["stepchain.kernel"] == "test.invert"
    assert attributes["stepchain.kernel.package"] == "test-good"
    assert attributes["stepchain.kernel.version"] == "0.1.0"


def test_a_built_in_is_named_by_its_canonical_name_and_stepchain() -> None:
    attributes = step_attributes(pipeline_id="p", step_id=1, step_type="blur", threads=1,
                                 pixels=100, kernel_seconds=0.0, request_id="")
    assert attributes["stepchain.step_type"] == "blur"
    assert attributes["stepchain.kernel"] == "gaussian_blur"
    assert attributes["stepchain.kernel.package"] == "stepchain"


def test_the_kernel_info_metric_names_the_plugin_package() -> None:
    text = generate_latest(StepMetrics("p", 3, "test.invert").registry).decode()
    assert ('stepchain_step_kernel_info{kernel="test.invert",package="test-good",'
            'pipeline_id="p",step_id="3",step_type="test.invert",version="0.1.0"} 1.0') in text

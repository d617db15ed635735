"""`stepchain submit --tile` with plugin kernels: halos from their specifications, refusals
with the plugin's own reason, and a clear answer when a plugin is not installed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_fixtures import broken_plugins
from stepchain.v1 import step_pb2

import native.registry
from native.plugins import installed_entry_points
from native.registry import Registry, _builtin_entries
from stepsvc.client.tile_submit import TileJobError, reach_of


@pytest.fixture
def with_test_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = broken_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(native.registry, "registry", Registry(
        _builtin_entries(), lambda: installed_entry_points([str(folder)])))


def described(*steps: dict) -> step_pb2.DescribeResponse:
    config = {"pipeline_id": "p", "step_id": steps[0]["id"], "steps": list(steps)}
    return step_pb2.DescribeResponse(pipeline_id="p", step_id=steps[0]["id"],
                                     config_json=json.dumps(config))


def test_a_plugins_declared_halo_adds_to_the_pipelines(with_test_plugins: None) -> None:
    reach = reach_of(described({"id": 1, "type": "test.invert", "next_step": [2]},
                               {"id": 2, "type": "edges"}))
    assert reach.halo == 0 + 1


def test_a_plugin_that_is_not_tileable_is_refused_with_its_own_reason(
        with_test_plugins: None) -> None:
    with pytest.raises(TileJobError, match=r"cannot be tiled: step 2 \(test.half\): test.half "
                                           r"crops"):
        reach_of(described({"id": 1, "type": "identity", "next_step": [2]},
                           {"id": 2, "type": "test.half"}))


def test_a_kernel_not_installed_here_is_named_with_what_to_do(with_test_plugins: None) -> None:
    with pytest.raises(TileJobError, match=r"step 2 \(acme.elsewhere\): unknown kernel type "
                                           r"'acme.elsewhere'.*install the plugin package"):
        reach_of(described({"id": 1, "type": "identity", "next_step": [2]},
                           {"id": 2, "type": "acme.elsewhere"}))
    with pytest.raises(TileJobError, match=r"step 1 \(test.missing\): kernel type "
                                           r"'test.missing' is from plugin package "
                                           r"test-import-error, which failed to load"):
        reach_of(described({"id": 1, "type": "test.missing"}))

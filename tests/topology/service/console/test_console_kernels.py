"""The console's kernels page and the service's GET /kernels: built-ins and plugins with their
package, parameters and tiling; failed plugins with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from plugin_fixtures import broken_plugins, use_plugins_from

from topology.local.backend import LocalBackend
from topology.service.app import create_app
from topology.service.settings import Settings


@pytest.fixture
def reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    use_plugins_from(broken_plugins(tmp_path / "site"), monkeypatch)
    app = create_app(Settings(state_dir=tmp_path / "state"), LocalBackend(tmp_path / "state"))
    with TestClient(app) as client:
        yield client


def test_get_kernels_lists_plugins_with_their_package_and_the_failed_ones(
        reader: TestClient) -> None:
    body = reader.get("/kernels").json()
    kernels = {k["name"]: k for k in body["kernels"]}
    assert kernels["gaussian_blur"]["builtin"] and kernels["gaussian_blur"]["package"] == "stepchain"
    assert kernels["test.invert"]["package"] == "test-good"
    assert kernels["test.half"]["tiling"] == {"tileable": False, "reason": "test.half crops"}
    assert {f["package"] for f in body["failed"]} == {"test-import-error", "test-bad-spec",
                                                     "test-clash"}
    assert "/kernels" in reader.get("/openapi.json").json()["paths"]


def test_the_console_kernels_page_shows_packages_params_tiling_and_failures(
        reader: TestClient) -> None:
    page = reader.get("/console/kernels")
    assert page.status_code == 200
    html = page.text
    assert 'id="kernel-test.invert" data-package="test-good"' in html
    assert "test-good 0.1.0" in html and "<code>mode</code> string = ok" in html
    assert "(ok | raise | refuse | float | shape)" in html
    assert 'title="test.half crops"' in html
    assert "<code>sigma</code> number" in html  # a built-in's parameter
    assert "<code>threads</code> integer" not in html  # exec params are listed once, above
    failed = html[html.index("Plugins that failed to load"):]
    assert "test-import-error 0.1.0" in failed and "ModuleNotFoundError" in failed
    assert 'href="/console/kernels"' in reader.get("/").text

"""Suite-wide setup: the repo root and the generated proto package importable from a checkout."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "protos"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))



import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

#: Session-wide fixtures started only when a test asks for them: the real Kubernetes control
#: plane (kube_cluster, kube_namespace) and the real Jaeger (jaeger). Registered here, not
#: imported by test modules, so the whole session shares one of each.
pytest_plugins = ["cluster_fixtures", "jaeger_fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _state_dir_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default state dir (where the topology service generates its API token) lies in a
    temporary XDG_STATE_HOME, never in the real home of whoever runs the tests."""
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before

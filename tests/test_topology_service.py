"""`stepchain topology serve` as a real process: the token it prints and keeps, its exit code.

Everything on loopback, every process started here is stopped here by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from topology.auth import auth_header, client_token

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


class Service:
    """A running `stepchain topology serve --backend local` on a free loopback port."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        self.log = state_dir.parent / f"{state_dir.name}-service.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # installed stepchain
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stepsvc.cli", "topology", "serve", "--backend", "local",
                 "--port", "0", "--state-dir", str(state_dir), *extra],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.findall(r"(http://127\.0\.0\.1:\d+/)", text)
            if found:
                url = found[-1]
                try:
                    if httpx.get(url + "healthz", timeout=1.0).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"topology serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError("topology serve did not come up:\n" + self.log.read_text())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def api(self, token: str | None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=auth_header(token), timeout=60.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test started; whatever is still running at the end is killed."""
    started: list[Service] = []
    yield started
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()


PIPELINE: dict[str, Any] = json.loads((ROOT / "examples" / "sequential.json").read_text())


def test_serve_prints_its_url_with_the_token_it_generated_and_writes_need_it(
        tmp_path: Path, services: list[Service]) -> None:
    service = Service(tmp_path / "state")
    services.append(service)
    token = (tmp_path / "state" / "token").read_text().strip()
    assert (tmp_path / "state" / "token").stat().st_mode & 0o777 == 0o600
    assert f"{service.url}?token={token}" in service.output()
    with service.api(None) as anonymous:
        refused = anonymous.post("/pipeline", params={"dry_run": "true"}, json=PIPELINE)
        assert refused.status_code == 401
        assert anonymous.get("/pipelines").status_code == 200  # reads stay open
    with service.api(client_token(tmp_path / "state")) as api:
        assert api.post("/pipeline", params={"dry_run": "true"},
                        json=PIPELINE).status_code == 200


def test_no_auth_logs_a_warning_and_accepts_writes(tmp_path: Path,
                                                   services: list[Service]) -> None:
    service = Service(tmp_path / "state", "--no-auth")
    services.append(service)
    with service.api(None) as api:
        assert api.post("/pipeline", params={"dry_run": "true"},
                        json=PIPELINE).status_code == 200
    assert "auth is OFF" in service.output()
    assert not (tmp_path / "state" / "token").exists()


def test_sigterm_exits_zero(tmp_path: Path, services: list[Service]) -> None:
    service = Service(tmp_path / "state")
    services.append(service)
    assert service.stop(signal.SIGTERM) == 0

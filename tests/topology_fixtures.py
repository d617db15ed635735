"""Fixtures for the topology tests: kmock's Kubernetes emulator on a real HTTP port, and a real
`stepchain topology serve` process (:class:`Service`).

kmock is asyncio-based and the official Kubernetes client is synchronous, so the emulator runs
on its own event loop in a daemon thread; tests talk to it over HTTP like to an API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


@dataclass
class RunningKmock:
    """A started KubernetesEmulator: its URL, the emulator itself (objects, requests)."""

    url: str
    emulator: Any

    def api_client(self) -> Any:
        """An official-client ApiClient pointed at the emulator."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def calls(self) -> list[tuple[str, str, str]]:
        """(apiGroup, resource, verb) of every Kubernetes API request received so far."""
        verbs = {"list": "list", "watch": "watch", "fetch": "get", "create": "create",
                 "update": "patch", "delete": "delete"}
        out = []
        for request in list(self.emulator):  # iterating kmock yields the requests it received
            resource = request.resource
            if resource is None or resource.plural is None:
                continue  # API discovery (/api, /apis), not an object call
            verb = verbs[request.action.value.lower()] if request.action is not None \
                else f"unrecognised {request.method}"
            out.append((resource.group or "", resource.plural, verb))
        return out

    def names(self, plural: str, namespace: str) -> set[str]:
        """Names of the live objects of a resource (e.g. 'configmaps') in a namespace."""
        found = set()
        for key in list(self.emulator.objects.keys()):
            resource, ns, name = key
            if resource.plural == plural and ns == namespace \
                    and not self.emulator.objects[key].deleted:
                found.add(name)
        return found

    def object(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object (latest version) as a dict."""
        for key in list(self.emulator.objects.keys()):
            resource, ns, obj_name = key
            if resource.plural == plural and ns == namespace and obj_name == name:
                return dict(self.emulator.objects[key].raw)
        raise KeyError(f"{plural}/{namespace}/{name}")


@pytest.fixture(scope="module")
def kmock_server() -> Iterator[RunningKmock]:
    """One emulator per test module (tests use their own namespaces)."""
    with running_kmock() as server:
        yield server


@contextlib.contextmanager
def running_kmock() -> Iterator[RunningKmock]:
    """Starts kmock's KubernetesEmulator with the bundled resource list on a free port."""
    import kmock

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            box["running"] = RunningKmock(url=str(server.url).rstrip("/"), emulator=emulator)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="kmock", daemon=True)
    thread.start()
    if not started.wait(15) or "error" in box:
        raise RuntimeError(f"kmock did not start: {box.get('error')!r}")
    try:
        yield box["running"]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def api_client(app: Any, **kwargs: Any) -> Any:
    """A TestClient that sends the app's bearer token on every request, as the CLI, the demo
    and the console do (writes need it by default)."""
    from fastapi.testclient import TestClient

    from topology.service.auth import auth_header

    return TestClient(app, headers=auth_header(app.state.settings.token), **kwargs)


#: Seconds `stepchain topology serve` gets to answer /healthz.
START_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


class Service:
    """A running `stepchain topology serve --backend local` on a free loopback port."""

    def __init__(self, state_dir: Path, *extra: str,
                 start_timeout: float = START_TIMEOUT_S) -> None:
        self.state_dir = state_dir
        self.start_timeout = start_timeout
        self.log = state_dir.parent / f"{state_dir.name}-service.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # installed stepchain
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stepsvc.cli", "topology", "serve", "--backend", "local",
                 "--port", "0", "--state-dir", str(state_dir), *extra],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + self.start_timeout
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
        from topology.service.auth import auth_header

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

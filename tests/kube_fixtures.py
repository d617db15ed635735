"""kmock's KubernetesEmulator on a real loopback port, for tests that talk to a cluster.

kmock is asyncio-based; the official ``kubernetes`` client (and Helm) are synchronous clients of
a real API server. The emulator runs on its own event loop in a daemon thread, so a test (and
the code under test, with its own watch thread) talks to it over real HTTP exactly as it would
to an API server.

Usage::

    kube = KubeEmulator({"v1/services": kmock.ResourceInfo(kind="Service", namespaced=True)})
    try:
        kube.core.create_namespaced_service(kube.new_namespace(), service)
    finally:
        kube.close()

Known emulator limits: ``labelSelector``, ``resourceVersion`` and ``timeoutSeconds`` are
ignored; every watch first replays the existing objects as ADDED.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import kmock
from kubernetes import client

T = TypeVar("T")

_namespaces = itertools.count(1)


class KubeEmulator:
    """A KubernetesEmulator served on 127.0.0.1:<free port> from a background event loop."""

    def __init__(self, resources: Mapping[str, kmock.ResourceInfo]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock", daemon=True)
        self._thread.start()
        self.emulator, self._server = self._call(self._open(resources))
        self.port: int = self._server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.core = client.CoreV1Api(self.api_client())

    async def _open(self, resources: Mapping[str, kmock.ResourceInfo]
                    ) -> tuple[kmock.KubernetesEmulator, kmock.Server]:
        emulator = kmock.KubernetesEmulator()
        await emulator.__aenter__()
        # Known even before the first object of the kind exists (else a list answers 404).
        emulator.resources.update(resources)
        server = kmock.Server(emulator)
        await server.__aenter__()
        return emulator, server

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def api_client(self) -> client.ApiClient:
        """A fresh official-client ApiClient pointed at this emulator."""
        return client.ApiClient(client.Configuration(host=self.url))

    def kubeconfig(self, path: Path) -> Path:
        """Writes a kubeconfig pointing at this emulator and returns its path."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "unused"}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "tester"}}],
        }), encoding="utf-8")
        return path

    @staticmethod
    def new_namespace() -> str:
        """A namespace no other test used (the emulator is shared by a module's tests)."""
        return f"test-{next(_namespaces)}"

    def drop_connections(self) -> int:
        """Aborts every open TCP connection (as an API server restart would); returns how many."""
        async def abort() -> int:
            runner = self._server.server.runner
            web_server = runner.server if runner is not None else None
            handlers = list(web_server.connections) if web_server is not None else []
            for handler in handlers:
                if handler.transport is not None:
                    handler.transport.abort()
            return len(handlers)
        return self._call(abort())

    def delete_silently(self, namespace: str, name: str, resource: str = "v1/configmaps") -> None:
        """Removes an object (a ConfigMap unless told) from the emulator without a watch event.

        Only a fresh list can notice this — which is what a watcher must do after a break.
        """
        async def remove() -> None:
            del self.emulator.objects[(kmock.resource(resource), namespace, name)]
        self._call(remove())

    def expire_next_watch(self, namespace: str) -> Callable[[], bool]:
        """Makes the next watch in `namespace` answer ``410 Gone`` (expired resourceVersion).

        Returns a function telling whether that has happened yet.
        """
        gone = {"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": 410, "reason": "Expired", "message": "too old resource version"}}
        expired: list[kmock.Request] = []

        def first_watch(request: kmock.Request) -> bool:
            # kmock also evaluates filters over past requests: match one request object only.
            if not expired and request.action == kmock.action.WATCH \
                    and request.namespace == namespace:
                expired.append(request)
            return bool(expired) and request is expired[0]

        self.emulator[first_watch] << (json.dumps(gone).encode() + b"\n")
        return lambda: bool(expired)

    def forbid_watches(self, namespace: str) -> None:
        """Every watch in `namespace` answers 403 (lists still work): an RBAC rule without watch."""
        def watch_here(request: kmock.Request) -> bool:
            return request.action == kmock.action.WATCH and request.namespace == namespace

        self.emulator[watch_here] << 403

    def list_requests(self, namespace: str | None = None) -> int:
        """How many LIST (not WATCH) requests the emulator has served (in `namespace`)."""
        return sum(1 for request in self.emulator[kmock.action.LIST]
                   if namespace is None or request.namespace == namespace)

    def close(self) -> None:
        """Stops the server and the loop (after dropping streams that would block shutdown)."""
        self.drop_connections()

        async def shut() -> None:
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)
        try:
            self._call(shut(), timeout=5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)

"""Latency and jitter on a link, with Toxiproxy (this kernel has no netem).

Toxiproxy is a TCP proxy made for fault tests: a *proxy* listens on one address and relays to an
upstream; *toxics* on it delay (``latency`` ± ``jitter``), slow or cut what passes, per
direction. One server runs inside the host whose outgoing links get the latency (a sidecar: its
API on the host's own loopback), so each link is set on its own; the step dials the proxy's
listen address instead of the next step's.

The binary is built from its Go module (``github.com/Shopify/toxiproxy/v2``) by
``tests/tools/build.sh toxiproxy`` (``make tools``) into ``$STEPCHAIN_TOOLS_DIR/bin``
(default ``.cache/tools/bin``); ``STEPCHAIN_TOXIPROXY`` names another binary.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any

from topology.netns.network import Host, NetnsError, Network, connect

#: Where Toxiproxy's API listens inside the host it runs in (each host has its own loopback).
API_PORT = 8474
START_TIMEOUT_S = 15.0
API_TIMEOUT_S = 5.0
REPO = Path(__file__).resolve().parents[2]


def toxiproxy_binary() -> Path | None:
    """The toxiproxy-server binary: ``$STEPCHAIN_TOXIPROXY``, else the tools cache
    (``$STEPCHAIN_TOOLS_DIR/bin``, default ``.cache/tools/bin``); None when not built."""
    explicit = os.environ.get("STEPCHAIN_TOXIPROXY")
    tools = Path(os.environ.get("STEPCHAIN_TOOLS_DIR") or REPO / ".cache" / "tools")
    path = Path(explicit) if explicit else tools / "bin" / "toxiproxy-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_reason() -> str | None:
    """Why Toxiproxy cannot run here (None: it can)."""
    if toxiproxy_binary() is None:
        return ("toxiproxy-server not built: run `make tools` (tests/tools/build.sh toxiproxy; "
                "cache $STEPCHAIN_TOOLS_DIR, default .cache/tools) or set STEPCHAIN_TOXIPROXY")
    return None


class Toxiproxy:
    """A toxiproxy-server inside `host` and the proxies and toxics it holds."""

    def __init__(self, network: Network, host: Host, log_path: Path) -> None:
        binary = toxiproxy_binary()
        if binary is None:
            raise NetnsError(missing_reason() or "toxiproxy-server not found")
        self.network = network
        self.host = host
        self.log_path = log_path
        self.process = network.spawn(
            host, [str(binary), "-host", "127.0.0.1", "-port", str(API_PORT)],
            log_path=log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self._request("GET", "/version")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise NetnsError(
                        f"toxiproxy-server in {host.name} did not answer on its API within "
                        f"{START_TIMEOUT_S:.0f} s; see {log_path}") from None
                time.sleep(0.1)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        sock = connect(self.host.namespace, "127.0.0.1", API_PORT, timeout=API_TIMEOUT_S)
        conn = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=API_TIMEOUT_S)
        conn.sock = sock
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload,
                         headers={"Content-Type": "application/json"} if payload else {})
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if response.status >= 300:
            raise NetnsError(f"toxiproxy {method} {path}: {response.status} {text.strip()}")
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def proxy(self, name: str, listen_port: int, upstream: str) -> str:
        """A proxy from 127.0.0.1:`listen_port` in this host to `upstream` ("ip:port");
        returns the address to dial."""
        self._request("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen_port}",
                                           "upstream": upstream, "enabled": True})
        return f"127.0.0.1:{listen_port}"

    def latency(self, proxy: str, latency_ms: int, jitter_ms: int = 0, *,
                stream: str = "downstream") -> None:
        """Delays every chunk through `proxy` in `stream` ("downstream": towards the client,
        "upstream": towards the server) by `latency_ms` ± `jitter_ms` (uniform)."""
        self._request("POST", f"/proxies/{proxy}/toxics", {
            "name": f"latency_{stream}", "type": "latency", "stream": stream, "toxicity": 1.0,
            "attributes": {"latency": latency_ms, "jitter": jitter_ms}})

    def clear(self, proxy: str) -> None:
        """Removes every toxic of `proxy`."""
        for toxic in self._request("GET", f"/proxies/{proxy}/toxics"):
            self._request("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")

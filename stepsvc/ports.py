"""Free TCP ports on loopback: the one helper the local backend, the demo, the benchmarks and
the tests use to pick ports for servers they start.

A port is free when it is checked; another process may take it before the server binds it, so
callers that start servers handle "address in use" (the local backend retries on another port).
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` different ports free on `host` right now (every socket is held until all are
    chosen, so the ports differ)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """One port free on `host` right now."""
    return free_ports(1, host)[0]


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether `port` can be bound on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True

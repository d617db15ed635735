"""The harness itself on real namespaces: hosts reach each other only inside them, a blackhole
drops without a reset, random loss drops about the share asked, tbf caps a link, Toxiproxy
delays one, and everything is gone afterwards (also for a process that died). Needs root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from topology.netns import network as netns
from topology.netns import toxiproxy
from topology.netns.network import ETC_NETNS, Host, Network, in_namespace

#: Linux's SO_RCVBUFFORCE (root may exceed rmem_max); Python's socket module does not name it.
SO_RCVBUFFORCE = 33


def _listen(host: Host, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host.address, port))
        if kind == socket.SOCK_STREAM:
            s.listen(8)
        return s
    return in_namespace(host.namespace, make)


def _serve_echo(server: socket.socket) -> threading.Thread:
    def serve() -> None:
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)
        except OSError:
            return
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _sink(server: socket.socket) -> threading.Thread:
    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                while conn.recv(1 << 20):
                    pass
        except OSError:
            return
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _host_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True,
                          check=True).stdout


def test_hosts_talk_over_the_bridge_and_nothing_appears_in_the_machines_namespace() -> None:
    if netns.unavailable_reason():
        pytest.skip(f"needs root and ip netns: {netns.unavailable_reason()}")
    before = _host_links()
    with Network() as net:
        a, b = net.add_host("a"), net.add_host("b")
        server = _listen(b, 7000)
        _serve_echo(server)
        conn = netns.connect(a.namespace, b.address, 7000)
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        server.close()
        assert _host_links() == before
        assert a.address not in subprocess.run(["ip", "-br", "addr"], capture_output=True,
                                                text=True).stdout
        names = [net.switch, a.namespace, b.namespace]
        assert all((netns.NETNS_DIR / n).exists() for n in names)
    assert not any((netns.NETNS_DIR / n).exists() for n in names)
    assert _host_links() == before


def test_a_blackholed_host_neither_answers_nor_resets(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    server = _listen(b, 7000)
    _serve_echo(server)
    conn = netns.connect(a.namespace, b.address, 7000)
    network.blackhole(b)
    conn.settimeout(1.0)
    conn.sendall(b"lost")  # accepted by a's kernel; never answered, never reset
    with pytest.raises(socket.timeout):
        conn.recv(4)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        netns.connect(a.namespace, b.address, 7000, timeout=1.0)
    assert time.monotonic() - started >= 0.9  # a timeout, not a refusal
    network.heal(b)
    conn.settimeout(5.0)
    assert conn.recv(4) == b"lost"  # TCP retransmitted once the link healed
    conn.close()
    server.close()


def test_random_loss_drops_about_the_share_asked(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    network.loss([a, b], 10)
    receiver = _listen(b, 9000, socket.SOCK_DGRAM)
    # room for every datagram: a receiver descheduled on a busy machine must not drop any
    receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    receiver.settimeout(1.0)
    sender = in_namespace(a.namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    got = 0

    def count() -> None:
        nonlocal got
        try:
            while True:
                receiver.recv(16)
                got += 1
        except OSError:
            return

    thread = threading.Thread(target=count)
    thread.start()
    for _ in range(3000):
        sender.sendto(b"x", (b.address, 9000))
        time.sleep(0.0002)
    thread.join()
    sender.close()
    receiver.close()
    lost = 1 - got / 3000
    print(f"\nloss asked 10 %, measured {lost:.1%} of 3000 datagrams")
    assert 0.07 < lost < 0.13


def test_bandwidth_cap_limits_a_bulk_transfer(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    network.bandwidth(a, "20mbit")
    server = _listen(b, 7001)
    _sink(server)
    conn = netns.connect(a.namespace, b.address, 7001)
    payload = b"\0" * (5 * 1024 * 1024)
    started = time.monotonic()
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(10)
    conn.recv(1)  # the sink closes once everything arrived
    seconds = time.monotonic() - started
    conn.close()
    server.close()
    mbit = len(payload) * 8 / seconds / 1e6
    print(f"\n20mbit cap: 5 MiB in {seconds:.2f} s = {mbit:.1f} Mbit/s")
    assert mbit < 24


def test_toxiproxy_adds_its_latency_to_a_link(network: Network, tmp_path: Path) -> None:
    reason = toxiproxy.missing_reason()
    if reason:
        pytest.skip(reason)
    a, b = network.add_host("a"), network.add_host("b")
    server = _listen(b, 7002)
    _serve_echo(server)
    proxy = toxiproxy.Toxiproxy(network, a, tmp_path / "toxiproxy.log")
    address = proxy.proxy("a_to_b", 17002, f"{b.address}:7002")
    host, _, port = address.rpartition(":")

    def round_trips() -> list[float]:
        conn = netns.connect(a.namespace, host, int(port), timeout=5)
        times = []
        for _ in range(5):
            started = time.monotonic()
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            times.append((time.monotonic() - started) * 1000)
        conn.close()
        return times

    clean = round_trips()
    proxy.latency("a_to_b", 50, 10, stream="upstream")
    proxy.latency("a_to_b", 50, 10, stream="downstream")
    slow = round_trips()
    print(f"\nround trip through Toxiproxy: clean {max(clean):.1f} ms max, with 50±10 ms each "
          f"way {min(slow):.1f}..{max(slow):.1f} ms")
    assert max(clean) < 20
    assert all(75 <= t <= 160 for t in slow)
    proxy.clear("a_to_b")
    assert sorted(round_trips())[2] < 20  # the median: back to a clean link
    server.close()


def test_namespaces_of_a_process_that_died_are_swept_and_others_left_alone() -> None:
    if netns.unavailable_reason():
        pytest.skip(f"needs root and ip netns: {netns.unavailable_reason()}")
    code = ("import os, time; from topology.netns.network import Network; n = Network(); "
            "n.add_host('x'); print(n.prefix, flush=True); os._exit(0)")
    # exits without cleanup (os._exit skips atexit), as a test killed mid-run would
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=Path(__file__).resolve().parents[3],
                         env={**os.environ}).stdout.strip()
    left = sorted(p.name for p in netns.NETNS_DIR.iterdir() if p.name.startswith(out))
    assert len(left) == 2  # the switch and host x
    with Network() as net:  # a new network sweeps what dead processes left
        assert not any(p.name.startswith(out) for p in netns.NETNS_DIR.iterdir())
        assert (netns.NETNS_DIR / net.switch).exists()


def test_a_loopback_server_is_reachable_inside_by_name_and_cut_by_a_partition(
        network: Network) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat not installed (tests/install-test-tools.sh installs it)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    _serve_echo(server)
    control, a = network.add_host("control"), network.add_host("a")
    address = network.expose(control, 6443, server.getsockname()[1])
    network.name_hosts(a, {"kubernetes.default.svc": control.address})
    assert network.exec(a, ["getent", "hosts", "kubernetes.default.svc"]).split()[0] == \
        control.address
    assert not (ETC_NETNS / control.namespace).exists()  # only the host that was given names
    host, _, port = address.rpartition(":")
    conn = netns.connect(a.namespace, host, int(port))
    conn.sendall(b"relay")
    assert conn.recv(5) == b"relay"
    conn.close()
    network.partition([control], [a])
    with pytest.raises(OSError):
        netns.connect(a.namespace, host, int(port), timeout=1.0)
    network.heal(control)
    assert netns.port_open(a.namespace, host, int(port))
    server.close()
    network.close()
    assert not (ETC_NETNS / a.namespace).exists()

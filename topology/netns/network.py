"""A network of namespaces: a bridge in a switch namespace, one namespace per host joined to it
by a veth pair, and the faults on the bridge.

Everything is made inside namespaces this object names (:mod:`topology.netns.plan`): the veth
pairs are created in the switch namespace with their other end in the host's, so the machine's
own namespace, interfaces and routes are never touched. :meth:`Network.close` (also at
interpreter exit, and for networks whose creating process died: :func:`sweep_stale`) kills what
runs inside, then deletes the namespaces, which takes the bridge, the veth pairs, the qdiscs
and the nftables rules with them. Every command runs with a timeout. Needs root (``ip netns``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from topology.local.supervisor import process_alive, spawn, stop_all
from topology.netns import plan

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where `ip netns` keeps its named namespaces.
NETNS_DIR = Path("/run/netns")
#: Files `ip netns exec NAME` mounts over /etc (hosts: names that resolve inside NAME).
ETC_NETNS = Path("/etc/netns")
#: Seconds any one ip/nft/tc command may take.
COMMAND_TIMEOUT_S = 10.0
#: Seconds processes started in the network get between SIGTERM and SIGKILL at close.
STOP_GRACE_S = 3.0
_CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """A namespace, link or fault could not be made; the message shows the command and why."""


def unavailable_reason() -> str | None:
    """Why this machine cannot make a network of namespaces (None: it can): not root, or
    ``ip``/``nft``/``tc`` missing (tests/install-test-tools.sh installs iproute2 and
    nftables)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    missing = [tool for tool in ("ip", "nft", "tc") if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: iproute2, nftables; "
                "tests/install-test-tools.sh installs them)")
    return None


def run(argv: Sequence[str], *, input_text: str | None = None,
        timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Runs one command, returns its stdout; NetnsError with its stderr if it fails."""
    try:
        done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc.strerror}") from None
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_namespace(namespace: str, action: Callable[[], T], *,
                 timeout: float = COMMAND_TIMEOUT_S) -> T:
    """Runs `action` on a thread of its own that has entered `namespace`'s network: a socket
    it creates belongs to that namespace for its whole life, whichever thread uses it later
    (how the test process talks to Toxiproxy's API or checks a port inside a host)."""
    box: dict[str, object] = {}

    def enter_and_act() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"cannot enter namespace {namespace}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = action()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=enter_and_act, name=f"netns {namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetnsError(f"an action inside namespace {namespace} took over {timeout:.0f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def connect(namespace: str, host: str, port: int, *, timeout: float = 2.0) -> socket.socket:
    """A TCP connection to host:port made from inside `namespace`."""
    return in_namespace(namespace, lambda: socket.create_connection((host, port), timeout),
                        timeout=timeout + 1.0)


def port_open(namespace: str, host: str, port: int, *, timeout: float = 1.0) -> bool:
    """Whether host:port accepts a TCP connection from inside `namespace`."""
    try:
        connect(namespace, host, port, timeout=timeout).close()
    except OSError:
        return False
    return True


def namespace_pids(namespace: str) -> list[int]:
    """Pids of the processes inside `namespace` (``ip netns pids``)."""
    try:
        out = run(["ip", "netns", "pids", namespace])
    except NetnsError:
        return []
    return [int(word) for word in out.split() if word.isdigit()]


def delete_namespaces(namespaces: Sequence[str]) -> None:
    """Kills every process inside `namespaces`, then deletes them (their links, qdiscs and
    rules go with them). Never raises: it is the cleanup."""
    for namespace in namespaces:
        for pid in namespace_pids(namespace):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for namespace in namespaces:
        if (NETNS_DIR / namespace).exists():
            try:
                run(["ip", "netns", "delete", namespace])
            except NetnsError as exc:
                log.warning("cleanup: %s", exc)
        shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Deletes the namespaces of networks whose creating process is gone (a test killed before
    its cleanup ran); returns their names. Namespaces of live processes and every namespace
    not named by this harness are left alone."""
    names: set[str] = set()
    for folder in (NETNS_DIR, ETC_NETNS):
        with contextlib.suppress(OSError):
            names.update(entry.name for entry in folder.iterdir())
    stale = [name for name in sorted(names)
             if (pid := plan.owner_pid(name)) is not None and not process_alive(pid)]
    if stale:
        log.warning("removing %d namespace(s) left by processes that exited: %s",
                    len(stale), ", ".join(stale))
        delete_namespaces(stale)
    return stale


@dataclass(frozen=True)
class Host:
    """One host of the network: its namespace, its address on the bridge and its bridge port."""

    name: str
    index: int
    namespace: str
    address: str
    port: str


class Network:
    """A bridge and the hosts joined to it, with the faults on its links; a context manager.

    ``with Network() as net: a = net.add_host("step-0") ...`` — everything is gone after the
    block, also when it raised.
    """

    def __init__(self, *, subnet: plan.ipaddress.IPv4Network = plan.SUBNET) -> None:
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        sweep_stale()
        self.subnet = subnet
        self.prefix = plan.network_prefix(os.getpid(), secrets.token_hex(3))
        self.switch = plan.namespace_name(self.prefix, "switch")
        self.hosts: dict[str, Host] = {}
        self.faults = plan.LinkFaults()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Relay sockets and logs (removed at close).
        self._runtime = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        atexit.register(self.close)
        try:
            self._add_namespace(self.switch)
            ip = ["ip", "-n", self.switch]
            run([*ip, "link", "add", plan.BRIDGE, "type", "bridge"])
            run([*ip, "link", "set", plan.BRIDGE, "up"])
            self._apply_faults(self.faults)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, namespace: str) -> None:
        self._namespaces.append(namespace)
        run(["ip", "netns", "add", namespace])
        run(["ip", "-n", namespace, "link", "set", "lo", "up"])

    def add_host(self, name: str) -> Host:
        """A new host named `name`: its namespace, a veth pair to the bridge, an address."""
        with self._lock:
            if name in self.hosts:
                raise ValueError(f"host {name!r} already exists in this network")
            index = len(self.hosts)
            host = Host(name=name, index=index,
                        namespace=plan.namespace_name(self.prefix, name),
                        address=str(plan.host_address(index, self.subnet)),
                        port=plan.port_name(index))
            self._add_namespace(host.namespace)
            sw = ["ip", "-n", self.switch]
            run([*sw, "link", "add", host.port, "type", "veth", "peer", "name",
                 plan.HOST_INTERFACE, "netns", host.namespace])
            run([*sw, "link", "set", host.port, "master", plan.BRIDGE, "up"])
            inside = ["ip", "-n", host.namespace]
            run([*inside, "addr", "add", f"{host.address}/{self.subnet.prefixlen}",
                 "dev", plan.HOST_INTERFACE])
            run([*inside, "link", "set", plan.HOST_INTERFACE, "up"])
            self.hosts[name] = host
            return host

    def host(self, name: str) -> Host:
        return self.hosts[name]

    # -- processes -----------------------------------------------------------------------------

    def spawn(self, host: Host, argv: Sequence[str], *, log_path: Path,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              pass_fds: Sequence[int] = (), append_log: bool = False) -> subprocess.Popen[bytes]:
        """Starts `argv` inside `host` (``ip netns exec`` replaces itself with the command, so
        the pid is the command's), output to `log_path`; stopped at close."""
        process = spawn(["ip", "netns", "exec", host.namespace, *argv],
                        env if env is not None else dict(os.environ), cwd or Path.cwd(),
                        log_path, append_log=append_log, pass_fds=pass_fds)
        with self._lock:
            self._processes.append(process)
        return process

    def exec(self, host: Host, argv: Sequence[str], *,
             timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Runs `argv` inside `host` to completion; its stdout."""
        return run(["ip", "netns", "exec", host.namespace, *argv], timeout=timeout)

    def name_hosts(self, host: Host, names: Mapping[str, str]) -> None:
        """Makes `names` (name -> address) resolve inside `host` for processes started after
        this (``ip netns exec`` mounts /etc/netns/<namespace>/hosts over /etc/hosts): how steps
        find Services by name, as a cluster's DNS would answer them."""
        directory = ETC_NETNS / host.namespace
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 *(f"{address}\t{name}" for name, address in sorted(names.items()))]
        (directory / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def expose(self, host: Host, port: int, loopback_port: int) -> str:
        """Makes a server on the machine's 127.0.0.1:`loopback_port` (one the test started,
        e.g. a Kubernetes API server) reachable inside the network at `host`'s address and
        `port`: two socat relays joined by a unix socket, which belongs to no network
        namespace. Faults on `host`'s link apply to it. Returns "address:port"."""
        if shutil.which("socat") is None:
            raise NetnsError("socat not installed (Debian: socat; tests/install-test-tools.sh "
                             "installs it)")
        sock = self._runtime / f"{host.name}-{port}.sock"
        outside = spawn(["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                         f"TCP:127.0.0.1:{loopback_port}"], dict(os.environ), self._runtime,
                        self._runtime / f"{host.name}-{port}-outside.log", append_log=False)
        with self._lock:
            self._processes.append(outside)
        self.spawn(host, ["socat", f"TCP-LISTEN:{port},bind={host.address},fork,reuseaddr",
                          f"UNIX-CONNECT:{sock}"],
                   log_path=self._runtime / f"{host.name}-{port}-inside.log")
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not (sock.exists() and port_open(host.namespace, host.address, port)):
            if outside.poll() is not None or time.monotonic() > deadline:
                raise NetnsError(f"the relay of 127.0.0.1:{loopback_port} to {host.name} did "
                                 f"not start; see {self._runtime}")
            time.sleep(0.05)
        return f"{host.address}:{port}"

    # -- faults --------------------------------------------------------------------------------

    def _apply_faults(self, faults: plan.LinkFaults) -> None:
        run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"],
            input_text=plan.nft_ruleset(faults))
        self.faults = faults

    def blackhole(self, host: Host) -> None:
        """Every frame to or from `host` vanishes on the bridge: no reset, no ICMP, no ARP
        answer, connections that look alive (a node that lost power or its link)."""
        with self._lock:
            self._apply_faults(self.faults.blackhole(host.port))

    def partition(self, side_a: Sequence[Host], side_b: Sequence[Host]) -> None:
        """Packets between any host of `side_a` and any of `side_b` are dropped both ways."""
        with self._lock:
            faults = self.faults
            for a in side_a:
                for b in side_b:
                    faults = faults.drop(a.address, b.address).drop(b.address, a.address)
            self._apply_faults(faults)

    def loss(self, hosts: Sequence[Host], percent: float) -> None:
        """`percent` of the packets between every pair of `hosts`, each way, dropped at random
        (nftables ``numgen random``: independent per packet)."""
        per_mille = plan.loss_per_mille(percent)
        with self._lock:
            faults = self.faults
            for a in hosts:
                for b in hosts:
                    if a != b:
                        faults = faults.drop(a.address, b.address, per_mille)
            self._apply_faults(faults)

    def heal(self, *hosts: Host) -> None:
        """Removes every fault touching `hosts` (every fault at all without arguments)."""
        with self._lock:
            if not hosts:
                self._apply_faults(plan.LinkFaults())
                return
            faults = self.faults
            addresses = {h.address for h in hosts}
            for host in hosts:
                faults = faults.unblackhole(host.port)
            faults = faults.undrop((d.source, d.destination) for d in faults.drops
                                   if d.source in addresses or d.destination in addresses)
            self._apply_faults(faults)

    def bandwidth(self, host: Host, rate: str | None) -> None:
        """Caps `host`'s link at `rate` (e.g. ``100mbit``) in both directions with ``tbf``
        (on its own interface and on its bridge port); None removes the cap."""
        devices = ((host.namespace, plan.HOST_INTERFACE), (self.switch, host.port))
        for namespace, device in devices:
            if rate is None:
                with contextlib.suppress(NetnsError):  # no cap set: nothing to remove
                    run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev",
                         device, "root"])
            else:
                run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev",
                     device, "root", *plan.tbf_args(plan.parse_rate(rate))])

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the processes started here, then deletes every namespace (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            processes, namespaces = list(self._processes), list(self._namespaces)
        atexit.unregister(self.close)
        # Frozen (SIGSTOP) processes would sit out SIGTERM: let them see it.
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGCONT)
        stop_all(processes, STOP_GRACE_S)
        delete_namespaces(namespaces)
        shutil.rmtree(self._runtime, ignore_errors=True)

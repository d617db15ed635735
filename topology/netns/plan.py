"""The plan of a network of namespaces, as pure functions: names, addresses, the nftables rule
set for the faults on its bridge and the ``tbf`` arguments of a bandwidth cap.

Names carry the creating process's pid (``stepchain-<pid>-<token>-<host>``), so namespaces left
behind by a process that died can be told from those of a live one and swept
(:func:`owner_pid`). Addresses come from 198.18.0.0/15, which RFC 2544 reserves for network
benchmarks: never routed, and here present only inside the namespaces the harness made.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

#: Every namespace the harness makes starts with this (and nothing else it touches does not).
NAME_PREFIX = "stepchain"
#: The hosts' subnet (RFC 2544's benchmarking range): exists only inside our namespaces.
SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
#: Host n gets SUBNET's address FIRST_HOST + n (room below for nothing in particular: readable).
FIRST_HOST = 10
#: The bridge inside the switch namespace, and each host's side of its veth pair.
BRIDGE = "br0"
HOST_INTERFACE = "eth0"
#: The nftables table (bridge family) the faults live in, in the switch namespace.
FAULT_TABLE = "stepchain_faults"
#: Loss is drawn per packet out of this many (per mille: 0.1 % steps).
LOSS_SCALE = 1000

_NAME = re.compile(rf"^{NAME_PREFIX}-(\d+)-[0-9a-f]+-[a-z0-9-]+$")
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


def network_prefix(pid: int, token: str) -> str:
    """The prefix of every namespace of one network: ``stepchain-<pid>-<token>``."""
    return f"{NAME_PREFIX}-{pid}-{token}"


def namespace_name(prefix: str, host: str) -> str:
    """The namespace of `host` ("switch" is the bridge's). Raises ValueError for a host name
    that is not lower-case letters, digits and dashes (at most 32)."""
    if not _HOST_NAME.match(host):
        raise ValueError(f"host name {host!r}: use lower-case letters, digits and dashes "
                         "(1..32 characters, not starting or ending with a dash)")
    return f"{prefix}-{host}"


def owner_pid(namespace: str) -> int | None:
    """The pid of the process that made `namespace`, for names this module gives; None for
    any other namespace (which the harness never touches)."""
    match = _NAME.match(namespace)
    return int(match.group(1)) if match else None


def host_address(index: int, subnet: ipaddress.IPv4Network = SUBNET) -> ipaddress.IPv4Address:
    """The address of the `index`-th host (0-based). ValueError when the subnet is full."""
    if index < 0:
        raise ValueError(f"host index must be >= 0, got {index}")
    address = subnet.network_address + FIRST_HOST + index
    if address >= subnet.broadcast_address:
        raise ValueError(f"subnet {subnet} has no room for host {index}")
    return address


def port_name(index: int) -> str:
    """The bridge port (the switch's side of the veth pair) of the `index`-th host."""
    return f"h{index}"


@dataclass(frozen=True)
class Drop:
    """Packets from `source` to `destination` (addresses) dropped on the bridge, `per_mille`
    of them at random (LOSS_SCALE: all)."""

    source: str
    destination: str
    per_mille: int = LOSS_SCALE

    def __post_init__(self) -> None:
        if not 0 < self.per_mille <= LOSS_SCALE:
            raise ValueError(f"loss must be in (0, {LOSS_SCALE}] per mille, got {self.per_mille}")

    def rule(self) -> str:
        match = f"ip saddr {self.source} ip daddr {self.destination}"
        if self.per_mille >= LOSS_SCALE:
            return f"{match} drop"
        return f"{match} numgen random mod {LOSS_SCALE} < {self.per_mille} drop"


@dataclass(frozen=True)
class LinkFaults:
    """What the bridge does to packets right now: blackholed hosts (every frame to or from
    their port dropped, ARP included: a host that vanished without a reset) and drops between
    pairs of addresses (partitions and random loss)."""

    blackholed: frozenset[str] = field(default_factory=frozenset)
    drops: tuple[Drop, ...] = ()

    def blackhole(self, port: str) -> LinkFaults:
        return replace(self, blackholed=self.blackholed | {port})

    def unblackhole(self, port: str) -> LinkFaults:
        return replace(self, blackholed=self.blackholed - {port})

    def drop(self, source: str, destination: str, per_mille: int = LOSS_SCALE) -> LinkFaults:
        """Adds (or replaces) the drop from `source` to `destination`."""
        kept = tuple(d for d in self.drops
                     if (d.source, d.destination) != (source, destination))
        return replace(self, drops=(*kept, Drop(source, destination, per_mille)))

    def undrop(self, pairs: Iterable[tuple[str, str]]) -> LinkFaults:
        gone = set(pairs)
        return replace(self, drops=tuple(d for d in self.drops
                                         if (d.source, d.destination) not in gone))


def nft_ruleset(faults: LinkFaults) -> str:
    """The switch namespace's whole nftables rule set for `faults`, applied in one
    transaction (``nft -f``): the namespace holds nothing else, so it starts by flushing."""
    rules = []
    for port in sorted(faults.blackholed):
        rules += [f'iifname "{port}" drop', f'oifname "{port}" drop']
    rules += [d.rule() for d in faults.drops]
    body = "".join(f"\t\t{rule}\n" for rule in rules)
    return (f"flush ruleset\n"
            f"table bridge {FAULT_TABLE} {{\n"
            f"\tchain links {{\n"
            f"\t\ttype filter hook forward priority 0; policy accept;\n"
            f"{body}"
            f"\t}}\n"
            f"}}\n")


def loss_per_mille(percent: float) -> int:
    """A loss percentage as the per-mille the rule draws with (0.1 % steps, at least 1)."""
    if not 0 < percent <= 100:
        raise ValueError(f"loss must be in (0, 100] percent, got {percent}")
    return max(1, round(percent * LOSS_SCALE / 100))


def tbf_args(rate_bits: int, *, latency_ms: int = 50) -> list[str]:
    """``tc qdisc replace ... root`` arguments capping a device at `rate_bits` per second:
    a token bucket whose burst holds 10 ms at the rate (at least one 64 KiB GSO segment, which
    tbf must be able to pass whole), packets queued at most `latency_ms`."""
    if rate_bits <= 0:
        raise ValueError(f"rate must be > 0 bit/s, got {rate_bits}")
    burst = max(64 * 1024 + 1514, rate_bits // 8 // 100)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst),
            "latency", f"{latency_ms}ms"]


def parse_rate(text: str) -> int:
    """A rate such as ``100mbit``, ``1gbit``, ``500kbit`` or ``2000000`` as bits per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit)?\s*", text.lower())
    if not match:
        raise ValueError(f"rate {text!r}: use a number of bits per second with an optional "
                         "k/m/g prefix, e.g. 100mbit")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[match.group(2)]
    bits = int(float(match.group(1)) * scale)
    if bits <= 0:
        raise ValueError(f"rate {text!r} must be > 0")
    return bits

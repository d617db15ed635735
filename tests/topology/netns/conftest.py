"""Fixtures of the network-fault tests: a network of namespaces torn down however the test ends,
and a check after every test that nothing it made is left behind.

These tests need root and ``ip netns`` (iproute2, nftables; tests/install-test-tools.sh installs
them). The project's machines run the suite as root; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from topology.netns import plan
from topology.netns.network import ETC_NETNS, NETNS_DIR, Network, unavailable_reason


@pytest.fixture
def network() -> Iterator[Network]:
    """A fresh network of namespaces; everything in it is stopped and deleted afterwards."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"this test makes network namespaces and needs root: {reason}")
    net = Network()
    try:
        yield net
    finally:
        net.close()


def _children() -> dict[int, str]:
    """This process's live children (zombies aside): pid -> command line."""
    me, found = os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == me and state != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@pytest.fixture(autouse=True)
def _leaves_nothing_behind() -> Iterator[None]:
    """After each test (passed or failed): no namespace of this process's networks and no
    process it started in one (or a relay for one) is left. Processes a session fixture
    started meanwhile on the machine's own network (a control plane) are not the test's."""
    before = set(_children())
    yield
    prefix = f"{plan.NAME_PREFIX}-{os.getpid()}-"
    left = sorted(entry.name for folder in (NETNS_DIR, ETC_NETNS) if folder.is_dir()
                  for entry in folder.iterdir() if entry.name.startswith(prefix))
    ours = _netns_inode("self")
    running = {pid: command for pid, command in _children().items()
               if pid not in before
               and (_netns_inode(pid) != ours or prefix in command)}
    assert not left, f"namespaces left behind: {left}"
    assert not running, f"processes left behind: {running}"

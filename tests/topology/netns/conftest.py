"""Fixtures of the network-fault tests: a network of namespaces torn down however the test ends.

These tests need root and ``ip netns`` (iproute2, nftables; tests/install-test-tools.sh installs
them). The project's machines run the suite as root; elsewhere the tests skip and say why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from topology.netns.network import Network, unavailable_reason


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

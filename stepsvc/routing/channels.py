"""How a step connects to the next: gRPC channel options and the state of each channel.

Every channel uses the ``round_robin`` policy, so one channel keeps a connection to each replica
an address names and spreads requests over them; it re-resolves DNS within seconds, reconnects
within a second, and finds a peer that vanished without a reset by HTTP/2 keepalive (pinged
each KEEPALIVE_S, dropped when a ping is not answered within KEEPALIVE_S more).
:class:`ChannelStates` follows each channel's connectivity so a forward can wait for a next
step to come back. Used by :mod:`stepsvc.routing.forward`, the step server, clients and the
load test alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import grpc

from stepsvc.limits import DEFAULT_KEEPALIVE_S, MIN_KEEPALIVE_S

#: Every channel balances over all addresses its target resolves to (gRPC's default,
#: pick_first, would send everything to the first replica).
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
#: Shortest pause between two DNS re-resolutions of one channel (gRPC's default is 30 s): pods
#: that come and go are seen within seconds of a connection closing.
DNS_MIN_RERESOLUTION_MS = 5000
#: Keepalive period and ping timeout (stepsvc.limits): a dead next step is found within ~2 x.
KEEPALIVE_S = DEFAULT_KEEPALIVE_S
#: Longest reconnect back-off (gRPC adds up to 20 % jitter): a step back on its address is
#: connected again within a second.
MAX_RECONNECT_BACKOFF_MS = 800


def transport_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """HTTP/2 settings for image-sized messages, shared by step servers and every channel."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # A large initial HTTP/2 window: a 6 MB frame then streams without waiting for
        # window updates (about halved loopback transfer time for 1080p frames here).
        ("grpc.http2.lookahead_bytes", min(max_message_bytes, 16 * 1024 * 1024)),
        # The largest HTTP/2 frame (2^24 - 1) instead of 16 KiB: a 1080p image crosses in one
        # frame rather than ~400, another ~25 % off the loopback hop here.
        ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
    ]


def channel_options(max_message_bytes: int,
                    keepalive_s: float = KEEPALIVE_S) -> list[tuple[str, int | str]]:
    """gRPC channel options shared by steps and clients (transport, fast reconnect, keepalive
    that finds a dead peer within ~2 x `keepalive_s`, round_robin over every replica the
    target names)."""
    keepalive_ms = round(max(keepalive_s, MIN_KEEPALIVE_S) * 1000)
    return [
        *transport_options(max_message_bytes),
        ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RERESOLUTION_MS),
        # A restarted step should be reachable again within a second, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        # (also the shortest time a connection attempt gets: a SYN into a blackhole waits this)
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        # A peer that vanished without a reset: pinged every keepalive_s, idle or not and
        # however long a call runs without data (no cap on pings between data frames), and
        # dropped when it does not answer within keepalive_s.
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        # what gRPC 1.85 times a sent ping by (keepalive or BDP): measured, only this one ends
        # a connection to a frozen peer whose kernel still ACKs (else the 1-minute default)
        ("grpc.http2.ping_timeout_ms", keepalive_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_keepalive_options() -> list[tuple[str, int]]:
    """What a step server needs to accept the pings of :func:`channel_options`' clients (any
    keepalive down to MIN_KEEPALIVE_S, pings during long calls without data): gRPC's default
    counts pings sooner than 5 minutes apart without data as strikes and closes the connection
    on the third (GOAWAY "too_many_pings"), which cut calls waiting on a restarting next step."""
    return [("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms",
             round(MIN_KEEPALIVE_S * 1000)),
            ("grpc.http2.max_ping_strikes", 0)]


class ChannelStates:
    """The connectivity state of every channel to a next step, as gRPC reports its changes, so
    a forward that found every candidate down can wait for the first one that comes back
    (READY) instead of failing while the channels sit in reconnect back-off."""

    def __init__(self) -> None:
        self._states: dict[str, grpc.ChannelConnectivity] = {}
        self._changed = threading.Condition()

    def watch(self, address: str, channel: grpc.Channel) -> None:
        """Follows `channel`'s state (and keeps it connecting) from now on."""
        channel.subscribe(lambda state: self.update(address, state), try_to_connect=True)

    def update(self, address: str, state: grpc.ChannelConnectivity) -> None:
        """Records `address`'s new state (gRPC calls this on every change)."""
        with self._changed:
            self._states[address] = state
            self._changed.notify_all()

    def state(self, address: str) -> grpc.ChannelConnectivity | None:
        with self._changed:
            return self._states.get(address)

    def wait_ready(self, addresses: Sequence[str], timeout: float) -> bool:
        """Waits up to `timeout` seconds until one of `addresses` is READY; True if one is."""
        ready = grpc.ChannelConnectivity.READY
        with self._changed:
            return self._changed.wait_for(
                lambda: any(self._states.get(a) == ready for a in addresses), timeout)

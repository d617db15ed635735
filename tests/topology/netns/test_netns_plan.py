"""The network plan and the figures as pure functions: names, addresses, nftables rule sets,
tbf arguments, percentiles and phase summaries (no root needed)."""

from __future__ import annotations

import ipaddress
import math

import pytest

from topology.netns import plan
from topology.netns.figures import Record, first_served_by, percentile, summarize, table


def test_namespace_names_carry_the_owner_pid_and_only_ours_are_recognised() -> None:
    prefix = plan.network_prefix(4242, "a1b2c3")
    assert plan.namespace_name(prefix, "step-1") == "stepchain-4242-a1b2c3-step-1"
    assert plan.owner_pid("stepchain-4242-a1b2c3-step-1") == 4242
    for other in ("cni-1234", "stepchain", "stepchain-x-a1-step", "mine-4242-a1-step"):
        assert plan.owner_pid(other) is None


@pytest.mark.parametrize("bad", ["", "Step", "-a", "a-", "a_b", "x" * 33])
def test_host_names_outside_lowercase_dns_labels_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        plan.namespace_name("stepchain-1-ab", bad)


def test_host_addresses_come_from_the_benchmarking_range_and_end_with_the_subnet() -> None:
    assert str(plan.host_address(0)) == "198.18.0.10"
    assert plan.host_address(3) in ipaddress.IPv4Network("198.18.0.0/15")
    with pytest.raises(ValueError, match="no room"):
        plan.host_address(250)


def test_ruleset_flushes_then_drops_blackholed_ports_both_ways_and_samples_loss() -> None:
    faults = (plan.LinkFaults().blackhole("h2")
              .drop("198.18.0.10", "198.18.0.11", 10)
              .drop("198.18.0.11", "198.18.0.12"))
    text = plan.nft_ruleset(faults)
    assert text.startswith("flush ruleset\n")
    assert 'iifname "h2" drop' in text and 'oifname "h2" drop' in text
    assert "ip saddr 198.18.0.10 ip daddr 198.18.0.11 numgen random mod 1000 < 10 drop" in text
    assert "ip saddr 198.18.0.11 ip daddr 198.18.0.12 drop" in text


def test_healing_removes_only_what_touches_the_host() -> None:
    faults = plan.LinkFaults().blackhole("h1").blackhole("h2").drop("a", "b").drop("c", "d")
    healed = faults.unblackhole("h1").undrop([("a", "b")])
    assert healed.blackholed == {"h2"}
    assert [(d.source, d.destination) for d in healed.drops] == [("c", "d")]
    assert plan.nft_ruleset(plan.LinkFaults()).count("drop") == 0


def test_a_second_drop_between_the_same_pair_replaces_the_first() -> None:
    faults = plan.LinkFaults().drop("a", "b", 10).drop("a", "b", 20)
    assert [d.per_mille for d in faults.drops] == [20]


@pytest.mark.parametrize(("percent", "per_mille"), [(1, 10), (0.1, 1), (0.01, 1), (100, 1000)])
def test_loss_percent_becomes_per_mille(percent: float, per_mille: int) -> None:
    assert plan.loss_per_mille(percent) == per_mille


@pytest.mark.parametrize("percent", [0, -1, 101])
def test_loss_outside_0_to_100_percent_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="percent"):
        plan.loss_per_mille(percent)


@pytest.mark.parametrize(("text", "bits"), [("100mbit", 100_000_000), ("1gbit", 10**9),
                                            ("500kbit", 500_000), ("2000", 2000),
                                            ("1.5mbit", 1_500_000)])
def test_rates_parse_to_bits_per_second(text: str, bits: int) -> None:
    assert plan.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["fast", "10 MB/s", "0", "-1mbit"])
def test_unreadable_rates_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"100mbit|> 0"):
        plan.parse_rate(text)


def test_tbf_burst_holds_a_gso_segment_at_low_rates_and_10_ms_at_high_ones() -> None:
    low = plan.tbf_args(1_000_000)
    assert low[:3] == ["tbf", "rate", "1000000bit"] and int(low[4]) >= 64 * 1024
    assert int(plan.tbf_args(10 * 10**9)[4]) == 10 * 10**9 // 8 // 100


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_a_phase_counts_requests_that_started_in_it_by_code_and_serving_step() -> None:
    records = [Record(1.0, 10, "OK", steps=(0, 1)), Record(1.5, 30, "OK", steps=(0, 2)),
               Record(2.0, 2000, "UNAVAILABLE", "step 1: gone"),
               Record(3.5, 5, "OK", steps=(0, 1))]
    s = summarize("fault", records, 1.0, 3.0)
    assert (s.count, s.ok, s.errors, s.served_by) == (3, 2, {"UNAVAILABLE": 1}, {1: 1, 2: 1})
    assert s.max_ms == 2000 and s.ok_per_s == 1.0
    text = table([s], title="scenario")
    assert "UNAVAILABLE 1" in text and "1: 1, 2: 1" in text
    assert first_served_by(records, 1, after=2.0) == records[3]
    assert first_served_by(records, 2, after=1.5) == records[1]  # answered at 1.53
    assert first_served_by(records, 2, after=1.6) is None

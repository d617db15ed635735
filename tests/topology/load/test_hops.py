"""A pipeline's hops from its steps' own view: broken edges, cut-off steps, what they mean."""

from __future__ import annotations

from topology.load.hops import pipeline_hops
from topology.load.scrape import NextHop, merge_hops


def hop(step_id: int, reachable: bool, reason: str = "") -> NextHop:
    return NextHop(step_id, reachable, "READY" if reachable else "TRANSIENT_FAILURE", reason)


def test_every_hop_reachable_is_neither_degraded_nor_cut_off() -> None:
    hops = pipeline_hops({0: [hop(1, True), hop(2, True)], 1: [hop(3, True)], 3: []})
    assert not hops.degraded and hops.cut_off == () and hops.problems() == []


def test_a_step_that_lost_one_of_two_next_steps_is_degraded_and_fails_over() -> None:
    hops = pipeline_hops({0: [hop(1, True), hop(2, False, "channel TRANSIENT_FAILURE")]})
    assert hops.degraded and hops.cut_off == ()
    assert hops.problems() == ["step 0 cannot reach step 2: channel TRANSIENT_FAILURE; its "
                               "requests fail over to its other next steps"]


def test_a_step_that_reaches_none_of_its_next_steps_is_cut_off_and_named_first() -> None:
    hops = pipeline_hops({0: [hop(1, True), hop(2, False, "a")], 1: [hop(3, False, "b")]})
    assert hops.cut_off == (1,)
    assert hops.problems()[0] == ("step 1 can reach none of its next steps, so every request "
                                  "through it fails (step 3: b)")


def test_a_hop_one_replica_cannot_take_is_broken() -> None:
    merged = merge_hops([hop(3, True), hop(3, False, "refused"), hop(3, True)])
    assert merged == (hop(3, False, "refused"),)
    assert pipeline_hops({1: [hop(3, True), hop(3, False, "refused")]}).cut_off == (1,)

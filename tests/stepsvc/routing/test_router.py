"""Choosing the next step: route label, then preferred_next, then the rest in id order."""

from __future__ import annotations

from typing import Any

import pytest

from stepsvc.routing.router import choose_next_step, is_last_step, route_matches
from stepsvc.step.config import StepSpec

BLURRY = {"sharpness": "blurry", "exposure": "normal", "color": "color"}
SHARP = {"sharpness": "sharp", "exposure": "dark", "color": "color"}


def step(**fields: Any) -> StepSpec:
    return StepSpec(id=0, type="classify", **fields)


CASES = [
    # (name, step fields, active ids, labels, expected candidates)
    ("preferred_first_when_active",
     {"next_step": [1, 2, 3], "preferred_next": 3}, {1, 2, 3}, {}, [3, 1, 2]),
    ("falls_back_in_id_order_when_preferred_inactive",
     {"next_step": [3, 1, 2], "preferred_next": 3}, {1, 2}, {}, [1, 2]),
    ("id_order_without_preferred",
     {"next_step": [5, 2, 4]}, {2, 4, 5}, {}, [2, 4, 5]),
    ("route_label_wins_over_preferred",
     {"next_step": [1, 2], "preferred_next": 2, "route": {"blurry": 1}}, {1, 2}, BLURRY, [1, 2]),
    ("route_ignored_when_label_absent",
     {"next_step": [1, 2], "preferred_next": 2, "route": {"blurry": 1}}, {1, 2}, SHARP, [2, 1]),
    ("facet_equals_value_route_key",
     {"next_step": [1, 2], "preferred_next": 2, "route": {"sharpness=blurry": 1}}, {1, 2},
     BLURRY, [1, 2]),
    ("facet_key_needs_the_same_facet",
     {"next_step": [1, 2], "preferred_next": 2, "route": {"exposure=blurry": 1}}, {1, 2},
     BLURRY, [2, 1]),
    ("inactive_route_target_skipped",
     {"next_step": [1, 2, 3], "preferred_next": 2, "route": {"blurry": 1}}, {2, 3}, BLURRY,
     [2, 3]),
    ("several_matching_routes_in_config_order",
     {"next_step": [1, 2, 3], "route": {"dark": 3, "sharp": 2}}, {1, 2, 3}, SHARP, [3, 2, 1]),
    ("no_duplicates_when_route_and_preferred_agree",
     {"next_step": [1, 2], "preferred_next": 1, "route": {"blurry": 1}}, {1, 2}, BLURRY, [1, 2]),
    ("only_active_ids",
     {"next_step": [1, 2]}, {2, 7, 9}, {}, [2]),
    ("empty_when_no_successor_active",
     {"next_step": [1, 2], "preferred_next": 1}, set(), BLURRY, []),
    ("empty_for_last_step",
     {}, {1, 2}, BLURRY, []),
]


@pytest.mark.parametrize(("fields", "active", "labels", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_choose_next_step(fields: dict[str, Any], active: set[int], labels: dict[str, str],
                          expected: list[int]) -> None:
    assert choose_next_step(step(**fields), active, labels) == expected


def test_accepts_active_as_discovery_mapping() -> None:
    # Callers pass discovery.active() (a dict) straight in.
    active = {1: "127.0.0.1:50052", 2: "127.0.0.1:50053"}
    assert choose_next_step(step(next_step=[1, 2], preferred_next=2), active, {}) == [2, 1]


def test_is_last_step_only_without_successors() -> None:
    assert is_last_step(step())
    assert not is_last_step(step(next_step=3))


@pytest.mark.parametrize(("key", "matches"), [
    ("blurry", True), ("sharpness=blurry", True), (" sharpness = blurry ", True),
    ("sharp", False), ("exposure=blurry", False), ("sharpness=sharp", False),
])
def test_route_key_matches_label_value_or_facet_pair(key: str, matches: bool) -> None:
    assert route_matches(key, BLURRY) is matches

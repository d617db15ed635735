"""Choosing the next step: a pure function of the step's config, discovery and the labels.

Order of candidates (only steps discovery reports as active, each at most once):

1. route targets whose key matches one of the request's classify labels, in the order the
   ``route`` mapping lists them. A key matches a label value (``blurry``) or a ``facet=value``
   pair (``sharpness=blurry``);
2. ``preferred_next``;
3. the remaining ``next_step`` ids in ascending id order.

The caller tries them in order and fails over to the next one on ``UNAVAILABLE``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from stepsvc.step.config import StepSpec


def route_matches(key: str, labels: Mapping[str, str]) -> bool:
    """True if route key `key` ("label" or "facet=label") matches the request's labels."""
    facet, sep, value = key.partition("=")
    if sep:
        return labels.get(facet.strip()) == value.strip()
    return key.strip() in labels.values()


def choose_next_step(step: StepSpec, active: Collection[int],
                     labels: Mapping[str, str]) -> list[int]:
    """Ordered candidate step ids to forward to (see the module docstring for the order).

    An empty list with a non-empty ``step.next_step`` means no successor is active (the caller
    answers UNAVAILABLE); an empty ``next_step`` means this is the last step.
    """
    active_set = set(active)
    ordered: list[int] = [target for key, target in step.route.items()
                          if route_matches(key, labels)]
    if step.preferred_next is not None:
        ordered.append(step.preferred_next)
    ordered.extend(sorted(step.next_step))
    candidates: list[int] = []
    for step_id in ordered:
        # next_step bounds the choice even if a route/preferred id slipped past validation.
        if step_id in active_set and step_id in step.next_step and step_id not in candidates:
            candidates.append(step_id)
    return candidates


def is_last_step(step: StepSpec) -> bool:
    """True if the step has no successors: it answers the caller itself."""
    return not step.next_step

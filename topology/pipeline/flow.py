"""The order requests flow through a pipeline's routing graph (pure).

Breadth-first from the entry step, each step's successors in the order it tries them
(``preferred_next`` first, then ``next_step`` by id): how ``stepchain top`` lists steps and
how the console lays the graph out in columns. Steps no path reaches come last, by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RoutedStep(Protocol):
    """What the flow needs of a step (``stepsvc.step.config.StepSpec`` has it)."""

    @property
    def id(self) -> int: ...

    @property
    def next_step(self) -> Sequence[int]: ...

    @property
    def preferred_next(self) -> int | None: ...


def successors(step: RoutedStep) -> list[int]:
    """The steps `step` may forward to, in the order it tries them when no route matches."""
    preferred = step.preferred_next
    rest = sorted(n for n in step.next_step if n != preferred)
    return [preferred, *rest] if preferred is not None and preferred in step.next_step else rest


def layers(steps: Sequence[RoutedStep], entry: int | None) -> list[list[int]]:
    """Step ids by distance from `entry` (column 0 = the entry); unreachable steps form a
    last column. Without an entry, the step no other step forwards to (else the lowest id)."""
    by_id = {s.id: s for s in steps}
    if not by_id:
        return []
    if entry not in by_id:
        targets = {n for s in steps for n in s.next_step}
        entry = min((sid for sid in by_id if sid not in targets), default=min(by_id))
    seen = {entry}
    columns = [[entry]]
    while True:
        nxt = []
        for sid in columns[-1]:
            for n in successors(by_id[sid]):
                if n in by_id and n not in seen:
                    seen.add(n)
                    nxt.append(n)
        if not nxt:
            break
        columns.append(nxt)
    rest = sorted(set(by_id) - seen)
    if rest:
        columns.append(rest)
    return columns


def flow_order(steps: Sequence[RoutedStep], entry: int | None) -> list[int]:
    """Every step id, in the order a request meets them (see :func:`layers`)."""
    return [sid for column in layers(steps, entry) for sid in column]

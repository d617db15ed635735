"""The successor graph of a pipeline (step id -> the ids it may forward to), as pure checks.

Both the step's config loader (:mod:`stepsvc.step.config`) and the topology service
(:mod:`topology.pipeline.graph`) refuse a pipeline whose ``next_step`` links form a cycle: a request
would never reach a last step. Each words the error for its own input format.
"""

from __future__ import annotations


def find_cycle(graph: dict[int, list[int]]) -> list[int] | None:
    """A cycle in the successor graph as a list of ids (first id repeated at the end), or None.

    Nodes are visited in ascending id order, so the same graph always yields the same cycle.
    """
    state: dict[int, int] = {}  # 1 = on the current path, 2 = fully explored
    path: list[int] = []

    def visit(node: int) -> list[int] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def ends_pipeline_message(step_id: int, missing: list[int], known: list[int],
                          remaining: list[int]) -> str:
    """The warning for a ``next_step`` naming ids that are no step of the pipeline.

    The Flask-era format reads ``next_step`` as "the next step, if present": a link to no step
    ends the pipeline there (or leaves the step's other successors). Worded once for the
    topology service and the step's config loader.
    """
    ids = ", ".join(str(m) for m in missing)
    what = f"step id {ids} is" if len(missing) == 1 else f"step ids {ids} are"
    if remaining:
        effect = f"ignored; step {step_id} forwards to {remaining}"
    else:
        effect = f"step {step_id} ends the pipeline there"
    return f"{what} not a step of this pipeline (steps are {known}); {effect}"

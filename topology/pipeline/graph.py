"""A pipeline JSON flattened into a checked graph: what the renderer and the backends use.

A nested list inside ``steps`` is flattened into the linear chain, in order (as the Flask tool
did): ``[a, [b, c], d]`` runs a -> b -> c -> d. ``{"alternatives": [b, c]}`` is a group of which
one runs: the item before it points to every member, every member points to the item after it.
Ids are assigned in order when absent (one past the largest id so far), and a step without
``next_step`` links to the next item, so a sequential pipeline needs neither.

A ``next_step`` (or ``preferred_next``, ``route`` target) naming no step of the pipeline ends
the pipeline at that step, as "next step, if present" did in the Flask tool: the link is
dropped and a :class:`PipelineWarning` naming the field says so (``strict`` callers refuse it).
:func:`resolve_pipeline` is a pure function; it raises :class:`~topology.pipeline.model.PipelineInvalid`
naming each offending field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import ConfigDict, Field

from stepsvc.step.config import StepSpec as ConfigStep
from stepsvc.step.graph import ends_pipeline_message, find_cycle
from topology.pipeline.model import (
    MAX_STEP_ID,
    AlternativesSpec,
    Loc,
    PipelineInvalid,
    PipelineSpec,
    StepDeployment,
    StepSpec,
    format_loc,
)


class Step(StepDeployment, ConfigStep):
    """A step after flattening: id assigned, successors resolved, where it was written.

    Its routing is the step config's own schema (:class:`stepsvc.step.config.StepSpec`: id,
    type, params, next_step, preferred_next, route, checked the same way), so what each step
    process reads is this step's routing fields as they are; how it runs is the pipeline
    model's :class:`~topology.pipeline.model.StepDeployment`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    #: A tuple, like the rest of a checked pipeline, immutable (the step config's is a list).
    next_step: tuple[int, ...] = ()  # type: ignore[assignment]
    #: Field path of this step in the pipeline JSON, e.g. ("steps", 2, 1): where it was
    #: written, not part of the step (never serialized).
    loc: Loc = Field(default=(), exclude=True)


@dataclass(frozen=True)
class PipelineWarning:
    """Something accepted but worth saying: where (field path) and what it means."""

    loc: Loc
    msg: str

    def __str__(self) -> str:
        return f"{format_loc(self.loc)}: {self.msg}"


@dataclass(frozen=True)
class Pipeline:
    """A checked, flat pipeline: what the renderer and the backends work from."""

    pipeline_id: str
    namespace: str | None
    image: str | None
    steps: tuple[Step, ...]
    entry_step: int
    #: sha256 of the canonical resolved pipeline: equal iff two submissions deploy the same.
    fingerprint: str
    #: What was accepted but changed meaning (e.g. a next_step naming no step ends there).
    warnings: tuple[PipelineWarning, ...] = ()
    #: One pod with a container per step, frames through shared memory (topology.kube.colocated).
    colocate: bool = False
    #: The pipeline JSON as submitted, for GET to return as `spec` (None when not known).
    source: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def step(self, step_id: int) -> Step:
        """The step with `step_id` (KeyError if none)."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def parse_pipeline(data: Any, *, name: str | None = None, strict: bool = False) -> Pipeline:
    """Validates a pipeline JSON document (already decoded) and resolves it.

    `name` overrides the document's name (PUT /pipeline/{id}); `strict` refuses what would
    only be a warning. Raises PipelineInvalid.
    """
    try:
        spec = PipelineSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise PipelineInvalid.from_validation_error(exc) from None
    return resolve_pipeline(spec, name=name, strict=strict)


def refuse_warnings(pipeline: Pipeline) -> None:
    """PipelineInvalid (type ``strict``) listing the pipeline's warnings, if it has any."""
    if pipeline.warnings:
        raise PipelineInvalid([
            {"loc": list(w.loc), "msg": f"{w.msg} (refused: strict mode)", "type": "strict"}
            for w in pipeline.warnings])


def flatten_items(items: list[Any], loc: Loc) -> tuple[list[list[tuple[Loc, StepSpec]]],
                                                       list[tuple[Loc, str]]]:
    """`steps` as a chain of items, each the list of its members with their field paths.

    A step is an item of one member; a nested list contributes its own items in order (at any
    depth); alternatives are one item of several members. Also returns the problems found.
    """
    chain: list[list[tuple[Loc, StepSpec]]] = []
    problems: list[tuple[Loc, str]] = []
    for i, item in enumerate(items):
        where = (*loc, i)
        if isinstance(item, list):
            if not item:
                problems.append((where, "an empty nested list adds no step; remove it"))
            sub_chain, sub_problems = flatten_items(item, where)
            chain.extend(sub_chain)
            problems.extend(sub_problems)
        elif isinstance(item, AlternativesSpec):
            chain.append([((*where, "alternatives", j), s)
                          for j, s in enumerate(item.alternatives)])
        else:
            chain.append([(where, item)])
    return chain, problems


def resolve_pipeline(spec: PipelineSpec, *, name: str | None = None,
                     strict: bool = False) -> Pipeline:
    """Flattens nested lists, assigns ids, links implicit successors and checks the graph.

    Raises PipelineInvalid naming each offending field: duplicate ids, preferred_next/route
    targets that are not successors, cycles, not exactly one entry. A successor naming no step
    is dropped with a warning (`strict`: refused like an error).
    """
    errors: list[dict[str, Any]] = []
    warnings: list[PipelineWarning] = []

    def fail(loc: Loc, msg: str) -> None:
        errors.append({"loc": list(loc), "msg": msg, "type": "value_error"})

    def warn(loc: Loc, msg: str) -> None:
        warnings.append(PipelineWarning(loc, msg))

    # 1. Flatten: nested lists into the chain, alternatives as one item; keep each step's path.
    items, problems = flatten_items(list(spec.steps), ("steps",))
    for loc, msg in problems:
        fail(loc, msg)

    # 2. Ids: explicit ones kept, absent ones one past the largest id so far.
    ids: list[list[int]] = []
    where: dict[int, Loc] = {}
    next_auto = 0
    for members in items:
        member_ids = []
        for loc, s in members:
            sid = s.id if s.id is not None else next_auto
            if sid > MAX_STEP_ID:
                fail((*loc, "step_id"), f"assigned id {sid} is above {MAX_STEP_ID}")
            next_auto = max(next_auto, sid + 1)
            if sid in where:
                fail((*loc, "step_id"), f"duplicate step id {sid} (also {format_loc(where[sid])})")
            else:
                where[sid] = loc
            member_ids.append(sid)
        ids.append(member_ids)
    if errors:
        raise PipelineInvalid(errors)

    # 3. Successors: explicit next_step, else every member of the next item.
    routing: list[tuple[Loc, StepSpec, dict[str, Any]]] = []
    for n, members in enumerate(items):
        implicit = tuple(ids[n + 1]) if n + 1 < len(items) else ()
        for (loc, s), sid in zip(members, ids[n], strict=True):
            nxt = tuple(s.next_step) if s.next_step is not None else implicit
            nxt, preferred, route = _check_successors(loc, sid, s, nxt, where, fail, warn)
            routing.append((loc, s, {"id": sid, "next_step": nxt, "preferred_next": preferred,
                                     "route": route}))
    if errors:
        raise PipelineInvalid(errors)
    steps = [Step(type=s.type, params=s.params, **resolved, loc=loc,
                  **{name: getattr(s, name) for name in StepDeployment.model_fields})
             for loc, s, resolved in routing]

    # 4. The graph: no cycles, exactly one entry step.
    by_id = {s.id: s for s in steps}
    cycle = find_cycle({s.id: list(s.next_step) for s in steps})
    if cycle:
        closing = by_id[cycle[-2]]
        path = " -> ".join(str(c) for c in cycle)
        fail((*closing.loc, "next_step"), f"next_step forms a cycle {path}; a request would "
                                          "never reach a last step")
        raise PipelineInvalid(errors)
    pointed_to = {t for s in steps for t in s.next_step}
    entries = [s.id for s in steps if s.id not in pointed_to]
    if len(entries) != 1:
        fail(("steps",), f"a pipeline needs exactly one entry step (one no other step points "
                         f"to); steps {entries} are all entry steps")
        raise PipelineInvalid(errors)

    ordered = tuple(sorted(steps, key=lambda s: s.id))
    body = _canonical(spec, ordered, name)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    pipeline_id = name or spec.name or f"pipeline-{digest[:10]}"
    body["pipeline_id"] = pipeline_id
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    result = Pipeline(pipeline_id=pipeline_id, namespace=spec.namespace, image=spec.image,
                      steps=ordered, entry_step=entries[0], fingerprint=fingerprint,
                      warnings=tuple(warnings), colocate=spec.colocate)
    if strict:
        refuse_warnings(result)
    return result


def _check_successors(loc: Loc, sid: int, s: StepSpec, nxt: tuple[int, ...],
                      where: dict[int, Loc], fail: Any, warn: Any,
                      ) -> tuple[tuple[int, ...], int | None, dict[str, int]]:
    """The step's successors, preferred_next and route with links to no step dropped (each
    with a warning); other problems go to `fail`."""
    known = sorted(where)
    missing = [t for t in nxt if t not in where]
    if missing:
        warn((*loc, "next_step"), ends_pipeline_message(sid, missing, known,
                                                        [t for t in nxt if t in where]))
        nxt = tuple(t for t in nxt if t in where)
    dup = sorted({t for t in nxt if nxt.count(t) > 1})
    if dup:
        fail((*loc, "next_step"), f"lists step id(s) {dup} more than once")
    preferred = s.preferred_next
    if preferred is not None:
        if preferred not in where:
            warn((*loc, "preferred_next"),
                 f"step id {preferred} is not a step of this pipeline (steps are {known}); "
                 "ignored")
            preferred = None
        elif preferred not in nxt:
            fail((*loc, "preferred_next"),
                 f"{preferred} is not one of this step's next_step {list(nxt)}")
    route = dict(s.route)
    for label, target in s.route.items():
        if target not in where:
            warn((*loc, "route", label),
                 f"step id {target} is not a step of this pipeline (steps are {known}); ignored")
            del route[label]
        elif target not in nxt:
            fail((*loc, "route", label),
                 f"{target} is not one of this step's next_step {list(nxt)}")
    return nxt, preferred, route


def _canonical(spec: PipelineSpec, steps: tuple[Step, ...], name: str | None) -> dict[str, Any]:
    """What determines the deployment, as plain JSON (the fingerprint's input): every field of
    every checked step. Its keys are frozen (`node_selector` as it always was), so a pipeline
    keeps the fingerprint it was deployed with."""
    return {
        "namespace": spec.namespace,
        "image": spec.image,
        **({"colocate": True} if spec.colocate else {}),  # absent: fingerprints stay as they were
        "steps": [_canonical_step(s) for s in steps],
    }


def _canonical_step(step: Step) -> dict[str, Any]:
    out = step.model_dump()
    out["node_selector"] = out.pop("nodeSelector")
    out["next_step"] = list(step.next_step)
    return out

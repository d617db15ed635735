"""Is a trace whole yet? What a request's span tree still lacks, from the spans alone (pure).

Each step exports its spans on its own, in batches, so right after a request a trace source
(Jaeger, an OTLP JSON file) may hold part of it. A trace is complete when:

* every span's parent is there (else: a step's phases without their server span, a step's
  server span without the caller's client span);
* every step of the route is there: a step's server span that names the step it forwarded to
  (``stepchain.next_step``) has that step's server span in the trace;
* every client call that was answered (status not ERROR) has the server span it called — this
  also covers the caller's first call to the entry step.

``missing_parts`` lists what is missing in words; an empty list means complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

ATTR_STEP_ID = "stepchain.step_id"
ATTR_PIPELINE_ID = "stepchain.pipeline_id"
ATTR_NEXT_STEP = "stepchain.next_step"


class SpanLike(Protocol):
    """What the check reads of a span (``stepsvc.client.trace.show.SpanRecord`` has it)."""

    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    status: str

    @property
    def attributes(self) -> Any: ...


def _step_id(span: SpanLike) -> int | None:
    value = span.attributes.get(ATTR_STEP_ID)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _label(span: SpanLike) -> str:
    name = span.name.removeprefix("/").removeprefix("stepchain.v1.")
    return f"{name} [{span.service}]"


def missing_parts(spans: Sequence[SpanLike]) -> list[str]:
    """What the trace made of ``spans`` still lacks, one phrase per gap (empty: complete)."""
    if not spans:
        return ["every span (none arrived yet)"]
    ids = {span.span_id for span in spans}
    gaps: list[str] = []

    orphans: dict[str, list[SpanLike]] = {}
    for span in spans:
        if span.parent_id and span.parent_id not in ids:
            orphans.setdefault(span.parent_id, []).append(span)
    for parent, children in orphans.items():
        names = ", ".join(sorted({_label(child) for child in children}))
        gaps.append(f"the parent span {parent} of {names}")

    servers = [span for span in spans if span.kind == "SERVER"]
    gapped_route: set[int] = set()
    steps_present = {(span.attributes.get(ATTR_PIPELINE_ID), _step_id(span)) for span in servers}
    for span in servers:
        nxt = span.attributes.get(ATTR_NEXT_STEP)
        if nxt is None:
            continue
        pipeline = span.attributes.get(ATTR_PIPELINE_ID)
        try:
            wanted = (pipeline, int(nxt))
        except (TypeError, ValueError):
            continue
        if wanted not in steps_present:
            gaps.append(f"step {wanted[1]} (step {_step_id(span)} forwarded to it)")
            gapped_route.add(id(span))

    by_id = {span.span_id: span for span in spans}
    children_of: dict[str, list[SpanLike]] = {}
    for span in spans:
        if span.parent_id:
            children_of.setdefault(span.parent_id, []).append(span)
    for span in spans:
        if span.kind != "CLIENT" or span.status == "ERROR":
            continue
        if any(child.kind == "SERVER" for child in children_of.get(span.span_id, [])):
            continue
        caller = _enclosing_server(span, by_id)
        if caller is not None and id(caller) in gapped_route:
            continue  # already said: "step N (step M forwarded to it)"
        gaps.append(f"the server span answering {_label(span)}")
    return _dedupe(gaps)


def _enclosing_server(span: SpanLike, by_id: dict[str, SpanLike]) -> SpanLike | None:
    seen: set[str] = set()
    current = by_id.get(span.parent_id or "")
    while current is not None and current.span_id not in seen:
        if current.kind == "SERVER":
            return current
        seen.add(current.span_id)
        current = by_id.get(current.parent_id or "")
    return None


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [item for item in items if not (item in seen or seen.add(item))]  # type: ignore[func-returns-value]


def incomplete_line(gaps: Sequence[str], waited_s: float) -> str:
    """The line ``trace show`` prints under a trace that is not whole after waiting."""
    waited = f"after waiting {waited_s:g} s" if waited_s > 0 else "without waiting (--wait 0)"
    return (f"incomplete: missing {'; '.join(gaps)} — {waited}; spans may still be on their "
            "way (steps export in batches): run again, or pass a longer --wait")

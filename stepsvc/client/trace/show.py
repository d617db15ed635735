"""Per-step waterfall of one trace in the terminal, from an OTLP JSON file or Jaeger.

Sources:

- an OTLP JSON lines file (one ``ExportTraceServiceRequest`` per line), as written by
  ``STEPCHAIN_TRACE_FILE`` or the OpenTelemetry Collector's file exporter;
- Jaeger's query API, ``GET {url}/api/v3/traces/{trace_id}`` (OTLP JSON too).

Both are read into :class:`SpanRecord` lists; :func:`render_waterfall` (pure) draws one row per
span, indented by depth, with a bar placed by start and duration across the terminal width.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACE_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")

_OTLP_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
               5: "CONSUMER"}
_OTLP_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
#: ``rpc.grpc.status_code`` of a call its caller cancelled.
CANCELLED_CODE = 1


class TraceSourceError(Exception):
    """The trace could not be read: a message saying what, where, and what to try."""


class TraceNotThereYet(TraceSourceError):
    """The source answered but has no (such) trace yet: spans may still be on their way."""


@dataclass(frozen=True)
class SpanRecord:
    """One span, independent of where it was read from. Times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_ns: int
    end_ns: int
    kind: str = "INTERNAL"
    status: str = "UNSET"
    status_message: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


# --------------------------------------------------------------------------------------------
# OTLP JSON


def _otlp_id(value: str | None) -> str | None:
    """OTLP/JSON ids are hex; protobuf's generic JSON mapping gives base64. Accept both."""
    if not value:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}", value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value.lower()


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _otlp_attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _otlp_attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _otlp_value(item.get("value", {})) for item in items if "key" in item}


def _enum(value: Any, names: Mapping[int, str], prefix: str, default: str) -> str:
    if isinstance(value, int):
        return names.get(value, default)
    if isinstance(value, str) and value:
        return value.removeprefix(prefix)
    return default


def spans_from_otlp_json(doc: Mapping[str, Any]) -> list[SpanRecord]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest`` (or ``TracesData``) document."""
    records: list[SpanRecord] = []
    for resource_spans in doc.get("resourceSpans", []):
        resource = _otlp_attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                status = span.get("status", {})
                records.append(SpanRecord(
                    trace_id=_otlp_id(span.get("traceId")) or "",
                    span_id=_otlp_id(span.get("spanId")) or "",
                    parent_id=_otlp_id(span.get("parentSpanId")),
                    name=span.get("name", ""),
                    service=service,
                    start_ns=int(span.get("startTimeUnixNano", 0)),
                    end_ns=int(span.get("endTimeUnixNano", 0)),
                    kind=_enum(span.get("kind"), _OTLP_KINDS, "SPAN_KIND_", "INTERNAL"),
                    status=_enum(status.get("code"), _OTLP_STATUS, "STATUS_CODE_", "UNSET"),
                    status_message=status.get("message", ""),
                    attributes=_otlp_attributes(span.get("attributes", [])),
                ))
    return records


def read_otlp_json_lines(path: str | Path) -> list[SpanRecord]:
    """Every span in an OTLP JSON lines file. Raises TraceSourceError naming a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceNotThereYet(f"trace file {path} does not exist (yet: the steps create it "
                               "with their first export)") from None
    except OSError as exc:
        raise TraceSourceError(f"cannot read trace file {path}: {exc.strerror or exc}") from None
    records: list[SpanRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceSourceError(
                f"{path}:{number}: not JSON ({exc.msg}); expected one OTLP "
                "ExportTraceServiceRequest JSON object per line") from None
        if not isinstance(doc, dict) or "resourceSpans" not in doc:
            raise TraceSourceError(
                f"{path}:{number}: no 'resourceSpans'; expected one OTLP "
                "ExportTraceServiceRequest JSON object per line")
        records.extend(spans_from_otlp_json(doc))
    return records


def trace_ids_by_recency(spans: Iterable[SpanRecord]) -> list[str]:
    """Trace ids, the most recently started trace first."""
    first_start: dict[str, int] = {}
    for span in spans:
        first_start[span.trace_id] = min(first_start.get(span.trace_id, span.start_ns),
                                         span.start_ns)
    return sorted(first_start, key=lambda t: first_start[t], reverse=True)


def select_trace(spans: Sequence[SpanRecord], trace_id: str | None = None,
                 *, where: str = "the trace file") -> list[SpanRecord]:
    """The spans of `trace_id` (hex, any case), or of the latest trace when it is None."""
    if not spans:
        raise TraceNotThereYet(f"{where} has no spans yet (is tracing on and has a request "
                               "finished? spans are exported in batches, within ~5 s)")
    if trace_id is None:
        trace_id = trace_ids_by_recency(spans)[0]
    wanted = trace_id.lower()
    chosen = [s for s in spans if s.trace_id == wanted]
    if not chosen:
        raise TraceNotThereYet(
            f"trace {trace_id} is not in {where} ({len(trace_ids_by_recency(spans))} trace(s) "
            "there; `stepchain trace list FILE` shows them)")
    return chosen


# --------------------------------------------------------------------------------------------
# Jaeger


def fetch_jaeger_trace(base_url: str, trace_id: str, *, timeout_s: float = 10.0) -> list[SpanRecord]:
    """GET ``{base_url}/api/v3/traces/{trace_id}`` from Jaeger's query service (the UI port,
    16686): Jaeger's public API, answering the trace as OTLP JSON (Jaeger v2, and v1 >= 1.35)."""
    if not TRACE_ID_RE.match(trace_id):
        raise TraceSourceError(f"{trace_id!r} is not a trace id; expected 32 hex digits")
    url = f"{base_url.rstrip('/')}/api/v3/traces/{trace_id.lower()}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            doc = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise TraceNotThereYet(
                f"Jaeger at {base_url} has no trace {trace_id} (HTTP 404); spans reach it in "
                "batches, so retry in a few seconds, and check the steps' "
                "OTEL_EXPORTER_OTLP_ENDPOINT points at this Jaeger") from None
        raise TraceSourceError(f"Jaeger query {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TraceSourceError(
            f"cannot reach Jaeger query API at {url}: {reason}; pass the query/UI address, "
            "e.g. --jaeger http://localhost:16686") from None
    except json.JSONDecodeError as exc:
        raise TraceSourceError(f"Jaeger query {url} did not answer JSON: {exc.msg}") from None
    result = doc.get("result") if isinstance(doc, dict) else None
    spans = spans_from_otlp_json(result) if isinstance(result, dict) else []
    if not spans:
        raise TraceNotThereYet(f"Jaeger at {base_url} returned no spans for {trace_id}")
    return [s for s in spans if s.trace_id == trace_id.lower()]


# --------------------------------------------------------------------------------------------
# Rendering (pure)


def _tree_order(spans: Sequence[SpanRecord]) -> list[tuple[int, SpanRecord]]:
    """(depth, span) in depth-first order, siblings by start time.

    Orphans become roots, and so does any span no root reaches (a corrupt file whose parent
    links form a cycle), so every span is drawn exactly once.
    """
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_ns, -s.end_ns))
    ordered: list[tuple[int, SpanRecord]] = []
    seen: set[int] = set()
    for root in [*children.get(None, []), *sorted(spans, key=lambda s: s.start_ns)]:
        stack = [(0, root)]
        while stack:
            depth, span = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            ordered.append((depth, span))
            stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, [])))
    return ordered


def span_details(span: SpanRecord, parent_service: str | None) -> str:
    """The right-hand column: service when it changes, step attributes, error status."""
    attrs = span.attributes
    parts: list[str] = []
    # A step's default service name says what "step N" says already.
    step_service = f"{attrs.get('stepchain.pipeline_id')}-step-{attrs.get('stepchain.step_id')}"
    if span.service not in (parent_service, step_service):
        parts.append(span.service)
    if "stepchain.step_id" in attrs:
        parts.append(f"step {attrs['stepchain.step_id']} {attrs.get('stepchain.step_type', '')}"
                     .rstrip())
        if attrs.get("stepchain.threads"):
            parts.append(f"{attrs['stepchain.threads']} thr")
        if attrs.get("stepchain.pixels"):
            parts.append(f"{int(attrs['stepchain.pixels']) / 1e6:.2f} MP")
        if attrs.get("stepchain.megapixels_per_second"):
            parts.append(f"{float(attrs['stepchain.megapixels_per_second']):.1f} MP/s")
    if span.status == "ERROR":
        parts.append("ERROR")  # the message gets a line of its own below the row
    elif is_cancelled(span):
        parts.append("CANCELLED")  # by its caller: the header says so
    return " · ".join(parts)


def is_cancelled(span: SpanRecord) -> bool:
    """A server span whose caller cancelled the call: not an error of the step."""
    return (span.kind == "SERVER" and span.status != "ERROR"
            and str(span.attributes.get("rpc.grpc.status_code")) == str(CANCELLED_CODE))


def _display_name(span: SpanRecord) -> str:
    name = span.name.removeprefix("/").removeprefix("stepchain.v1.")
    if span.kind in ("SERVER", "CLIENT"):
        name += f" ({span.kind.lower()})"
    return name


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def render_waterfall(spans: Sequence[SpanRecord], width: int = 120, *,
                     ascii_only: bool = False) -> str:
    """The waterfall of one trace as text lines no wider than `width` (min 60).

    One row per span: name indented by depth, duration in ms, a bar placed by start/duration on
    the trace's time axis, then service / step attributes / ERROR. A failed span's status
    message follows on an ``error:`` line of its own, so it is never clipped away.
    """
    if not spans:
        return "(no spans)"
    width = max(60, width)
    fill, fail = ("#", "!") if ascii_only else ("█", "▓")
    rows = _tree_order(spans)
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    total_ns = max(1, t1 - t0)
    by_id = {s.span_id: s for s in spans}
    labels = [("  " * depth) + _display_name(span) for depth, span in rows]
    details = [span_details(span, by_id[span.parent_id].service
                            if span.parent_id in by_id else None) for _, span in rows]
    # The bar gets at least a third of the width; long details are clipped, not the bars.
    name_w = min(max(len(label) for label in labels), max(24, width * 2 // 5))
    ms_w = 10
    min_bar = max(20, width // 3)
    detail_w = min(max(len(d) for d in details), max(0, width - name_w - ms_w - min_bar - 3))
    bar_w = max(min_bar, width - name_w - ms_w - detail_w - 3)

    services = sorted({s.service for s in spans})
    errors = sum(1 for s in spans if s.status == "ERROR")
    cancelled = sum(1 for s in spans if is_cancelled(s))
    header = (f"trace {spans[0].trace_id} · {len(spans)} spans · {total_ns / 1e6:.2f} ms · "
              f"services: {', '.join(services)}" + (f" · {errors} error(s)" if errors else "")
              + (f" · cancelled by the caller at {cancelled} step(s)" if cancelled else ""))
    axis_right = f"{total_ns / 1e6:.2f} ms"
    axis = "0 ms".ljust(bar_w - len(axis_right)) + axis_right
    lines = [header, f"{'span'.ljust(name_w)} {'ms'.rjust(ms_w)} {axis}"]
    for (depth, span), label, detail in zip(rows, labels, details, strict=True):
        start = (span.start_ns - t0) * bar_w / total_ns
        end = (span.end_ns - t0) * bar_w / total_ns
        left = min(bar_w - 1, int(start))
        length = max(1, round(end) - left)
        length = min(length, bar_w - left)
        bar = (" " * left + (fail if span.status == "ERROR" else fill) * length).ljust(bar_w)
        row = (f"{_clip(label, name_w).ljust(name_w)} {span.duration_ms:>{ms_w}.3f} {bar}"
               + (f" {_clip(detail, detail_w)}" if detail_w and detail else ""))
        lines.append(row.rstrip())
        if span.status == "ERROR" and span.status_message:
            lines.append(_clip(f"{'  ' * (depth + 1)}error: {span.status_message}", width))
    return "\n".join(lines)


def render_trace_list(spans: Sequence[SpanRecord]) -> str:
    """One line per trace (latest first): id, start offset, duration, spans, root name."""
    lines = [f"{'trace id':32}  {'ms':>10}  {'spans':>5}  errors  root"]
    for trace_id in trace_ids_by_recency(spans):
        chosen = [s for s in spans if s.trace_id == trace_id]
        ordered = _tree_order(chosen)
        root = ordered[0][1]
        duration = (max(s.end_ns for s in chosen) - min(s.start_ns for s in chosen)) / 1e6
        errors = sum(1 for s in chosen if s.status == "ERROR")
        lines.append(f"{trace_id:32}  {duration:>10.3f}  {len(chosen):>5}  {errors:>6}  "
                     f"{_display_name(root)} [{root.service}]")
    return "\n".join(lines)

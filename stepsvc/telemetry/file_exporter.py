"""The OTLP-JSON lines file exporter: local mode's trace store (``STEPCHAIN_TRACE_FILE``).

Each exported batch is one line holding one ``ExportTraceServiceRequest`` in the OTLP/JSON
mapping, the format the collector's file exporter writes and ``stepchain trace show FILE`` reads.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()

def otlp_json_line(spans: Sequence[Any]) -> str:
    """Encodes SDK spans as one OTLP/JSON ``ExportTraceServiceRequest`` (no newline).

    Follows the OTLP/JSON mapping: camelCase fields, integer enums, and trace/span ids as hex
    (protobuf's JSON mapping would give base64), so the collector's file exporter and ours agree.
    """
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in doc.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = _b64_to_hex(span[key])
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if link.get(key):
                            link[key] = _b64_to_hex(link[key])
    return json.dumps(doc, separators=(",", ":"))

class OtlpJsonFileExporter(SpanExporter):
    """Appends each exported batch to `path` as one OTLP JSON line.

    Several step processes of a local pipeline share one file: each batch is a single
    ``write`` under an exclusive ``flock`` on an ``O_APPEND`` descriptor, so lines never
    interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        data = (otlp_json_line(spans) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)  # closing releases the flock
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

"""A pipeline JSON shown with each validation error next to the field it names (pure).

The API answers 422 with ``detail[].loc`` paths such as ``["body", "steps", 1, "type"]``.
:func:`annotate` pretty-prints the submitted document, remembers which line holds which path,
and puts each message beside the deepest line its path reaches. Text that is not JSON gets
the parser's message beside the line and column it names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Line:
    """One printed line and the path of the value it starts (None for closing brackets)."""

    text: str
    path: Path | None


def json_lines(value: Any) -> list[Line]:
    """`value` printed like ``json.dumps(indent=2)``, each line with its path."""
    lines: list[Line] = []

    def emit(v: Any, path: Path, indent: int, prefix: str, comma: str) -> None:
        pad = "  " * indent
        if isinstance(v, dict) and v:
            lines.append(Line(f"{pad}{prefix}{{", path))
            items = list(v.items())
            for i, (k, item) in enumerate(items):
                emit(item, (*path, k), indent + 1, f"{json.dumps(k)}: ",
                     "," if i < len(items) - 1 else "")
            lines.append(Line(f"{pad}}}{comma}", None))
        elif isinstance(v, list) and v:
            lines.append(Line(f"{pad}{prefix}[", path))
            for i, item in enumerate(v):
                emit(item, (*path, i), indent + 1, "", "," if i < len(v) - 1 else "")
            lines.append(Line(f"{pad}]{comma}", None))
        else:
            lines.append(Line(f"{pad}{prefix}{json.dumps(v)}{comma}", path))

    emit(value, (), 0, "", "")
    return lines


def _field_path(loc: Sequence[Any]) -> Path:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return tuple(p if isinstance(p, int) else str(p) for p in parts)


def annotate(text: str, errors: Sequence[dict[str, Any]]) -> str:
    """HTML: the document with every error beside its field (or the JSON syntax error)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return _syntax_error(text, exc)
    lines = json_lines(document)
    index = {line.path: i for i, line in enumerate(lines) if line.path is not None}
    beside: dict[int, list[str]] = {}
    unplaced: list[str] = []
    for error in errors:
        loc = error.get("loc") or ()
        path = _field_path(loc if isinstance(loc, (list, tuple)) else (loc,))
        msg = str(error.get("msg", error))
        where = ".".join(str(p) for p in path) or "pipeline"
        for cut in range(len(path), 0, -1):
            if path[:cut] in index:
                note = msg if cut == len(path) else f"{'.'.join(map(str, path[cut:]))}: {msg}"
                beside.setdefault(index[path[:cut]], []).append(note)
                break
        else:
            unplaced.append(f"{where}: {msg}")
    out = ["<div class='annotated'>"]
    if unplaced:
        out.append("<ul class='errors'>" + "".join(f"<li>{escape(u)}</li>" for u in unplaced)
                   + "</ul>")
    placed = [(i, note) for i, notes in sorted(beside.items()) for note in notes]
    if placed:
        out.append("<ul class='errors placed'>" + "".join(
            f"<li>line {i + 1}: {escape(note)}</li>" for i, note in placed) + "</ul>")
    out.append("<pre class='json'>")
    for i, line in enumerate(lines):
        notes = beside.get(i)
        cls = " error" if notes else ""
        out.append(f"<span class='line{cls}'><span class='code'>{escape(line.text)}</span>")
        for note in notes or ():
            out.append(f"<span class='field-error'>&#9664; {escape(note)}</span>")
        out.append("</span>")
    out.append("</pre></div>")
    return "".join(out)


def _syntax_error(text: str, exc: json.JSONDecodeError) -> str:
    out = [f"<div class='annotated'><ul class='errors'><li>not JSON: {escape(exc.msg)} at line "
           f"{exc.lineno}, column {exc.colno}</li></ul><pre class='json'>"]
    for number, line in enumerate(text.splitlines() or [""], start=1):
        if number == exc.lineno:
            out.append(f"<span class='line error'><span class='code'>{escape(line)}</span>"
                       f"<span class='field-error'>&#9664; {escape(exc.msg)} (column "
                       f"{exc.colno})</span></span>")
        else:
            out.append(f"<span class='line'><span class='code'>{escape(line)}</span></span>")
    out.append("</pre></div>")
    return "".join(out)

"""The console's pictures, drawn on the server as inline SVG (pure; no chart library, no CDN).

- :func:`pipeline_graph`: steps as boxes (type, params, readiness, replicas, address), edges
  labelled ``preferred_next`` / ``route: <label>``, the entry step marked;
- :func:`waterfall`: one request's per-step phases (queue, decode, kernel, forward, encode);
- :func:`step_time_chart`: time per step for each thread count (grouped bars);
- :func:`speedup_chart`: measured speed-up against 1 thread, the Amdahl fit and the ideal.

Every text that came from a user (types, params, labels) is XML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from topology.load.amdahl import speedup
from topology.pipeline.flow import layers

PHASE_COLOURS = {"queue": "#9e9e9e", "decode": "#42a5f5", "kernel": "#fb8c00",
                 "forward": "#ce93d8", "encode": "#66bb6a"}
SERIES_COLOURS = ("#1e88e5", "#fb8c00", "#43a047", "#e53935", "#8e24aa", "#00897b",
                  "#6d4c41", "#546e7a")
FONT = "font-family='system-ui, sans-serif'"


def _t(value: Any) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class GraphStep:
    """What a box shows about one step."""

    id: int
    type: str
    params: Mapping[str, Any]
    next_step: list[int]
    preferred_next: int | None
    route: Mapping[str, int]
    ready: bool | None = None
    replicas: str = ""
    address: str = ""
    #: Next steps this step cannot reach now -> why (its edge is drawn red with the reason).
    broken: Mapping[int, str] = field(default_factory=dict)


BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 210, 92, 90, 26, 24
#: The colour of a hop a request cannot take.
BROKEN = "#e53935"


def pipeline_graph(steps: Sequence[GraphStep], entry: int | None, *,
                   title: str = "") -> str:
    """The routing graph as an SVG: columns by distance from the entry step."""
    if not steps:
        return "<p class='muted'>no steps</p>"
    columns = layers(steps, entry)
    entry_id = columns[0][0]
    pos: dict[int, tuple[float, float]] = {}
    tallest = max(len(c) for c in columns)
    height = MARGIN * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y + 16
    for ci, column in enumerate(columns):
        offset = (tallest - len(column)) * (BOX_H + GAP_Y) / 2
        for ri, sid in enumerate(column):
            pos[sid] = (MARGIN + 40 + ci * (BOX_W + GAP_X),
                        MARGIN + 16 + offset + ri * (BOX_H + GAP_Y))
    width = MARGIN * 2 + 40 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    out = [f"<svg class='graph' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' viewBox='0 0 {width} {height}' role='img' "
           f"aria-label='pipeline graph {_t(title)}' {FONT} font-size='12'>",
           "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
           "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
           "fill='#555'/></marker>"
           + ("<marker id='arrow-broken' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
              "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
              f"fill='{BROKEN}'/></marker>" if any(s.broken for s in steps) else "")
           + "</defs>"]
    # client -> entry
    ex, ey = pos[entry_id]
    out.append(f"<text x='{MARGIN - 8}' y='{ey + BOX_H / 2 - 10}' fill='#555'>client</text>")
    out.append(f"<line x1='{MARGIN}' y1='{ey + BOX_H / 2}' x2='{ex - 2}' y2='{ey + BOX_H / 2}' "
               "stroke='#555' stroke-width='1.5' marker-end='url(#arrow)'/>")
    for step in steps:
        labels: dict[int, list[str]] = {}
        for label, target in sorted(step.route.items()):
            labels.setdefault(target, []).append(f"route: {label}")
        if step.preferred_next is not None:
            labels.setdefault(step.preferred_next, []).insert(0, "preferred_next")
        for target in step.next_step:
            if target not in pos or step.id not in pos:
                continue
            out.append(_edge(pos[step.id], pos[target], labels.get(target, []),
                             preferred=target == step.preferred_next,
                             broken=step.broken.get(target)))
    for step in steps:
        x, y = pos[step.id]
        out.append(_box(step, x, y, is_entry=step.id == entry_id))
    out.append("</svg>")
    return "".join(out)


def _edge(src: tuple[float, float], dst: tuple[float, float], labels: list[str], *,
          preferred: bool, broken: str | None = None) -> str:
    x1, y1 = src[0] + BOX_W, src[1] + BOX_H / 2
    x2, y2 = dst[0], dst[1] + BOX_H / 2
    if x2 <= x1:  # backwards or same column: loop below the boxes
        low = max(src[1], dst[1]) + BOX_H + GAP_Y / 2
        path = (f"M{x1},{y1} C{x1 + 40},{low} {x2 - 40},{low} {x2},{y2}")
        lx, ly = (x1 + x2) / 2, low
    else:
        mid = (x1 + x2) / 2
        path = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 2},{y2}"
        lx, ly = mid, (y1 + y2) / 2 - 6
    stroke = "#1e88e5" if preferred else "#555"
    dash = "" if preferred or not labels else " stroke-dasharray='5 3'"
    if broken is not None:  # a request cannot take this hop now: red, with the step's reason
        stroke, dash = BROKEN, " stroke-dasharray='6 3'"
        labels = [*labels, "unreachable"]  # the reason: the edge's tooltip, the problems list
    title = f"<title>unreachable: {_t(broken)}</title>" if broken is not None else ""
    parts = [f"<path d='{path}' class='edge{' broken' if broken is not None else ''}' "
             f"fill='none' stroke='{stroke}' stroke-width='{2.4 if broken else 1.6}'{dash} "
             f"marker-end='url(#{'arrow-broken' if broken is not None else 'arrow'})'>"
             f"{title}</path>"]
    for i, label in enumerate(labels):
        parts.append(f"<text class='edge-label' x='{lx}' y='{ly - 12 * (len(labels) - 1 - i)}' "
                     f"text-anchor='middle' fill='{stroke}' font-size='11' paint-order='stroke' "
                     f"stroke='#fff' stroke-width='3'>{_t(label)}</text>")
    return "".join(parts)


def _box(step: GraphStep, x: float, y: float, *, is_entry: bool) -> str:
    fill = "#e3f2fd" if is_entry else "#fafafa"
    border = "#1565c0" if is_entry else "#777"
    ready = ("" if step.ready is None else
             f"<circle cx='{x + BOX_W - 14}' cy='{y + 14}' r='6' "
             f"fill='{'#43a047' if step.ready else '#e53935'}'>"
             f"<title>{'ready' if step.ready else 'not ready'}</title></circle>")
    params = ", ".join(f"{k}={v}" for k, v in sorted(step.params.items())) or "no params"
    if len(params) > 34:
        params = params[:33] + "…"
    lines = [
        f"<g class='step' data-step='{step.id}'>",
        f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='8' fill='{fill}' "
        f"stroke='{border}' stroke-width='{2.5 if is_entry else 1.2}'/>",
        f"<text x='{x + 10}' y='{y + 19}' font-weight='bold' font-size='13'>"
        f"#{step.id} {_t(step.type)}</text>",
        f"<text x='{x + 10}' y='{y + 38}' fill='#333'>{_t(params)}</text>",
        f"<text x='{x + 10}' y='{y + 56}' fill='#555'>replicas {_t(step.replicas or '-')}"
        f"</text>",
        f"<text x='{x + 10}' y='{y + 74}' fill='#555' font-family='monospace' font-size='11'>"
        f"{_t(step.address or '')}</text>",
        ready,
    ]
    if is_entry:
        lines.append(f"<text x='{x + BOX_W - 28}' y='{y + BOX_H - 8}' text-anchor='end' "
                     f"font-size='10' font-weight='bold' fill='#1565c0'>ENTRY</text>")
    lines.append("</g>")
    return "".join(lines)


@dataclass(frozen=True)
class Phases:
    """One step's phases of one request, in milliseconds."""

    step_id: int
    step_type: str
    queue: float
    decode: float
    kernel: float
    forward: float
    encode: float
    total: float


def waterfall(steps: Sequence[Phases], round_trip_ms: float | None = None) -> str:
    """Per-step rows of phases on one time axis; a step starts inside its caller's forward."""
    if not steps:
        return "<p class='muted'>no timings</p>"
    offsets = []
    at = 0.0
    for i, s in enumerate(steps):
        offsets.append(at)
        if i + 1 < len(steps):
            network = max(0.0, s.forward - steps[i + 1].total) / 2
            at += s.queue + s.decode + s.kernel + network
    end = max(max(o + s.total for o, s in zip(offsets, steps, strict=True)),
              round_trip_ms or 0.0, 1e-3)
    label_w, width, row_h = 150, 760, 26
    plot_w = width - label_w - 20
    height = 40 + row_h * len(steps) + 46
    scale = plot_w / end
    out = [f"<svg class='waterfall' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' viewBox='0 0 {width} {height}' {FONT} font-size='12' "
           "role='img' aria-label='per-step waterfall'>"]
    out.extend(_axis(label_w, 24, plot_w, end, 24 + row_h * len(steps)))
    for i, (offset, s) in enumerate(zip(offsets, steps, strict=True)):
        y = 30 + i * row_h
        out.append(f"<text x='4' y='{y + 13}'>#{s.step_id} {_t(s.step_type)}</text>")
        x = label_w + offset * scale
        # queue, decode, kernel, then forward (the next steps run inside it), encode last
        for phase in ("queue", "decode", "kernel", "forward", "encode"):
            ms = float(getattr(s, phase))
            if ms <= 0:
                continue
            w = max(ms * scale, 1.0)
            opacity = "0.45" if phase == "forward" else "1"
            out.append(f"<rect class='phase {phase}' x='{x:.1f}' y='{y}' width='{w:.1f}' "
                       f"height='{row_h - 8}' fill='{PHASE_COLOURS[phase]}' "
                       f"fill-opacity='{opacity}'><title>step {s.step_id} {phase}: "
                       f"{ms:.2f} ms</title></rect>")
            x += w
        out.append(f"<text x='{min(x + 4, width - 60):.1f}' y='{y + 13}' fill='#333' "
                   f"font-size='11'>{s.total:.1f} ms</text>")
    ly = 40 + row_h * len(steps) + 16
    lx = label_w
    for phase, colour in PHASE_COLOURS.items():
        out.append(f"<rect x='{lx}' y='{ly - 10}' width='12' height='12' fill='{colour}'/>"
                   f"<text x='{lx + 16}' y='{ly}'>{phase}</text>")
        lx += 90
    if round_trip_ms is not None:
        out.append(f"<text x='{lx + 10}' y='{ly}' fill='#333'>round trip "
                   f"{round_trip_ms:.1f} ms</text>")
    out.append("</svg>")
    return "".join(out)


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _axis(x0: float, y0: float, w: float, end: float, bottom: float) -> list[str]:
    step = _nice_step(end)
    out = [f"<line x1='{x0}' y1='{y0}' x2='{x0 + w}' y2='{y0}' stroke='#bbb'/>"]
    t = 0.0
    while t <= end + 1e-9:
        x = x0 + t / end * w
        out.append(f"<line x1='{x:.1f}' y1='{y0 - 3}' x2='{x:.1f}' y2='{bottom}' "
                   "stroke='#eee'/>")
        out.append(f"<text x='{x:.1f}' y='{y0 - 6}' text-anchor='middle' fill='#777' "
                   f"font-size='10'>{t:g} ms</text>")
        t += step
    return out


def step_time_chart(series: Mapping[int, Mapping[str, float]], steps: Sequence[str]) -> str:
    """Grouped bars: for each step (x), one bar per thread count (ms, median of the runs)."""
    if not series or not steps:
        return ""
    threads = sorted(series)
    top = max((v for values in series.values() for v in values.values()), default=0.0) or 1.0
    width, height, left, bottom = 760, 300, 60, 60
    plot_w, plot_h = width - left - 20, height - bottom - 30
    group_w = plot_w / len(steps)
    bar_w = max(4.0, (group_w - 16) / len(threads))
    out = [f"<svg class='chart step-times' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' viewBox='0 0 {width} {height}' {FONT} font-size='11' role='img' "
           "aria-label='time per step per thread count'>",
           f"<text x='{left}' y='16' font-weight='bold' font-size='12'>time per step "
           "(decode + kernel + encode, median ms) by thread count</text>"]
    step = _nice_step(top, 5)
    v = 0.0
    while v <= top * 1.05 + 1e-9:
        y = 30 + plot_h - v / top * plot_h * 0.95
        out.append(f"<line x1='{left}' y1='{y:.1f}' x2='{left + plot_w}' y2='{y:.1f}' "
                   f"stroke='#eee'/><text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' "
                   f"fill='#777'>{v:g}</text>")
        v += step
    for gi, name in enumerate(steps):
        gx = left + gi * group_w + 8
        for ti, t in enumerate(threads):
            value = series[t].get(name, 0.0)
            h = value / top * plot_h * 0.95
            x = gx + ti * bar_w
            colour = SERIES_COLOURS[ti % len(SERIES_COLOURS)]
            out.append(f"<rect x='{x:.1f}' y='{30 + plot_h - h:.1f}' width='{bar_w - 2:.1f}' "
                       f"height='{h:.1f}' fill='{colour}'><title>{_t(name)}, {t} thread(s): "
                       f"{value:.2f} ms</title></rect>")
        out.append(f"<text x='{gx + group_w / 2 - 8:.1f}' y='{30 + plot_h + 16}' "
                   f"text-anchor='middle'>{_t(name)}</text>")
    lx = left
    for ti, t in enumerate(threads):
        colour = SERIES_COLOURS[ti % len(SERIES_COLOURS)]
        out.append(f"<rect x='{lx}' y='{height - 22}' width='12' height='12' fill='{colour}'/>"
                   f"<text x='{lx + 16}' y='{height - 12}'>{t} thread{'s' if t > 1 else ''}"
                   "</text>")
        lx += 95
    out.append("</svg>")
    return "".join(out)


def speedup_chart(points: Sequence[tuple[int, float]], parallel_fraction: float | None) -> str:
    """Measured speed-up against 1 thread (dots), the Amdahl fit (line) and the ideal
    (dashed)."""
    if not points:
        return ""
    max_n = max(n for n, _ in points)
    top = max(max_n, max(s for _, s in points)) * 1.1
    width, height, left, bottom = 460, 300, 50, 50
    plot_w, plot_h = width - left - 20, height - bottom - 30

    def xy(n: float, s: float) -> tuple[float, float]:
        return (left + (n - 1) / max(max_n - 1, 1) * plot_w, 30 + plot_h - s / top * plot_h)

    out = [f"<svg class='chart speedup' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' viewBox='0 0 {width} {height}' {FONT} font-size='11' role='img' "
           "aria-label='speed-up against one thread'>",
           f"<text x='{left}' y='16' font-weight='bold' font-size='12'>speed-up vs 1 thread "
           "(kernels)</text>"]
    for n in sorted({n for n, _ in points} | {1}):
        x, _ = xy(n, 0)
        out.append(f"<line x1='{x:.1f}' y1='30' x2='{x:.1f}' y2='{30 + plot_h}' stroke='#eee'/>"
                   f"<text x='{x:.1f}' y='{30 + plot_h + 14}' text-anchor='middle' "
                   f"fill='#777'>{n}</text>")
    s_step = _nice_step(top, 5)
    s = 0.0
    while s <= top + 1e-9:
        _, y = xy(1, s)
        out.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='#777'>"
                   f"{s:g}x</text>")
        s += s_step
    x1, y1 = xy(1, 1)
    x2, y2 = xy(max_n, max_n)
    out.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='#aaa' "
               "stroke-dasharray='5 4'><title>ideal</title></line>")
    if parallel_fraction is not None:
        path = []
        for i in range(41):
            threads = 1 + (max_n - 1) * i / 40
            px, py = xy(threads, speedup(parallel_fraction, threads))
            path.append(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}")
        out.append(f"<path class='amdahl' d='{' '.join(path)}' fill='none' stroke='#e53935' "
                   "stroke-width='2'/>")
    for n, sp in points:
        px, py = xy(n, sp)
        out.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='4.5' fill='#1e88e5'><title>"
                   f"{n} threads: {sp:.2f}x</title></circle>")
    fit = ("Amdahl fit: parallel fraction p = "
           f"{parallel_fraction:.2f} (serial {1 - parallel_fraction:.0%})"
           if parallel_fraction is not None else "Amdahl fit: needs more than one thread count")
    out.append(f"<text x='{left}' y='{height - 16}' fill='#e53935'>{_t(fit)}</text>")
    out.append(f"<text x='{left}' y='{height - 2}' fill='#777'>threads (x); dots measured, "
               "dashed ideal</text>")
    out.append("</svg>")
    return "".join(out)

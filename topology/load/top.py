"""``stepchain top``: a live terminal dashboard of every step, with scaling advice.

Two sources, one picture:

- ``--topology URL`` reads ``GET /pipeline/{id}/advice`` from the topology service for each
  pipeline (or the ones named with ``--pipeline``): the numbers the web console shows;
- ``--target HOST:PORT`` (repeatable) scrapes step ``/metrics`` endpoints directly, e.g.
  through ``kubectl port-forward``, and computes the same report here.

Each frame lists the steps in flow order: replicas, busy slots / in flight / limit,
utilisation, queue depth, requests/s, p95, refusals/s, error %, CPU and RSS, then the advice
per step. ``--once`` prints one frame and exits (for scripts); otherwise the screen refreshes
every ``--interval`` seconds until Ctrl-C. Advice only: ``top`` never changes anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from stepsvc import cli_args

DEFAULT_TOPOLOGY = "http://127.0.0.1:8080"
ACTION_STYLE = {"scale up": "bold red", "scale down": "yellow", "maintain": "green",
                "host is the limit": "bold magenta"}
ACTION_SHORT = {"scale up": "UP", "scale down": "down", "maintain": "keep",
                "host is the limit": "HOST"}
#: A step's name in the compact table (`<id> <type>`), longer ones are cut with `~`.
STEP_NAME_CHARS = 16
#: Frame width when stdout is not a terminal (--once into a file or a pipe).
PIPE_WIDTH = 160


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `stepchain top`."""
    top = sub.add_parser(
        "top", help="live terminal dashboard of every step, with scaling advice",
        description="Per step, in flow order: replicas, busy/in-flight vs limit, utilisation, "
                    "queue, requests/s, p95, refusals/s, error %%, CPU, RSS, and scaling advice "
                    "(Little's law). Reads the topology service, or step /metrics endpoints "
                    "directly with --target. Advice only: nothing is changed.")
    source = top.add_mutually_exclusive_group()
    source.add_argument("--topology", metavar="URL",
                        help=f"topology service (default {DEFAULT_TOPOLOGY})")
    source.add_argument("--target", metavar="HOST:PORT", action="append",
                        help="a step's Prometheus /metrics endpoint; repeat for every step "
                             "(and replica)")
    top.add_argument("--pipeline", action="append", metavar="ID",
                     help="only this pipeline (repeatable; default: all)")
    top.add_argument("--interval", type=cli_args.positive_seconds, default=2.0,
                     help="seconds between refreshes, > 0 (default 2)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--target-utilisation", type=_fraction, default=None,
                     help="utilisation per replica the advice sizes for, 0..1 (default 0.7)")
    top.add_argument("--namespace", default="default",
                     help="namespace in the kubectl commands with --target (default default)")
    top.set_defaults(func=top_command)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


Source = Callable[[], list[dict[str, Any]]]


def topology_source(url: str, pipelines: list[str] | None,
                    target: float | None) -> tuple[Source, Callable[[], None]]:
    """Reports from the topology service's advice API."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=15.0)
    params = {"target": target} if target is not None else {}

    def read() -> list[dict[str, Any]]:
        ids = pipelines
        if not ids:
            listing = client.get("/pipelines")
            listing.raise_for_status()
            ids = [p["pipeline_id"] for p in listing.json()["pipelines"]]
        reports = []
        for pipeline_id in ids:
            reply = client.get(f"/pipeline/{pipeline_id}/advice", params=params)
            if reply.status_code == 404:
                reports.append({"pipeline_id": pipeline_id, "steps": [], "totals": {},
                                 "errors": {"*": f"no pipeline {pipeline_id!r}"}})
                continue
            reply.raise_for_status()
            reports.append(reply.json())
        return reports

    return read, client.close


def target_source(targets: list[str], namespace: str,
                  target: float | None) -> tuple[Source, Callable[[], None]]:
    """Reports computed here from step /metrics endpoints, one per pipeline found."""
    from topology.load.advice import DEFAULT_TARGET_UTILISATION
    from topology.load.live import LiveMetrics

    live = LiveMetrics()
    goal = target if target is not None else DEFAULT_TARGET_UTILISATION

    def read() -> list[dict[str, Any]]:
        report = live.report(targets, namespace=namespace, target=goal)
        by_pipeline: dict[str, list[dict[str, Any]]] = {}
        body = report.to_json()
        for step in body["steps"]:
            by_pipeline.setdefault(step["pipeline_id"], []).append(step)
        if not by_pipeline:
            return [{"pipeline_id": "-", "steps": [], "totals": body["totals"],
                     "errors": body["errors"] or {"*": "no stepchain step metrics found at "
                                                       + ", ".join(targets)}}]
        out = []
        for pipeline_id, steps in by_pipeline.items():
            totals = _totals(steps)
            out.append({**body, "pipeline_id": pipeline_id, "namespace": namespace,
                        "steps": steps, "totals": totals})
        return out

    return read, live.close


def _totals(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"steps": len(steps), "replicas": sum(s["replicas"] for s in steps),
            "requests_per_s": steps[0]["requests_per_s"] if steps else 0.0,
            "refusals_per_s": sum(s["refusals_per_s"] for s in steps),
            "in_flight": sum(s["in_flight"] for s in steps),
            "queued": sum(s["queued"] or 0 for s in steps),
            "cpu_pct": sum(s["cpu_pct"] or 0 for s in steps),
            "rss_bytes": sum(s["rss_bytes"] or 0 for s in steps),
            "window_s": max((s["window_s"] for s in steps), default=0.0)}


#: Below this many columns the frame is laid out for a terminal's default 80: fewer columns,
#: short headers; the advice is always stacked under the table, wrapped, never cut.
WIDE_COLUMNS = 120


def render(reports: list[dict[str, Any]], source: str, now: float | None = None, *,
           width: int = PIPE_WIDTH, notice: str | None = None) -> Any:
    """One frame: per pipeline a header with totals, its broken hops, the step table and the
    advice. Laid out for `width` columns (a narrow terminal gets the compact table);
    `notice` is a line shown under the title (``reconnecting ...``)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    compact = width < WIDE_COLUMNS
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    parts: list[Any] = [Text.assemble(("stepchain top", "bold"), f"  {source}  {stamp}")]
    if notice:
        parts.append(Text(notice, style="bold yellow"))
    for report in reports:
        totals = report.get("totals") or {}
        target = report.get("target_utilisation")
        rates = (f"in {_num(totals.get('requests_per_s'))} req/s"
                 f"  refused {_num(totals.get('refusals_per_s'))}/s"
                 f"  cancelled {_num(totals.get('cancelled_per_s'))}/s"
                 f"  CPU {_pct(totals.get('cpu_pct'))}")
        window = (f"window {_num(totals.get('window_s'))} s"
                  + (f"  target {target:.0%}" if isinstance(target, float) else ""))
        head = Text(f"pipeline {report.get('pipeline_id')}", style="bold cyan")
        if report.get("cut_off_steps"):
            head.append("  NOT READY", style="bold red")
        elif report.get("degraded"):
            head.append("  DEGRADED", style="bold yellow")
        if compact:  # two short lines rather than one wrapped mid-phrase at 80 columns
            head.append(f"  {window}")
            parts += [head, Text(f"  {rates}")]
        else:
            head.append(f"  {rates}  steps {totals.get('steps', 0)}"
                        f"  replicas {totals.get('replicas', 0)}"
                        f"  in flight {_int(totals.get('in_flight'))}"
                        f"  queued {_int(totals.get('queued'))}"
                        f"  RSS {_mib(totals.get('rss_bytes'))}  {window}")
            parts.append(head)
        for problem in report.get("problems") or []:  # a broken hop, before any number
            parts.append(_hanging("  ! ", Text(problem, style="red")))
        parts.append(_step_table(report, compact, Table, Text))
        for step in report.get("steps", []):
            advice = step.get("advice") or {}
            if not advice:
                continue
            label = Text(f"  step {step['step_id']} ", style="bold")
            line = Text()
            if advice.get("bottleneck"):
                line.append("bottleneck ", style="bold magenta")
            line.append(f"{advice['action']}", style=ACTION_STYLE.get(advice["action"], ""))
            line.append(f" {advice.get('replicas', '?')}->{advice.get('advised_replicas', '?')}")
            if compact and advice["action"] == "maintain" and not advice.get("bottleneck"):
                # nothing to do: one line, the utilisation; the arithmetic is for actions
                line.append(f" at {step['utilisation'] * 100:.0f}% utilisation")
            elif (compact and advice["action"] == "host is the limit"
                  and not advice.get("bottleneck") and step.get("host_busy_pct") is not None):
                # the bottleneck's lines say why; on 24 rows the others take one line each
                line.append(f": its host's {step.get('host_cpu_cores') or 0:g} cores are "
                            f"{step['host_busy_pct']:.0f}% busy")
            else:
                line.append(f": {advice['reason']}; confidence {advice['confidence']} "
                            f"({advice['confidence_score']:.2f})")
            parts.append(_hanging(label, line))
            if advice.get("kubectl"):
                parts.append(Text(f"      $ {advice['kubectl']}", style="dim"))
                parts.append(Text(f"      or HPA: {advice['hpa']['patch']}", style="dim"))
        for where, error in (report.get("errors") or {}).items():
            parts.append(Text(f"  ! {where}: {error}", style="red"))
        traces = report.get("recent_traces") or []
        if traces and not compact:
            parts.append(Text("  recent traces: " + " ".join(t["trace_id"] for t in traces[:4]),
                              style="dim"))
        parts.append(Text(""))
    if not reports:
        parts.append(Text("no pipelines", style="yellow"))
    return Group(*parts)


def _hanging(prefix: Any, text: Any) -> Any:
    """`text` after `prefix`, its wrapped lines indented under its first word, so a long
    reason at 80 columns reads as one paragraph."""
    from rich.table import Table

    grid = Table.grid()
    grid.add_column(width=len(str(prefix)), no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_row(prefix, text)
    return grid


def _step_table(report: dict[str, Any], compact: bool, table_class: Any, text_class: Any
                ) -> Any:
    """The step table: the wide one, or at most 80 columns with the bottleneck mark kept."""
    table = table_class(box=None, pad_edge=False, header_style="bold")
    columns: tuple[tuple[str, str], ...]
    if compact:
        columns = (("step", "left"), ("rep", "right"), ("busy/lim", "right"),
                   ("util", "right"), ("queue", "right"), ("req/s", "right"),
                   ("p95ms", "right"), ("err%", "right"), ("CPU", "right"),
                   ("advice", "left"))
    else:
        columns = (("step", "left"), ("rep", "right"), ("busy/infl/lim", "right"),
                   ("util", "right"), ("queue", "right"), ("req/s", "right"),
                   ("p95 ms", "right"), ("refus/s", "right"), ("cancel/s", "right"),
                   ("err%", "right"), ("CPU", "right"), ("RSS", "right"), ("advice", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    broken = {int(step) for step in report.get("cut_off_steps") or []}
    for step in report.get("steps", []):
        advice = step.get("advice") or {}
        action = advice.get("action", "-")
        if any(not hop.get("reachable", True) for hop in step.get("next_steps") or []):
            broken.add(step["step_id"])
        # `*` the bottleneck, `!` a step with a next step it cannot reach
        mark = ("*" if advice.get("bottleneck") else "") + ("!" if step["step_id"] in broken
                                                            else "")
        name = f"{step['step_id']} {step['step_type']}"
        if compact and len(name) > STEP_NAME_CHARS:
            name = name[:STEP_NAME_CHARS - 1] + "~"
        verdict = text_class(f"{ACTION_SHORT.get(action, action)} "
                             f"{advice.get('replicas', '?')}->{advice.get('advised_replicas', '?')}",
                             style=ACTION_STYLE.get(action, ""))
        cells = [text_class.assemble(name, (mark, "bold magenta" if "*" in mark else "bold red"))
                 if mark else name, str(step["replicas"])]
        if compact:
            cells += [f"{_int(step.get('busy'))}/{_int(step.get('max_inflight'))}"]
        else:
            cells += [f"{_int(step.get('busy'))}/{_int(step.get('in_flight'))}/"
                      f"{_int(step.get('max_inflight'))}"]
        cells += [f"{step['utilisation'] * 100:.0f}%",
                  f"{_int(step.get('queued'))}/{_int(step.get('max_queue'))}",
                  _num(step["requests_per_s"]), _ms(step.get("p95_s"))]
        if not compact:
            cells += [_num(step["refusals_per_s"]), _num(step.get("cancelled_per_s"))]
        cells += [f"{step['error_pct']:.1f}", _pct(step.get("cpu_pct"))]
        if not compact:
            cells += [_mib(step.get("rss_bytes"))]
        table.add_row(*cells, verdict)
    return table


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _int(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}%"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1000:.1f}"


def _mib(value: Any) -> str:
    return "-" if not value else f"{float(value) / 2**20:.0f}M"


def top_command(args: argparse.Namespace) -> int:
    """`stepchain top`: one frame (--once) or a screen refreshed every --interval seconds."""
    import httpx
    from rich.console import Console
    from rich.live import Live

    if args.target:
        read, close = target_source(args.target, args.namespace, args.target_utilisation)
        where = "targets " + ", ".join(args.target)
    else:
        url = args.topology or DEFAULT_TOPOLOGY
        read, close = topology_source(url, args.pipeline, args.target_utilisation)
        where = url
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=PIPE_WIDTH if piped else None)
    last: list[dict[str, Any]] | None = None
    failing_since: float | None = None

    def frame() -> Any:
        # A service that restarts (or is not up yet) is waited for, visibly, with the last
        # numbers kept on screen: top keeps trying until Ctrl-C.
        nonlocal last, failing_since
        try:
            last = read()
            failing_since = None
            return render(last, where, width=console.width)
        except Exception as exc:  # whatever the service answered (or not): keep going
            failing_since = failing_since or time.time()
            notice = (f"reconnecting to {where} (no answer since "
                      f"{time.strftime('%H:%M:%S', time.localtime(failing_since))}: "
                      f"{_short_error(exc)})")
            return render(last or [], where, width=console.width, notice=notice)

    try:
        if args.once:
            try:
                reports = read()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                print(f"stepchain top: cannot read {where}: {exc}", file=sys.stderr)
                return 1
            console.print(render(reports, where, width=console.width))
            return 0
        with Live(frame(), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        close()


def _short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 80 else text[:79] + "…"

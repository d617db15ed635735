"""The "Steps" tab of Locust's web UI: each step's kernel, queue, forward and total time.

Uses the web UI's extension points (as Locust's ``examples/extend_web_ui.py`` does): the tab and
its table are declared in the page's ``template_args`` (``extended_tabs``, ``extended_tables``,
``extended_csv_files``), and the rows ride along in ``/stats/requests`` — the JSON the UI polls
every few seconds — as ``extended_stats``. Two routes of its own:

* ``GET /steps`` — the same rows as JSON (``{"steps": [...]}``);
* ``GET /steps/csv`` — the whole-run table as CSV (the download link under the tab).

Times are milliseconds to the microsecond, over the whole run (since the last "Reset stats").
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from flask import Blueprint, Response, jsonify, make_response, request

from loadtest.interval_stats import IntervalStats, StepRow
from loadtest.step_format import STEP_TOTAL_HEADER, ms_cell, step_cells

TAB_KEY = "steps"
TAB_TITLE = "Steps"
#: Column key -> (metric, summary field, column title).
COLUMNS: dict[str, tuple[str, str, str]] = {
    "kernel_mean": ("kernel", "mean_ms", "Kernel mean (ms)"),
    "kernel_p50": ("kernel", "p50_ms", "Kernel p50"),
    "kernel_p95": ("kernel", "p95_ms", "Kernel p95"),
    "kernel_p99": ("kernel", "p99_ms", "Kernel p99"),
    "queue_mean": ("queue", "mean_ms", "Queue mean"),
    "queue_p95": ("queue", "p95_ms", "Queue p95"),
    "forward_mean": ("forward", "mean_ms", "Forward mean"),
    "forward_p95": ("forward", "p95_ms", "Forward p95"),
    "total_mean": ("total", "mean_ms", "Total mean"),
    "total_p95": ("total", "p95_ms", "Total p95"),
    "total_p99": ("total", "p99_ms", "Total p99"),
}
TABLE_STRUCTURE = [{"key": "name", "title": "Step"}, {"key": "count", "title": "Requests"}] + [
    {"key": key, "title": title} for key, (_, _, title) in COLUMNS.items()]


def tab_rows(rows: list[StepRow]) -> list[dict[str, Any]]:
    """The table's rows: one per step, times as text with microsecond precision."""
    return [{"name": row.step, "count": row.count,
             **{key: ms_cell(getattr(row.metrics[metric], field))
                for key, (metric, field, _) in COLUMNS.items()}}
            for row in rows]


def install(web_ui: Any, stats: IntervalStats) -> None:
    """Adds the Steps tab and its routes to Locust's ``WebUI``, showing `stats` (the
    ``StepReport``'s, which it keeps; this tab only reads them)."""
    web_ui.template_args.update({
        "extended_tabs": [{"title": TAB_TITLE, "key": TAB_KEY}],
        "extended_tables": [{"key": TAB_KEY, "structure": TABLE_STRUCTURE}],
        "extended_csv_files": [{"href": "./steps/csv",
                                "title": "Download per-step times CSV (whole run)"}],
    })
    auth = web_ui.auth_required_if_enabled
    options = web_ui.environment.parsed_options
    blueprint = Blueprint("stepchain_steps", __name__,
                          url_prefix=getattr(options, "web_base_path", None) or None)

    @blueprint.route("/steps")
    @auth
    def steps_json() -> Response:
        return jsonify({"steps": tab_rows(stats.step_totals())})

    @blueprint.route("/steps/csv")
    @auth
    def steps_csv() -> Response:
        data = io.StringIO()
        writer = csv.writer(data)
        writer.writerow(STEP_TOTAL_HEADER)
        writer.writerows(step_cells(row) for row in stats.step_totals())
        response = make_response(data.getvalue())
        response.headers["Content-Type"] = "text/csv"
        response.headers["Content-Disposition"] = "attachment;filename=steps_total.csv"
        return response

    @web_ui.app.after_request
    def add_step_rows(response: Response) -> Response:
        if not request.path.endswith("/stats/requests") or response.status_code != 200:
            return response
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            body["extended_stats"] = [{"key": TAB_KEY,
                                       "data": tab_rows(stats.step_totals())}]
            response.set_data(json.dumps(body))
        return response

    web_ui.app.register_blueprint(blueprint)

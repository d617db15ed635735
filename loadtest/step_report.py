"""Per-step timings and per-second request figures inside a Locust process (imports Locust).

Locust's own statistics (the Aggregated row, ``report.html``, the web UI's charts) count pipeline
requests only. :class:`StepReport` listens to the same request events and keeps, in a
:class:`~loadtest.interval_stats.IntervalStats`, what Locust cannot: each step's kernel, queue,
forward and total time (from the ``step_timings`` the gRPC user puts in the event's context)
with sub-millisecond precision, and each second's requests, latency, users and the curve's
target users. It writes, next to Locust's ``--csv PREFIX`` files:

* ``PREFIX_steps.csv`` — per step and per second (count, mean, p50, p95, p99 of each time);
* ``PREFIX_steps_total.csv`` — per step over the whole run (rewritten as the run goes);
* ``PREFIX_requests.csv`` — per second: target users, users, requests, failures, latency.

After a run it prints the per-step table under Locust's own summary; with a web UI it adds a
Steps tab (``loadtest.steps_tab``).

Distributed runs: workers keep each second's figures and send them with their regular stats
report (Locust's ``report_to_master`` event, every 3 s); the master merges them
(``worker_report``) and writes a second once every worker has had time to report it.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, TextIO

import gevent
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from loadtest.entries import REQUEST_TYPE
from loadtest.interval_stats import IntervalStats, StepRow
from loadtest.step_format import (
    REQUEST_HEADER,
    STEP_HEADER,
    STEP_TOTAL_HEADER,
    request_cells,
    step_cells,
    step_table,
)

logger = logging.getLogger("stepchain.loadtest")
#: Where Locust prints its own end-of-run tables.
console = logging.getLogger("locust.stats_logger")

#: Key of the step figures in a worker's report to the master.
REPORT_KEY = "stepchain_steps"
#: How often the open seconds are checked, users sampled and rows written.
TICK_S = 0.25
#: Seconds a master waits before writing a second: a worker reports every 3 s.
MASTER_LAG_S = 5
TOTALS_EVERY_S = 2.0

STEPS_CSV_SUFFIX = "_steps.csv"
STEPS_TOTAL_CSV_SUFFIX = "_steps_total.csv"
REQUESTS_CSV_SUFFIX = "_requests.csv"


class StepReport:
    """Collects, writes and shows step timings for one Locust environment."""

    def __init__(self, environment: Any, csv_prefix: str | None = None) -> None:
        self.environment = environment
        self.stats = IntervalStats()
        self.csv_prefix = csv_prefix
        self._steps_file: TextIO | None = None
        self._requests_file: TextIO | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._last_totals = 0.0

    @property
    def is_worker(self) -> bool:
        return isinstance(self.environment.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.environment.runner, MasterRunner)

    def install(self) -> StepReport:
        """Hooks into the environment's events (and web UI); starts writing on master/local."""
        hooks = self.environment.events
        hooks.request.add_listener(self.on_request)
        hooks.reset_stats.add_listener(self.stats.reset)
        if self.is_worker:
            hooks.report_to_master.add_listener(self.on_report_to_master)
            return self
        if self.is_master:
            hooks.worker_report.add_listener(self.on_worker_report)
        hooks.quit.add_listener(self.on_quit)
        if self.csv_prefix:
            self._open_csv(self.csv_prefix)
        if self.environment.web_ui is not None:
            from loadtest import steps_tab  # Flask: only when Locust serves its web UI

            steps_tab.install(self.environment.web_ui, self.stats)
        self._greenlet = gevent.spawn(self._run)
        return self

    def on_request(self, request_type: str, response_time: float, exception: Any = None,
                   context: dict[str, Any] | None = None, **_kwargs: Any) -> None:
        """Locust's request event: the pipeline requests, and the step timings they carry."""
        if request_type != REQUEST_TYPE:
            return
        second = int(time.time())
        self.stats.record_request(second, response_time, failed=exception is not None)
        timings = (context or {}).get("step_timings")
        if timings:
            self.stats.record_steps(second, timings, (context or {}).get("pipeline_label"))

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        data[REPORT_KEY] = self.stats.drain()

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        wire = data.get(REPORT_KEY)
        if wire is None:
            return
        try:
            self.stats.merge_wire(wire)
        except ValueError as exc:
            logger.warning("ignoring step timings from worker %s: %s", client_id, exc)

    def on_quit(self, **_kwargs: Any) -> None:
        """End of the run: write what is left and print the per-step table."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.flush(final=True)
        for line in step_table(self.stats.step_totals()):
            console.info(line)
        console.info("")
        if self.stats.late_samples:
            console.info("(%d step samples reached the master after their second was written; "
                         "they are in the totals only)", self.stats.late_samples)
        for handle in (self._steps_file, self._requests_file):
            if handle is not None:
                handle.close()
        self._steps_file = self._requests_file = None

    def _run(self) -> None:
        while True:
            try:
                self.sample_users()
                self.flush()
            except Exception:  # a report must never take the load test down
                logger.exception("step report: writing step timings failed")
            gevent.sleep(TICK_S)

    def sample_users(self) -> None:
        """Notes this second's users and the curve's target, while a test runs."""
        runner = self.environment.runner
        if runner is None or runner.state not in (STATE_SPAWNING, STATE_RUNNING):
            return
        self.stats.note_users(int(time.time()), runner.user_count, self.target_users())

    def target_users(self) -> int | None:
        """The users the load curve asks for now (Locust's own target without a curve)."""
        shape = self.environment.shape_class
        curve = getattr(shape, "curve", None)
        if curve is not None:
            return int(curve.users_at(shape.get_run_time()))
        target = getattr(self.environment.runner, "target_user_count", None)
        return int(target) if target is not None else None

    def flush(self, *, final: bool = False) -> None:
        """Writes the seconds that are over (all of them when ``final``) and the totals."""
        cutoff = None if final else int(time.time()) - (MASTER_LAG_S if self.is_master else 0)
        request_rows, step_rows = self.stats.close_before(cutoff)
        if self._requests_file is not None and request_rows:
            writer = csv.writer(self._requests_file)
            writer.writerows(request_cells(row) for row in request_rows)
            self._requests_file.flush()
        if self._steps_file is not None and step_rows:
            writer = csv.writer(self._steps_file)
            writer.writerows(step_cells(row) for row in step_rows)
            self._steps_file.flush()
        now = time.monotonic()
        if self.csv_prefix and (final or now - self._last_totals >= TOTALS_EVERY_S):
            self._last_totals = now
            write_totals(Path(self.csv_prefix + STEPS_TOTAL_CSV_SUFFIX), self.stats.step_totals())

    def _open_csv(self, prefix: str) -> None:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self._steps_file = open(prefix + STEPS_CSV_SUFFIX, "w", newline="",  # noqa: SIM115
                                encoding="utf-8")
        csv.writer(self._steps_file).writerow(STEP_HEADER)
        self._requests_file = open(prefix + REQUESTS_CSV_SUFFIX, "w",  # noqa: SIM115
                                   newline="", encoding="utf-8")
        csv.writer(self._requests_file).writerow(REQUEST_HEADER)


def write_totals(path: Path, rows: list[StepRow]) -> None:
    """``PREFIX_steps_total.csv``, replaced whole (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".part")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(STEP_TOTAL_HEADER)
        writer.writerows(step_cells(row) for row in rows)
    partial.replace(path)


def install(environment: Any) -> StepReport:
    """A :class:`StepReport` for ``environment``, writing next to Locust's ``--csv`` files."""
    options = environment.parsed_options
    prefix = getattr(options, "csv_prefix", None) if options is not None else None
    return StepReport(environment, prefix).install()


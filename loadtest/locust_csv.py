"""Locust's own CSV files, written once more when Locust quits (imports Locust).

Locust rewrites ``PREFIX_stats.csv``, ``PREFIX_failures.csv`` and ``PREFIX_exceptions.csv``
once a second while a test runs, but not after its users stop: the requests of the run's last
second reach Locust's printed summary and ``report.html`` and never its CSV (Locust issues
#1806, #2299). ``loadtest.step_report`` counts every request Locust counts, so its files would
disagree with Locust's CSV by that last second. At ``quit`` (after the users stopped, before
Locust closes its files) the three files are written from Locust's final statistics with
Locust's own ``StatsCSV``; each is replaced whole, so Locust's still-open handle writes into
the old file, never over the new one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV


def write_final_csv(environment: Any, prefix: str) -> list[Path]:
    """Writes ``PREFIX_stats.csv``, ``_failures.csv`` and ``_exceptions.csv`` from
    ``environment``'s statistics now; returns the paths written."""
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    tables: dict[str, Callable[[Any], None]] = {
        "_stats.csv": writer.requests_csv,
        "_failures.csv": writer.failures_csv,
        "_exceptions.csv": writer.exceptions_csv,
    }
    written = []
    for suffix, write in tables.items():
        path = Path(prefix + suffix)
        partial = path.with_name(path.name + ".part")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))
        os.replace(partial, path)
        written.append(path)
    return written


def install(environment: Any) -> None:
    """Writes Locust's CSV once more at ``quit`` when Locust was asked for CSV (``--csv``);
    a worker has no CSV of its own."""
    options = environment.parsed_options
    prefix = getattr(options, "csv_prefix", None) if options is not None else None
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return

    def on_quit(**_kwargs: Any) -> None:
        write_final_csv(environment, prefix)

    environment.events.quit.add_listener(on_quit)

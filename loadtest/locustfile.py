"""Locust entry point for stepchain pipelines.

    locust -f loadtest/locustfile.py --curve spike --users 100 --duration 180 \\
        --image photo.png --host 127.0.0.1:50051 [--headless]

``--users`` (peak), ``--spawn-rate`` and ``--run-time`` (stop early; the curve's length when
``--duration`` is absent) are Locust's own options; ``--curve``, ``--duration``, ``--image`` and
the curve knobs come from ``loadtest.options``. Without ``--host`` the targets
are the pipelines' entry Services in Kubernetes (``loadtest.targets``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# `locust -f loadtest/locustfile.py` loads this file by path; the packages it uses (loadtest,
# stepsvc, the generated stepchain.v1) come from the installed stepchain distribution.
from locust import events
from locust import stats as locust_stats

from loadtest import locust_csv, payload, step_report, targets
from loadtest import options as load_options
from loadtest.grpc_user import LoadPlan, PipelineUser
from loadtest.shapes import shape_for

__all__ = ["PipelineUser"]

logger = logging.getLogger("stepchain.loadtest")

# Locust flushes its CSV every 5 s; `stepchain loadtest` draws its progress line from the
# history CSV, so flush every second (a few hundred bytes each time).
locust_stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kwargs: Any) -> None:
    load_options.add_load_options(parser)


@events.init.add_listener
def _configure(environment: Any, **_kwargs: Any) -> None:
    """Build the curve, the targets and the request from the command line, or stop Locust."""
    opts = environment.parsed_options
    if opts is None:  # Locust used as a library without a command line: nothing to configure
        return
    try:
        curve = load_options.build_curve(opts, users=opts.num_users, spawn_rate=opts.spawn_rate,
                                         run_time=opts.run_time)
        load_options.check_request_settings(opts)
        if environment.host:
            found = targets.parse_hosts(environment.host)
        else:
            found = targets.discover_kubernetes_targets(namespace=opts.namespace,
                                                        node_address=opts.node_address)
        request = payload.build_request(opts.image, send_encoded=opts.send_encoded,
                                        threads=opts.threads, passes=opts.passes)
        PipelineUser.plan = LoadPlan(targets=tuple(found), request=request,
                                     timeout_s=opts.request_timeout,
                                     think_time_s=opts.think_time, host_spec=environment.host)
    except (ValueError, LookupError) as exc:
        logger.error("stepchain loadtest: %s", exc)
        sys.exit(2)
    # The curve decides users over time: it replaces any shape Locust found in this file.
    shape = shape_for(curve, stop_after=opts.run_time)
    shape.runner = environment.runner
    environment.shape_class = shape
    # Step timings go to their own CSV, table and web UI tab, never into Locust's totals.
    step_report.install(environment)
    # Locust's CSV then holds the last second too, so it agrees with the step files exactly.
    locust_csv.install(environment)
    logger.info("curve %s: %s; peak %d users over %gs at %g users/s; targets: %s",
                curve.name, type(curve).formula, curve.peak(), curve.duration, curve.rate,
                ", ".join(f"{t.label}={t.address}" for t in found))

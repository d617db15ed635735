"""``stepchain loadtest``: run Locust headless with a load curve, show progress, plot the result.

Writes into ``--out DIR``: ``loadtest_stats.csv``, ``loadtest_stats_history.csv``,
``loadtest_failures.csv``, ``loadtest_exceptions.csv`` (Locust's CSV, whole requests only),
``loadtest_steps.csv``, ``loadtest_steps_total.csv``, ``loadtest_requests.csv`` (per step / per
second, ``loadtest.step_report``), ``report.html`` (Locust's HTML report), ``loadtest.png``
(``loadtest.plot``) and ``locust.log`` (Locust's own output). Prints the requests, the
per-step table and the most frequent failures. Exits with Locust's code: 0, or 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from loadtest import curves
from loadtest import options as load_options
from loadtest.entries import REQUEST_TYPE
from loadtest.plot import load_matplotlib

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "loadtest"
#: How long Locust may run past the curve's end (start-up, last requests, writing reports).
GRACE_S = 60.0
PROGRESS_EVERY_S = 1.0
#: Without a terminal, print a progress line this often instead of redrawing one.
PLAIN_PROGRESS_EVERY_S = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``stepchain loadtest``."""
    parser = sub.add_parser(
        "loadtest", help="load-test pipelines with Locust (headless) and plot the result",
        description="Run Locust headless against a pipeline entry with a load curve; write "
                    "Locust's CSV and HTML plus a PNG (users, RPS, p50/p95, time per step).")
    parser.add_argument("--users", type=int, default=None,
                        help=f"peak concurrent users (default {curves.DEFAULT_USERS})")
    parser.add_argument("--spawn-rate", type=float, default=None,
                        help="users started/stopped per second when the curve changes "
                             "(default: as fast as the curve's shape needs, so a spike lands "
                             f"within a second; at least {curves.DEFAULT_SPAWN_RATE:g})")
    parser.add_argument("--target", action="append", default=None, metavar="HOST:PORT",
                        help="pipeline entry; repeat to load several pipelines together "
                             "(default: the pipelines' entry Services in Kubernetes, labelled "
                             "stepchain.io/entry=true)")
    parser.add_argument("--out", type=Path, default=Path("out/loadtest"),
                        help="directory for the CSV, HTML and PNG (default out/loadtest)")
    load_options.add_load_options(parser)
    parser.set_defaults(func=run_loadtest)


def locust_command(args: argparse.Namespace) -> list[str]:
    """The Locust command line for ``args`` (headless, CSV with full history, HTML)."""
    out: Path = args.out
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--csv", str(out / CSV_PREFIX), "--csv-full-history", "--html", str(out / "report.html"),
    ]
    if args.users is not None:
        command += ["--users", str(args.users)]
    if args.spawn_rate is not None:
        command += ["--spawn-rate", f"{args.spawn_rate:g}"]
    if args.target:
        command += ["--host", ",".join(args.target)]
    return command + load_options.locust_arguments(args)


def run_loadtest(args: argparse.Namespace) -> int:
    """Validate, run Locust with a progress line, then write the plot and print a summary."""
    from loadtest import payload, targets

    try:
        curve = load_options.build_curve(args, users=args.users, spawn_rate=args.spawn_rate)
        load_options.check_request_settings(args)
        payload.build_request(args.image, send_encoded=args.send_encoded, threads=args.threads,
                              passes=args.passes)
        for target in args.target or []:
            targets.parse_hosts(target)
    except ValueError as exc:
        print(f"stepchain loadtest: {exc}", file=sys.stderr)
        return 2
    args.duration = curve.duration  # Locust gets the resolved length, not its own default
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seconds = out / f"{CSV_PREFIX}_requests.csv"
    for stale in out.glob(f"{CSV_PREFIX}_*.csv"):
        stale.unlink()  # a previous run's seconds would show up as progress
    print(f"stepchain loadtest: --curve {curve.name}, peak {curve.peak()} users, "
          f"{curve.duration:g}s -> {out}", file=sys.stderr)

    log_path = out / "locust.log"
    # The plot's library loads while Locust runs: the report then follows Locust's end at once.
    threading.Thread(target=load_matplotlib, name="import matplotlib", daemon=True).start()
    with log_path.open("w", encoding="utf-8") as log:
        code = _run_with_progress(locust_command(args), log, seconds, curve.duration)
    print(file=sys.stderr)
    if code == 2:
        print(f"stepchain loadtest: Locust refused the run; see {log_path}:", file=sys.stderr)
        print(_tail(log_path), file=sys.stderr)
        return code
    _summarise(out)
    return code


def _run_with_progress(command: list[str], log: TextIO, seconds: Path, duration: float) -> int:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    tty = sys.stderr.isatty()
    last_plain = 0.0
    try:
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > duration + GRACE_S:
                print(f"\nstepchain loadtest: Locust still running {GRACE_S:g}s after the "
                      "curve ended; stopping it", file=sys.stderr)
                _stop(process)
                break
            if tty or elapsed - last_plain >= PLAIN_PROGRESS_EVERY_S:
                last_plain = elapsed
                line = _progress_line(elapsed, duration, seconds)
                print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr,
                      flush=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=PROGRESS_EVERY_S)  # returns the moment Locust exits
    except KeyboardInterrupt:
        # Locust got the same Ctrl-C (same process group) and writes its reports on the way out.
        _stop(process)
    if tty:
        print(f"\r{_progress_line(time.monotonic() - started, duration, seconds)}", end="",
              file=sys.stderr)
    return process.wait()


def _progress_line(elapsed: float, duration: float, seconds: Path) -> str:
    from loadtest.results import latest_progress, read_request_seconds

    done = min(1.0, elapsed / duration)
    bar = "#" * int(done * 30)
    progress = latest_progress(read_request_seconds(seconds))
    stats = ("starting" if progress is None else
             f"users {progress.users:4d}  RPS {progress.rps:8.1f}  requests "
             f"{progress.requests}  failures {progress.failures}")
    return f"[{bar:<30}] {min(elapsed, duration):5.0f}/{duration:g}s  {stats}"


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # Locust shuts down cleanly and writes its reports
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _summarise(out: Path) -> None:
    from loadtest.plot import plot_run
    from loadtest.results import read_failures, read_stats, read_step_totals
    from loadtest.step_format import step_table

    prefix = out / CSV_PREFIX
    stats_csv = out / f"{CSV_PREFIX}_stats.csv"
    if stats_csv.exists():
        requests = [row for row in read_stats(stats_csv) if row.type == REQUEST_TYPE]
        total = sum(row.requests for row in requests)
        failed = sum(row.failures for row in requests)
        print(f"requests {total}, failures {failed}", file=sys.stderr)
        for row in requests:
            print(f"  {row.name:40} n={row.requests:<7} avg {row.average_ms:8.2f} ms"
                  f"  p50 {_ms(row.p50_ms)}  p95 {_ms(row.p95_ms)}", file=sys.stderr)
        for failure in read_failures(out / f"{CSV_PREFIX}_failures.csv")[:5]:
            print(f"  failed {failure.occurrences}x {failure.name}: {failure.error}",
                  file=sys.stderr)
    for line in step_table(read_step_totals(Path(f"{prefix}_steps_total.csv"))):
        print(line, file=sys.stderr)
    try:
        png = plot_run(prefix, out / f"{CSV_PREFIX}.png")
        print(f"plot: {png}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"stepchain loadtest: no plot: {exc}", file=sys.stderr)
    print(f"csv: {prefix}_*.csv  html: {out / 'report.html'}  "
          f"log: {out / 'locust.log'}", file=sys.stderr)


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.0f}"


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

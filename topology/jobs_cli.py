"""``stepchain jobs submit|status|wait|cancel|list`` (clients of the topology service's
``/v1/jobs``) and ``stepchain jobs run`` (one worker; what the local backend's processes and the
Kubernetes Indexed Job's pods execute).

The client commands find the service with ``--topology URL`` (``STEPCHAIN_TOPOLOGY``, default
``http://127.0.0.1:8080``) and the token as every client does (``STEPCHAIN_TOKEN``,
``STEPCHAIN_TOKEN_FILE``, else the state dir's). ``submit --wait`` and ``wait`` draw a live
progress bar on stderr; ``--json`` prints the job's status document instead of text. Exit
codes: 0 every input has an output; 1 the job ended otherwise (failed items, failed,
canceled); 2 the request was refused or the service could not be reached; 3 ``wait
--timeout`` ran out first.

A loose module at topology's top floor, beside ``topology/cli.py``: it drives the jobs room
(:mod:`topology.jobs`) and, as a client, reads the token the service's auth module keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from stepsvc import cli_args

DEFAULT_TOPOLOGY = "http://127.0.0.1:8080"
POLL_S = 0.5
EXIT_OK, EXIT_INCOMPLETE, EXIT_REFUSED, EXIT_TIMEOUT = 0, 1, 2, 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``jobs`` and its commands to the ``stepchain`` command."""
    jobs = sub.add_parser("jobs", help="batch jobs: a bucket (or a huge image) through a "
                                       "pipeline, resumable, one output per input")
    commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)

    def client(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--topology", metavar="URL",
                            help=f"topology service (default $STEPCHAIN_TOPOLOGY, else "
                                 f"{DEFAULT_TOPOLOGY})")
        parser.add_argument("--json", action="store_true",
                            help="print the job's status document (JSON) instead of text")
        return parser

    submit = client(commands.add_parser(
        "submit", help="start a job (POST /v1/jobs)",
        description="Starts a job: every object under INPUT through PIPELINE, one output per "
                    "input under OUTPUT. Locations: s3://bucket/prefix/ (any S3-compatible "
                    "store, configured as AWS tools are) or file:///dir/; a local path is "
                    "taken as file://."))
    submit.add_argument("--pipeline", required=True, help="pipeline id (GET /pipelines)")
    submit.add_argument("--input", required=True, metavar="URI",
                        help="s3://bucket/prefix/, one object, or file:///dir/")
    submit.add_argument("--output", required=True, metavar="URI",
                        help="s3://bucket/prefix/ or file:///dir/ for the outputs")
    submit.add_argument("--concurrency", type=cli_args.positive_int,
                        help="requests in flight over all workers (default 4)")
    submit.add_argument("--workers", type=cli_args.positive_int,
                        help="worker processes or pods (default: the service's)")
    submit.add_argument("--tile", type=cli_args.positive_int, metavar="SIZE",
                        help="send each image as SIZE x SIZE tiles, kept in the store until "
                             "assembled (huge images)")
    submit.add_argument("--output-encoding", choices=("same", "png", "jpeg", "npy"),
                        help="same (default: JPEG stays JPEG, others PNG), png, jpeg, npy")
    submit.add_argument("--threads", type=cli_args.non_negative_int,
                        help="per-request override: OpenMP threads of every step")
    submit.add_argument("--passes", type=cli_args.non_negative_int,
                        help="per-request override: kernel passes of every step")
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="a retried submit with the same key returns the same job")
    submit.add_argument("--wait", action="store_true",
                        help="then follow it to its end with a progress bar (exit code as "
                             "`jobs wait`)")
    submit.set_defaults(func=_submit)

    status = client(commands.add_parser("status", help="a job's state and counts"))
    status.add_argument("job", help="job id")
    status.set_defaults(func=_status)

    wait = client(commands.add_parser(
        "wait", help="follow a job to its end with a live progress bar",
        description="Exit 0 when every input has an output, 1 when the job ended otherwise, "
                    "3 when --timeout ran out first."))
    wait.add_argument("job", help="job id")
    wait.add_argument("--timeout", type=cli_args.non_negative_seconds,
                      help="give up waiting after this many seconds (the job goes on)")
    wait.set_defaults(func=_wait)

    cancel = client(commands.add_parser("cancel", help="stop a job (DELETE /v1/jobs/{id})"))
    cancel.add_argument("job", help="job id")
    cancel.set_defaults(func=_cancel)

    listing = client(commands.add_parser("list", help="every job, newest first"))
    listing.set_defaults(func=_list)

    run = commands.add_parser(
        "run", help="run one worker of a job (what the service starts; not for people)",
        description="Worker INDEX of COUNT: processes its share of the job kept at OUTPUT "
                    "and exits 0 when the share is done. In a Kubernetes Indexed Job the index "
                    "comes from JOB_COMPLETION_INDEX.")
    run.add_argument("--standby", action="store_true",
                     help="start, import everything, then read the assignment (a JSON object "
                          "with output, job, index, count, target) from stdin")
    run.add_argument("--output", metavar="URI", help="the job's output location")
    run.add_argument("--job", help="job id")
    run.add_argument("--index", type=cli_args.non_negative_int,
                     help="this worker's index (default $JOB_COMPLETION_INDEX)")
    run.add_argument("--count", type=cli_args.positive_int, help="number of workers")
    run.add_argument("--target", metavar="HOST:PORT", help="the pipeline's entry step")
    run.add_argument("--concurrency", type=cli_args.positive_int,
                     help="requests in flight in this worker (default: the job's concurrency "
                          "divided by the workers)")
    run.set_defaults(func=_run)


# -- the client ---------------------------------------------------------------------------

class ServiceError(Exception):
    """The service refused the request or could not be reached."""


def _base(args: argparse.Namespace) -> str:
    return (args.topology or os.environ.get("STEPCHAIN_TOPOLOGY") or DEFAULT_TOPOLOGY).rstrip("/")


def _request(args: argparse.Namespace, method: str, path: str, *,
             body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
             ) -> dict[str, Any]:
    import httpx

    from topology.service.auth import auth_header, client_token

    sent = dict(headers or {})
    if method != "GET":
        try:
            sent.update(auth_header(client_token()))
        except ValueError as exc:
            raise ServiceError(str(exc)) from None
    try:
        response = httpx.request(method, _base(args) + path, json=body, headers=sent,
                                 timeout=60.0)
    except httpx.HTTPError as exc:
        raise ServiceError(f"cannot reach the topology service at {_base(args)}: {exc}; "
                           "start it (stepchain topology serve) or give --topology") from None
    if response.status_code >= 400:
        raise ServiceError(_error_text(response.status_code, response))
    return dict(response.json())


def _error_text(code: int, response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return f"HTTP {code}: {response.text[:300]}"
    if isinstance(detail, list):
        return f"HTTP {code}: " + "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: {d.get('msg')}"
            for d in detail)
    return f"HTTP {code}: {detail}"


def _fail(command: str, exc: Exception) -> int:
    print(f"stepchain jobs {command}: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def location_uri(text: str) -> str:
    """A local path as a ``file://`` URI (absolute, a directory keeps its trailing ``/``);
    URIs as they are."""
    if "://" in text:
        return text
    path = os.path.abspath(text)
    return "file://" + path + ("/" if text.endswith("/") or os.path.isdir(path) else "")


def _submit(args: argparse.Namespace) -> int:
    options = {name: value for name, value in (
        ("concurrency", args.concurrency), ("workers", args.workers), ("tile_size", args.tile),
        ("output_encoding", args.output_encoding), ("threads", args.threads),
        ("passes", args.passes)) if value is not None}
    body = {"pipeline": args.pipeline, "input": location_uri(args.input),
            "output": location_uri(args.output), **options}
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    try:
        job = _request(args, "POST", "/v1/jobs", body=body, headers=headers)
    except ServiceError as exc:
        return _fail("submit", exc)
    if args.wait:
        if not args.json:
            print(f"job {job['id']}: {job['counts']['total']} input(s), output {job['output']}",
                  file=sys.stderr)
        return _follow(args, job["id"], None)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"job {job['id']}: {job['state']}, {job['counts']['total']} input(s) -> "
              f"{job['output']}\nfollow it: stepchain jobs wait {job['id']}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    try:
        job = _request(args, "GET", f"/v1/jobs/{args.job}")
    except ServiceError as exc:
        return _fail("status", exc)
    print(json.dumps(job, indent=2) if args.json else describe(job))
    return exit_code(job) if job["state"] in ("succeeded", "failed", "canceled") else EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    try:
        job = _request(args, "DELETE", f"/v1/jobs/{args.job}")
    except ServiceError as exc:
        return _fail("cancel", exc)
    print(json.dumps(job, indent=2) if args.json else describe(job))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    try:
        jobs = _request(args, "GET", "/v1/jobs")["jobs"]
    except ServiceError as exc:
        return _fail("list", exc)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for job in jobs:
        c = job["counts"]
        print(f"{job['id']}  {job['state']:<9}  {c['done']}/{c['total']} done, "
              f"{c['failed']} failed  {job['pipeline']}  {job['input']} -> {job['output']}")
    return EXIT_OK


def _wait(args: argparse.Namespace) -> int:
    return _follow(args, args.job, args.timeout)


def exit_code(job: dict[str, Any]) -> int:
    """0 when every input has an output, else 1."""
    c = job["counts"]
    return EXIT_OK if job["state"] == "succeeded" and c["done"] == c["total"] else \
        EXIT_INCOMPLETE


def describe(job: dict[str, Any]) -> str:
    """A job's status as a few lines of text."""
    c = job["counts"]
    rate = job.get("throughput_per_s")
    eta = job.get("eta_s")
    lines = [f"job {job['id']}: {job['state']}",
             f"  pipeline {job['pipeline']}: {job['input']} -> {job['output']}",
             f"  total {c['total']}, done {c['done']}, failed {c['failed']}, "
             f"retried {c['retried']}, remaining {c['remaining']}"
             + (f", {rate:.2f}/s" if rate else "")
             + (f", about {eta:.0f} s left" if eta and c["remaining"] else "")]
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    for item in job.get("failed_items", []):
        lines.append(f"  failed {item['input']}: {item['code']}: {item['message']}")
    return "\n".join(lines)


def _follow(args: argparse.Namespace, job_id: str, timeout: float | None) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    deadline = None if timeout is None else time.monotonic() + timeout
    console = Console(stderr=True)
    try:
        job = _request(args, "GET", f"/v1/jobs/{job_id}")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                      console=console, transient=False, disable=args.json) as progress:
            task = progress.add_task(f"job {job_id}", total=job["counts"]["total"], detail="")
            while True:
                c = job["counts"]
                rate, eta = job.get("throughput_per_s"), job.get("eta_s")
                detail = (f"{job['state']}, {c['failed']} failed"
                          + (f", {rate:.1f}/s" if rate else "")
                          + (f", ETA {eta:.0f} s" if eta and c["remaining"] else ""))
                progress.update(task, completed=c["done"] + c["failed"], detail=detail)
                if job["state"] in ("succeeded", "failed", "canceled"):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    print(f"stepchain jobs wait: job {job_id} still {job['state']} after "
                          f"{timeout:.0f} s", file=sys.stderr)
                    return EXIT_TIMEOUT
                time.sleep(POLL_S)
                job = _request(args, "GET", f"/v1/jobs/{job_id}")
    except ServiceError as exc:
        return _fail("wait", exc)
    print(json.dumps(job, indent=2) if args.json else describe(job))
    return exit_code(job)


# -- the worker ---------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from stepsvc.step.lifeline import lifeline_fd, watch_lifeline
    from topology.jobs.runner import run_worker
    from topology.jobs.store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.standby:
        line = sys.stdin.readline()
        if not line.strip():
            return EXIT_OK  # the pool closed without giving this standby a job
        assignment = json.loads(line)
        args.output, args.job, args.index = (assignment["output"], assignment["job"],
                                             int(assignment["index"]))
        args.count, args.target = int(assignment["count"]), assignment["target"]
    missing = [f"--{name}" for name in ("output", "job", "count", "target")
               if getattr(args, name) is None]
    if missing:
        print(f"stepchain jobs run: give {', '.join(missing)} (or --standby)", file=sys.stderr)
        return EXIT_REFUSED
    index = args.index
    if index is None:
        text = os.environ.get("JOB_COMPLETION_INDEX", "")
        if not text.isdigit():
            print("stepchain jobs run: give --index or set JOB_COMPLETION_INDEX",
                  file=sys.stderr)
            return EXIT_REFUSED
        index = int(text)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fd = lifeline_fd(os.environ)
    if fd is not None:
        def gone() -> None:
            stop.set()
            # the service is gone: what is in flight is abandoned unwritten, never half-written
            threading.Timer(3.0, lambda: os._exit(0)).start()
        watch_lifeline(fd, gone)
    try:
        tally = run_worker(args.output, args.job, index, args.count, args.target,
                           concurrency=args.concurrency, stop=stop)
    except StoreError as exc:
        print(f"stepchain jobs run: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"worker {index}/{args.count}: done {tally.done}, failed {tally.failed}, "
          f"retried {tally.retried}, written by another {tally.skipped}, left {tally.left}",
          flush=True)
    # Non-zero unless the share is done (or the job canceled): the Job controller, or the local
    # supervisor, then starts this worker again and it does what is left.
    return EXIT_OK if tally.finished or tally.canceled else EXIT_INCOMPLETE

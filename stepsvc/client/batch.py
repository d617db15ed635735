"""`stepchain submit IMAGE --tile SIZE` and `stepchain submit DIR --out OUTDIR`: many requests,
every one accounted for.

One image with ``--tile``: the tiles of :mod:`stepsvc.client.tile_submit`, a progress bar on stderr,
then ``tiles: expected N, done N, retried R, failed 0``. A directory: every image in it (at most
``--concurrency`` at a time), tiled with ``--tile`` or sent whole, each with the same line
prefixed by its name, then ``images: expected N, done N, failed F``. Exit 0 only when nothing
failed; a failed image writes no output and its failed tiles are named. With ``--json`` the
accounting is one JSON document on stdout instead (:func:`report_json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.client import call
from stepsvc.client.tile_submit import (
    IMAGE_SUFFIXES,
    WRITABLE_SUFFIXES,
    RetryPolicy,
    TileJob,
    TileJobError,
    TileReport,
    describe,
    reach_of,
    read_input,
    rpc_error_text,
    with_retries,
)
from stepsvc.client.tiles import PipelineReach
from stepsvc.frames import codec


@dataclass(frozen=True)
class Job:
    """One input image and where its result goes."""

    source: Path
    out: Path


def run(args: argparse.Namespace) -> int:
    """Entry point from `stepchain submit` for --tile and for directories."""
    source = Path(args.image)
    try:
        jobs = _jobs(source, Path(args.out))
    except ValueError as exc:
        print(f"stepchain submit: {exc}", file=sys.stderr)
        return 2
    channel = call.connect(args.target)
    try:
        reach: PipelineReach | None = None
        if args.tile:
            try:
                reach = reach_of(describe(channel, args.timeout))
            except TileJobError as exc:
                print(f"stepchain submit: {exc}", file=sys.stderr)
                return 2
            except grpc.RpcError as err:
                print(f"stepchain submit: {args.target}: cannot describe the pipeline: "
                      f"{rpc_error_text(err)}", file=sys.stderr)
                return 1
        return _run_jobs(args, channel, jobs, reach, directory=source.is_dir())
    finally:
        channel.close()


def _jobs(source: Path, out: Path) -> list[Job]:
    if source.is_dir():
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: the input is a directory, so --out must be one too")
        images = sorted(p for p in source.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
        out.mkdir(parents=True, exist_ok=True)
        return [Job(p, out / (p.name if p.suffix.lower() in WRITABLE_SUFFIXES
                              else p.stem + ".png")) for p in images]
    if not source.is_file():
        raise ValueError(f"{source}: no such file or directory")
    if out.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ValueError(f"--out {out}: the suffix must be one of {', '.join(WRITABLE_SUFFIXES)}")
    call.check_output_path(out)
    return [Job(source, out)]


def _run_jobs(args: argparse.Namespace, channel: grpc.Channel, jobs: list[Job],
              reach: PipelineReach | None, *, directory: bool) -> int:
    policy = RetryPolicy(attempts=args.retries)
    console = Console(stderr=True)
    failed_images = 0
    as_json = bool(getattr(args, "json", False))
    results: list[tuple[Job, TileReport | None, str | None]] = []
    lock = threading.Lock()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:

        def one(job: Job) -> tuple[Job, TileReport | None, str | None]:
            task = progress.add_task(job.source.name, total=None)

            def advance(done: int, expected: int) -> None:
                progress.update(task, completed=done, total=expected)
            try:
                if reach is not None:
                    image = read_input(job.source)
                    report = TileJob(channel, reach, args.tile, concurrency=args.tile_concurrency,
                                     timeout=args.timeout, policy=policy, threads=args.threads,
                                     passes=args.passes).run(image, job.out, advance)
                else:
                    report = _whole(channel, job, args, policy, advance)
            except (TileJobError, ValueError, OSError) as exc:
                return job, None, str(exc)
            return job, report, None

        with futures.ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
            for job, report, error in pool.map(one, jobs):
                prefix = f"{job.source.name}: " if directory else ""
                with lock:
                    if report is None or not report.ok:
                        failed_images += 1
                if as_json:
                    results.append((job, report, error))
                    continue
                if report is None:
                    print(f"{prefix}failed: {error}", file=sys.stderr)
                    continue
                print(prefix + report.line(), flush=True)
                if report.retried:
                    print(f"{prefix}retried after: " + ", ".join(
                        f"{code} x{n}" for code, n in sorted(report.reasons.items())),
                        file=sys.stderr)
                if report.ok:
                    continue
                print(f"{prefix}failed tiles (no output written to {job.out}):\n"
                      f"{report.failures()}", file=sys.stderr)
    if as_json:
        print(json.dumps(report_json(results, directory=directory), indent=2))
    elif directory:
        print(f"images: expected {len(jobs)}, done {len(jobs) - failed_images}, "
              f"failed {failed_images}")
    elif failed_images == 0:
        print(f"output: {jobs[0].out}")
    return 0 if failed_images == 0 else 1


def _image_json(job: Job, report: TileReport | None, error: str | None) -> dict[str, Any]:
    ok = report is not None and report.ok
    entry: dict[str, Any] = {"source": str(job.source), "output": str(job.out) if ok else None,
                             "ok": ok, "error": error}
    if report is not None:
        entry["tiles"] = {"expected": report.expected, "done": report.done,
                          "retried": report.retried, "failed": len(report.failed)}
        entry["retried_after"] = dict(sorted(report.reasons.items()))
        entry["failed_tiles"] = {str(i): why for i, why in sorted(report.failed.items())}
    return entry


def report_json(results: list[tuple[Job, TileReport | None, str | None]], *,
                directory: bool) -> dict[str, Any]:
    """``--json``: the same accounting as the text lines — one image's entry, or for a
    directory every image's entry plus ``expected``/``done``/``failed`` counts."""
    entries = [_image_json(job, report, error) for job, report, error in results]
    if not directory:
        return entries[0]
    failed = sum(1 for e in entries if not e["ok"])
    return {"images": entries, "expected": len(entries), "done": len(entries) - failed,
            "failed": failed}


def _whole(channel: grpc.Channel, job: Job, args: argparse.Namespace, policy: RetryPolicy,
           advance: Any) -> TileReport:
    """One image as one request (a directory without --tile), retried like a tile."""
    report = TileReport(expected=1)
    suffix = job.out.suffix.lower()
    if suffix == ".npy" or job.source.suffix.lower() == ".npy":
        image = codec.raw_image(np.ascontiguousarray(read_input(job.source)))
    else:
        image = call.image_message(job.source)
    encoding = {".png": codec.PNG, ".jpg": codec.JPEG, ".jpeg": codec.JPEG}.get(suffix, codec.RAW)
    request = call.build_request(image, output_encoding=encoding, threads=args.threads,
                                 passes=args.passes, request_id=f"{job.source.stem}/0")
    stub = step_pb2_grpc.StepServiceStub(channel)

    def on_retry(code: grpc.StatusCode, message: str) -> None:
        report.retried += 1
        report.reasons[code.name] = report.reasons.get(code.name, 0) + 1
    try:
        response: step_pb2.ProcessResponse = with_retries(
            lambda t, w: stub.Process(request, timeout=t, wait_for_ready=w), args.timeout,
            policy, on_retry)
    except grpc.RpcError as err:
        report.failed[0] = rpc_error_text(err)
        advance(1, 1)
        return report
    if suffix == ".npy":
        np.save(job.out, codec.decode_image(response.image))
    else:
        job.out.write_bytes(response.image.data)
    report.done = 1
    advance(1, 1)
    return report

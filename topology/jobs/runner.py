"""One worker's share of a job: read each input, call the pipeline, write its output once.

Worker ``i`` of ``n`` (a local process of the local backend, or pod ``i`` of a Kubernetes
Indexed Job) reads the manifest and the input snapshot from the store, lists the outputs that
exist and the inputs that failed for good, and processes the rest of its share
(:func:`topology.jobs.plan.shard`), at most `concurrency` requests at a time:

- an input is read from the store and sent to the pipeline's entry step as it is (PNG and
  JPEG; a ``.npy`` array or any other image Pillow reads goes as raw pixels); an object that is
  no image is a failure of that input, recorded with ``INVALID_ARGUMENT``, and the job goes on;
- the result is written with a conditional put (``If-None-Match: *``) to the output key the
  snapshot names: a write is atomic, so an output is whole or absent, and a second writer (a
  restarted worker, a pod the Job controller started twice) is refused instead of writing it
  again -- at most one object per input, ever;
- UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried with backoff (``attempts``
  tries); any other status fails the input with its gRPC code and message, and so does an
  image too large for one request (no retry helps; the message says to set ``tile_size``);
- with ``tile_size`` an input goes as tiles whose results are kept in the store
  (:mod:`topology.jobs.tiled`), so a worker that dies mid-image redoes only the missing tiles.

The worker stops taking inputs when `stop` is set (SIGTERM) or the job is canceled (the
``cancel`` marker, looked for every second); requests in flight finish and are written, or
are abandoned unwritten. When its whole share is done it writes ``shards/<i>.done``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from stepchain.v1 import step_pb2, step_pb2_grpc

from stepsvc.client import call
from stepsvc.client.tile_submit import (
    RETRYABLE,
    RetryPolicy,
    TileJobError,
    describe,
    over_a_size_limit,
    reach_of,
    rpc_error_text,
    with_retries,
)
from stepsvc.client.tiles import PipelineReach
from topology.jobs.inputs import WIRE_ENCODINGS, NotAnImage, request_image, response_output
from topology.jobs.locations import Location, output_encoding_of, parse_location
from topology.jobs.manifest import Item, JobFiles, JobManifest, key_digest
from topology.jobs.plan import pending, shard
from topology.jobs.store import Store, StoreError, open_store
from topology.jobs.tiled import process_tiled

log = logging.getLogger(__name__)

#: Seconds between looks for the cancel marker and between tally writes.
POLL_S = 1.0
#: Said after a request too large for the pipeline.
TILE_HINT = ("the image is larger than one request may be: give the job tile_size (e.g. "
             "2048; stepchain jobs submit --tile 2048) to send it as tiles, each a request of "
             "its own")


@dataclass
class Tally:
    """What this worker did (added to what its earlier lives did)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    #: Inputs left undone in this life (the store failed): the share is not finished.
    left: int = 0
    #: The share is done (``shards/<i>.done`` written).
    finished: bool = False
    #: The worker saw the job's cancel marker.
    canceled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_json(self) -> dict[str, Any]:
        with self.lock:
            return {"done": self.done, "failed": self.failed, "retried": self.retried,
                    "skipped": self.skipped}


class Worker:
    """Worker `index` of `count` of one job (see the module)."""

    def __init__(self, files: JobFiles, manifest: JobManifest, index: int, count: int,
                 channel: grpc.Channel, *, input_store: Store, concurrency: int,
                 stop: threading.Event | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.files = files
        self.manifest = manifest
        self.index, self.count = index, count
        self.channel = channel
        self.stub = step_pb2_grpc.StepServiceStub(channel)
        self.input_store = input_store
        self.concurrency = max(1, concurrency)
        self.stop = stop if stop is not None else threading.Event()
        self.options = manifest.options
        self.policy = RetryPolicy(attempts=max(1, self.options.attempts))
        self.tally = Tally()
        self._reach: PipelineReach | None = None
        self._reach_lock = threading.Lock()
        self.calls = threading.BoundedSemaphore(self.concurrency)

    # -- the share ------------------------------------------------------------------------

    def todo(self) -> list[Item]:
        """This worker's items that have neither an output nor a failure record."""
        mine = shard(self.files.items(self.manifest.total), self.index, self.count)
        return pending(mine, self.files.output_times(), self.files.failed_inputs())

    def run(self) -> Tally:
        """Processes the share; returns the tallies. Marks the shard done unless stopped."""
        before = self.files.read_worker(self.index)
        self.tally.add(**{k: int(before.get(k, 0)) for k in ("done", "failed", "retried",
                                                             "skipped")})
        self.files.store.sweep_staging(self.files.output.prefix, older_than_s=300)
        todo = self.todo()
        log.info("job %s worker %d/%d: %d input(s) to do", self.files.job_id, self.index,
                 self.count, len(todo))
        watcher = threading.Thread(target=self._watch, name="job-watch", daemon=True)
        watcher.start()
        try:
            with futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                            thread_name_prefix="job-item") as pool:
                pending_futures: set[futures.Future[None]] = set()
                for item in todo:
                    if self.stop.is_set():
                        break
                    pending_futures.add(pool.submit(self._one, item))
                    if len(pending_futures) >= self.concurrency:
                        finished, pending_futures = futures.wait(
                            pending_futures, return_when=futures.FIRST_COMPLETED)
                        for future in finished:
                            future.result()
                for future in futures.as_completed(pending_futures):
                    future.result()
        finally:
            stopped_early = self.stop.is_set()
            self.stop.set()
            watcher.join(timeout=5)
            self._report()
        if not stopped_early and self.tally.left == 0:
            self.files.mark_shard_done(self.index)
            self.tally.finished = True
        return self.tally

    def _watch(self) -> None:
        try:
            self._report()  # started: the job is running
        except StoreError as exc:
            log.warning("job %s worker %d: %s", self.files.job_id, self.index, exc)
        while not self.stop.wait(POLL_S):
            try:
                if self.files.cancel_requested():
                    log.info("job %s canceled: worker %d stops taking inputs",
                             self.files.job_id, self.index)
                    self.tally.canceled = True
                    self.stop.set()
                    return
                self._report()
            except StoreError as exc:
                log.warning("job %s worker %d: %s", self.files.job_id, self.index, exc)

    def _report(self) -> None:
        self.files.write_worker(self.index, {
            **self.tally.as_json(), "index": self.index, "count": self.count,
            "host": socket.gethostname(), "pid": os.getpid(), "updated": time.time()})

    # -- one input ------------------------------------------------------------------------

    def _one(self, item: Item) -> None:
        if self.stop.is_set():
            return
        try:
            if self.options.tile_size:  # read by tiles where the input allows it
                result = process_tiled(self, item, self.input_store)
            else:
                result = self._whole(item, self.input_store.get(item.input_key))
        except NotAnImage as exc:  # the record names the input: the message need not
            self._fail(item, "INVALID_ARGUMENT", str(exc).removeprefix(f"{item.input_key}: "))
            return
        except grpc.RpcError as err:
            status = err.code() if hasattr(err, "code") else None
            if self.stop.is_set() and (status in RETRYABLE or status == grpc.StatusCode.CANCELLED):
                self.tally.add(left=1)  # the pipeline went away as this worker stops: not the
                return                  # input's fault; its next worker sends it again
            code, _, message = rpc_error_text(err).partition(": ")
            if status == grpc.StatusCode.RESOURCE_EXHAUSTED and over_a_size_limit(message):
                message += (f"; {TILE_HINT}" if not self.options.tile_size else
                            f"; a smaller tile_size than {self.options.tile_size} makes "
                            "each tile's request smaller")
            self._fail(item, code, message)
            return
        except StoreError as exc:
            # The store failing is not the input's fault: leave it for the next life of this
            # worker (it exits unfinished and is restarted).
            log.warning("job %s: %s: %s", self.files.job_id, item.input_key, exc)
            self.tally.add(left=1)
            return
        if result is None:  # a tiled input abandoned (stopping) before all its tiles came
            return
        if self.files.store.put_new(item.output_key, result):
            self.tally.add(done=1)
        else:
            self.tally.add(skipped=1)  # another writer was first; its bytes are the same
        if self.options.tile_size:
            self.files.store.delete_prefix(self.files.tiles_prefix(item.input_key))

    def _fail(self, item: Item, code: str, message: str) -> None:
        log.warning("job %s: %s failed: %s: %s", self.files.job_id, item.input_key, code,
                    message)
        self.files.record_failure(item, code, message)
        self.tally.add(failed=1)

    def _whole(self, item: Item, data: bytes) -> bytes | None:
        image = request_image(item.input_key, data)
        encoding = WIRE_ENCODINGS[output_encoding_of(item.output_key)]
        request = call.build_request(
            image, output_encoding=encoding, threads=self.options.threads,
            passes=self.options.passes, jpeg_quality=self.options.jpeg_quality,
            request_id=f"{self.files.job_id}/{key_digest(item.input_key)}")
        return response_output(self.call(request).image, item.output_key)

    def call(self, request: step_pb2.ProcessRequest) -> step_pb2.ProcessResponse:
        """One request to the entry step, retried on the retryable codes, at most
        `concurrency` in flight over the whole worker."""
        def on_retry(code: grpc.StatusCode, message: str) -> None:
            self.tally.add(retried=1)

        with self.calls:
            response: step_pb2.ProcessResponse = with_retries(
                lambda t, w: self.stub.Process(request, timeout=t, wait_for_ready=w),
                self.options.timeout_s, self.policy, on_retry)
        return response

    def reach(self) -> PipelineReach:
        """The pipeline's halo and scale for tiling, asked of the entry step once; NotAnImage
        (the input cannot go as tiles) when the pipeline cannot be tiled."""
        with self._reach_lock:
            if self._reach is None:
                try:
                    self._reach = reach_of(describe(self.channel, self.options.timeout_s))
                except TileJobError as exc:
                    raise NotAnImage(str(exc)) from None
            return self._reach


def run_worker(output_uri: str, job_id: str, index: int, count: int, target: str, *,
               concurrency: int | None = None, stop: threading.Event | None = None,
               environ: dict[str, str] | None = None,
               channel_factory: Callable[[str], grpc.Channel] = call.connect) -> Tally:
    """Runs worker `index` of `count` of the job kept at `output_uri` against `target`."""
    env = dict(os.environ if environ is None else environ)
    output = parse_location(output_uri, field="output").as_prefix()
    files = JobFiles(open_store(output, env), output, job_id)
    manifest = files.read_manifest()
    input_location: Location = manifest.input_location
    input_store = (files.store if (input_location.scheme, input_location.bucket)
                   == (output.scheme, output.bucket) else open_store(input_location, env))
    per_worker = concurrency or max(1, -(-manifest.options.concurrency // count))
    channel = channel_factory(target)
    try:
        return Worker(files, manifest, index, count, channel, input_store=input_store,
                      concurrency=per_worker, stop=stop).run()
    finally:
        channel.close()

"""Workers of a job against a real S3 server and a real (in-process) pipeline: one output per
input, written once; a restarted or second worker does only the rest; a non-image fails alone;
a huge image's tiles are kept and only the missing ones are sent again."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from step_fixtures import InProcessPipeline, in_process
from stepchain.v1 import step_pb2
from store_fixtures import bucket_store, photo_bytes, unique_prefix

from stepsvc.client import call
from stepsvc.frames import codec
from topology.jobs.manifest import JobFiles, JobOptions
from topology.jobs.runner import Worker, run_worker
from topology.jobs.store import Store, open_store
from topology.jobs.submission import JobInvalid, create_job

#: A real S3 server (SeaweedFS) starts for these: seconds, not milliseconds.
pytestmark = pytest.mark.slow

STEPS = [{"id": 0, "type": "grayscale", "next_step": 1},
         {"id": 1, "type": "gaussian_blur", "params": {"sigma": 1.5}}]


@pytest.fixture(scope="module")
def chain() -> Iterator[InProcessPipeline]:
    with in_process() as pipe:
        pipe.add(1, STEPS)
        pipe.add(0, STEPS)
        yield pipe


def direct(pipe: InProcessPipeline, data: bytes, encoding: int) -> bytes:
    """The pipeline's answer for `data` sent by hand, the reference a job must equal."""
    channel = call.connect(pipe.servers[0].address)
    try:
        image = step_pb2.Image(data=data, encoding=codec.sniff_encoding(data))
        return bytes(call.submit(channel, call.build_request(image, output_encoding=encoding))
                     .response.image.data)
    finally:
        channel.close()


def upload(store: Store, prefix: str, count: int) -> dict[str, bytes]:
    inputs = {f"{prefix}img{i:02d}.png": photo_bytes(i) for i in range(count)}
    inputs[f"{prefix}sub/photo.jpg"] = photo_bytes(99, fmt="JPEG")
    for key, data in inputs.items():
        store.put(key, data)
    return inputs


def outputs(store: Store, prefix: str) -> dict[str, bytes]:
    return {o.key[len(prefix):]: store.get(o.key) for o in store.list(prefix)
            if not o.key[len(prefix):].startswith("_stepchain/")}


def test_two_workers_write_one_output_per_input_equal_to_direct_calls(
        s3_env: dict[str, str], chain: InProcessPipeline) -> None:
    store = bucket_store(s3_env, "photos")
    src, dst = unique_prefix("in"), unique_prefix("out")
    inputs = upload(store, src, 6)
    store.put(src + "notes.txt", b"not an image")
    manifest = create_job(pipeline="p1", input_uri=f"s3://photos/{src}",
                          output_uri=f"s3://outputs/{dst}",
                          options=JobOptions(concurrency=4), environ=s3_env)
    assert manifest.total == 8
    target = chain.servers[0].address
    tallies = [run_worker(manifest.output, manifest.id, i, 2, target, environ=s3_env)
               for i in range(2)]
    out_store = bucket_store(s3_env, "outputs")
    written = outputs(out_store, dst)
    expected = {k[len(src):] for k in inputs}  # "same": PNG stays PNG, JPEG stays JPEG
    assert set(written) == expected
    for key, data in inputs.items():
        encoding = codec.JPEG if key.endswith(".jpg") else codec.PNG
        assert written[key[len(src):]] == direct(chain, data, encoding), key
    assert sum(t.done for t in tallies) == 7 and sum(t.failed for t in tallies) == 1
    files = JobFiles(out_store, manifest.output_location, manifest.id)
    [failure] = files.failures()
    assert failure["input"] == src + "notes.txt" and failure["code"] == "INVALID_ARGUMENT"
    assert "not an image" in failure["message"]
    assert files.shards_done() == {0, 1}


def test_a_restarted_worker_does_only_the_rest_and_a_second_one_duplicates_nothing(
        s3_env: dict[str, str], chain: InProcessPipeline, tmp_path: Path) -> None:
    """On local files this time: the same contract."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        (src / f"p{i}.png").write_bytes(photo_bytes(i))
    manifest = create_job(pipeline="p1", input_uri=f"file://{src}/", output_uri=f"file://{dst}/",
                          options=JobOptions(concurrency=2), environ=s3_env)
    dst.mkdir(exist_ok=True)
    (dst / "p0.png").write_bytes(direct(chain, photo_bytes(0), codec.PNG))  # done before
    target = chain.servers[0].address
    results = []

    def worker() -> None:
        results.append(run_worker(manifest.output, manifest.id, 0, 1, target, environ=s3_env))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in dst.iterdir() if p.name != "_stepchain")
    assert names == [f"p{i}.png" for i in range(6)]  # no staging file, nothing twice
    assert sum(r.done for r in results) == 5  # p0 was not redone; each other input once
    for i in range(6):
        assert (dst / f"p{i}.png").read_bytes() == direct(chain, photo_bytes(i), codec.PNG)


def test_submission_refuses_what_cannot_run_naming_the_field(s3_env: dict[str, str]) -> None:
    store = bucket_store(s3_env, "photos")
    src = unique_prefix("refuse")
    store.put(src + "readme.txt", b"text")
    cases = [
        (f"s3://no-such-bucket/{src}", "s3://outputs/x/", "input", "bucket does not exist"),
        (f"s3://photos/{unique_prefix('empty')}", "s3://outputs/x/", "input", "no objects"),
        (f"s3://photos/{src}", "s3://outputs/x/", "input", "no images"),
        ("ftp://x/", "s3://outputs/x/", "input", "scheme"),
    ]
    for input_uri, output_uri, field, words in cases:
        with pytest.raises(JobInvalid) as caught:
            create_job(pipeline="p1", input_uri=input_uri, output_uri=output_uri,
                       options=JobOptions(), environ=s3_env)
        assert (caught.value.field, words in str(caught.value)) == (field, True), caught.value
    store.put(src + "a.png", photo_bytes(1))
    with pytest.raises(JobInvalid) as caught:
        create_job(pipeline="p1", input_uri=f"s3://photos/{src}",
                   output_uri="s3://no-such-bucket/out/", options=JobOptions(), environ=s3_env)
    assert caught.value.field == "output" and "bucket does not exist" in str(caught.value)
    with pytest.raises(JobInvalid) as caught:
        create_job(pipeline="p1", input_uri=f"s3://photos/{src}",
                   output_uri=f"s3://photos/{src}out/", options=JobOptions(), environ=s3_env)
    assert caught.value.field == "output" and "overlaps" in str(caught.value)
    wrong = {**s3_env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    with pytest.raises(JobInvalid) as caught:
        create_job(pipeline="p1", input_uri=f"s3://photos/{src}", output_uri="s3://outputs/y/",
                   options=JobOptions(), environ=wrong)
    assert caught.value.field == "input" and "refused the credentials" in str(caught.value)
    with pytest.raises(JobInvalid) as caught:
        create_job(pipeline="p1", input_uri=f"s3://photos/{src}", output_uri="s3://outputs/y/",
                   options=JobOptions(concurrency=0), environ=s3_env)
    assert caught.value.field == "concurrency"


class CountingWorker(Worker):
    """Counts the requests it sends; is stopped (as by SIGTERM) once it sent `stop_after`."""

    def __init__(self, *args: object, stop_after: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent = 0
        self.stop_after = stop_after
        self.count_lock = threading.Lock()

    def call(self, request: step_pb2.ProcessRequest) -> step_pb2.ProcessResponse:
        with self.count_lock:
            self.sent += 1
            if self.stop_after is not None and self.sent >= self.stop_after:
                self.stop.set()  # this request finishes; no other starts
        return super().call(request)


def test_a_huge_image_keeps_its_tiles_and_a_resumed_worker_sends_only_the_missing_ones(
        s3_env: dict[str, str], chain: InProcessPipeline) -> None:
    store = bucket_store(s3_env, "photos")
    src, dst = unique_prefix("huge"), unique_prefix("huge-out")
    big = photo_bytes(7, size=(200, 260))
    store.put(src + "big.png", big)
    manifest = create_job(pipeline="p1", input_uri=f"s3://photos/{src}big.png",
                          output_uri=f"s3://outputs/{dst}",
                          options=JobOptions(concurrency=1, tile_size=64), environ=s3_env)
    out_store = bucket_store(s3_env, "outputs")
    files = JobFiles(out_store, manifest.output_location, manifest.id)
    channel = call.connect(chain.servers[0].address)
    try:
        first = CountingWorker(files, manifest, 0, 1, channel, input_store=store,
                               concurrency=1, stop_after=5)
        first.run()
        assert first.sent == 5
        kept = list(out_store.list(files.tiles_prefix(src + "big.png")))
        assert len(kept) == 5 and not outputs(out_store, dst)  # tiles kept, no output yet
        assert files.shards_done() == set() and files.failures() == []
        second = CountingWorker(files, manifest, 0, 1, channel, input_store=store,
                                concurrency=1)
        second.run()
        assert second.sent == 20 - 5  # 4 x 5 tiles of 64 px; only the missing ones
    finally:
        channel.close()
    written = outputs(out_store, dst)
    assert list(written) == ["big.png"]
    assert written["big.png"] == direct(chain, big, codec.PNG)  # equal to the untiled result
    assert list(out_store.list(files.tiles_prefix(src + "big.png"))) == []
    arr = np.asarray(Image.open(io.BytesIO(written["big.png"])))
    assert arr.shape == (200, 260)


class RecordingStore(Store):
    """The photos bucket, noting every whole-object GET and the bytes of every ranged read."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner._backend, inner.name)
        self.whole: list[str] = []
        self.ranged: list[int] = []

    def get(self, key: str) -> bytes:
        self.whole.append(key)
        return super().get(key)

    def get_ranges(self, key: str, starts: Sequence[int], lengths: Sequence[int]
                   ) -> list[memoryview]:
        self.ranged.append(sum(lengths))
        return super().get_ranges(key, starts, lengths)


def test_a_huge_npy_image_is_read_tile_by_tile_never_whole(
        s3_env: dict[str, str], chain: InProcessPipeline) -> None:
    store = RecordingStore(bucket_store(s3_env, "photos"))
    src, dst = unique_prefix("npy"), unique_prefix("npy-out")
    pixels = np.asarray(Image.open(io.BytesIO(photo_bytes(3, size=(150, 190)))))
    buf = io.BytesIO()
    np.save(buf, pixels)
    store.put(src + "scan.npy", buf.getvalue())
    manifest = create_job(pipeline="p1", input_uri=f"s3://photos/{src}scan.npy",
                          output_uri=f"s3://outputs/{dst}",
                          options=JobOptions(concurrency=2, tile_size=64), environ=s3_env)
    out_store = bucket_store(s3_env, "outputs")
    files = JobFiles(out_store, manifest.output_location, manifest.id)
    channel = call.connect(chain.servers[0].address)
    try:
        worker = Worker(files, manifest, 0, 1, channel, input_store=store, concurrency=2)
        tally = worker.run()
        padded = 64 + 2 * worker.reach().halo
    finally:
        channel.close()
    assert (tally.done, tally.failed) == (1, 0)
    assert store.whole == []  # the header, then each padded tile's rows, by ranged GETs
    assert len(store.ranged) == 1 + 3 * 3 and max(store.ranged) <= padded * padded * 3
    written = np.load(io.BytesIO(out_store.get(f"{dst}scan.npy")), allow_pickle=False)
    untiled = call.submit(call.connect(chain.servers[0].address), call.build_request(
        codec.raw_image(pixels), output_encoding=codec.RAW)).response.image
    assert np.array_equal(written, codec.decode_image(untiled))


def test_an_image_too_large_for_one_request_fails_at_once_saying_tile_size(
        s3_env: dict[str, str], chain: InProcessPipeline, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "wide.npy", np.zeros((800, 800, 3), np.uint8))  # 1.9 MB raw
    manifest = create_job(pipeline="p1", input_uri=f"file://{tmp_path}/in/",
                          output_uri=f"file://{tmp_path}/out/", options=JobOptions(),
                          environ=s3_env)
    files = JobFiles(open_store(manifest.output_location), manifest.output_location,
                     manifest.id)
    channel = call.connect(chain.servers[0].address, max_message_mb=1)
    try:
        tally = Worker(files, manifest, 0, 1, channel, input_store=files.store,
                       concurrency=1).run()
    finally:
        channel.close()
    assert (tally.done, tally.failed, tally.retried) == (0, 1, 0)  # no retry can help it
    [failure] = files.failures()
    assert failure["code"] == "RESOURCE_EXHAUSTED" and "give the job tile_size" in failure["message"]

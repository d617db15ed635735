"""Shared memory between co-located steps: frames by handle, validated, never left behind."""

from __future__ import annotations

import mmap
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from step_fixtures import (
    InProcessPipeline,
    ProcessPipeline,
    in_process,
    noisy_image,
    raw_request,
)
from stepchain.v1 import step_pb2

import native
from stepsvc.frames import codec, shm
from stepsvc.frames.shm import DEFAULT_DIR, HEADER_SIZE, BadHandle, FrameStore, NotShared

CHAIN = [{"id": 1, "type": "gaussian_blur", "params": {"sigma": 1.5}, "next_step": 2},
         {"id": 2, "type": "classify", "next_step": 3},
         {"id": 3, "type": "edges"}]


def _segments(prefix: str, directory: str = DEFAULT_DIR) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(prefix))


def _expected(img: np.ndarray) -> np.ndarray:
    return native.edges(native.gaussian_blur(img, sigma=1.5))


@pytest.fixture
def pipe() -> Iterator[InProcessPipeline]:
    with in_process() as p:
        yield p


def _spy_creates(pipe: InProcessPipeline, step_id: int) -> list[str]:
    frames = pipe.servers[step_id].servicer.frames
    assert frames is not None
    created: list[str] = []
    original = frames.create

    def create(shape: tuple[int, int, int]) -> Any:
        segment = original(shape)
        created.append(segment.name)
        return segment

    frames.create = create  # type: ignore[method-assign]
    return created


def test_co_located_steps_pass_frames_through_shared_memory_from_the_first_request(
        pipe: InProcessPipeline) -> None:
    for step in CHAIN:
        pipe.add(int(step["id"]), CHAIN)  # type: ignore[call-overload]
    created = _spy_creates(pipe, 1)
    img = noisy_image(40, 56)
    stub = pipe.stub(1)
    first = stub.Process(raw_request(img), timeout=20)
    assert len(created) == 2  # step 2's health check told its domain before the first frame
    for _ in range(3):
        resp = stub.Process(raw_request(img), timeout=20)
        np.testing.assert_array_equal(codec.decode_image(resp.image), _expected(img))
        assert [t.step_id for t in resp.timings] == [1, 2, 3]
        assert set(resp.labels) == {"sharpness", "exposure", "color"}
    np.testing.assert_array_equal(codec.decode_image(first.image), _expected(img))
    # per request, step 1 made the frame (classify passes it on) and a reply segment the last
    # step wrote the final image into; step 1 put it inline for the caller
    assert len(created) == 8
    # each frame ended with its request: its token is void; the memory waits in a small pool
    # for the next frame and is unlinked when the step stops
    assert len(_segments("stepchain-p1-")) <= 2
    for server in pipe.servers.values():
        server.stop(0)
    assert _segments("stepchain-p1-") == []


def test_a_step_that_does_not_read_shared_memory_gets_bytes_even_when_told_otherwise(
        pipe: InProcessPipeline) -> None:
    steps = [{"id": 1, "type": "gaussian_blur", "next_step": 2}, {"id": 2, "type": "edges"}]
    pipe.add(1, steps)
    pipe.add(2, steps, shm_dir="")
    sender = pipe.servers[1].servicer
    assert sender.frames is not None
    # a stale cache entry: the address used to advertise our domain
    sender.forwarder._domains[pipe.servers[2].address] = sender.frames.domain
    img = noisy_image(30, 30)
    resp = pipe.stub(1).Process(raw_request(img), timeout=20)
    np.testing.assert_array_equal(codec.decode_image(resp.image),
                                  native.edges(native.gaussian_blur(img)))
    assert sender.forwarder.domain(pipe.servers[2].address) is None


# -- handles are input: validated like any other --------------------------------------------------

@pytest.fixture
def single(pipe: InProcessPipeline) -> tuple[InProcessPipeline, FrameStore]:
    pipe.add(1, [{"id": 1, "type": "identity"}])
    frames = pipe.servers[1].servicer.frames
    assert frames is not None
    return pipe, frames


def _shm_request(handle: step_pb2.SharedFrame, h: int = 8, w: int = 8,
                 c: int = 3) -> step_pb2.ProcessRequest:
    req = step_pb2.ProcessRequest()
    req.image.width, req.image.height, req.image.channels = w, h, c
    req.image.shm.CopyFrom(handle)
    return req


def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


def test_a_valid_handle_is_read_and_the_pixels_come_back(
        single: tuple[InProcessPipeline, FrameStore]) -> None:
    pipe, frames = single
    img = noisy_image(8, 8)
    segment = frames.create((8, 8, 3))
    segment.pixels[...] = img
    try:
        resp = pipe.stub(1).Process(_shm_request(segment.handle()), timeout=10)
    finally:
        segment.close()
    np.testing.assert_array_equal(codec.decode_image(resp.image), img)
    code, details = _status(lambda: pipe.stub(1).Process(_shm_request(segment.handle()),
                                                         timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "forged or stale" in details
    frames.close()
    assert _segments(segment.name) == []


def test_a_caller_on_the_same_host_gets_the_final_image_in_its_reply_segment(
        single: tuple[InProcessPipeline, FrameStore]) -> None:
    pipe, frames = single
    img = noisy_image(8, 8)
    frame, reply = frames.create((8, 8, 3)), frames.create((8, 8, 3))
    frame.pixels[...] = img
    try:
        request = _shm_request(frame.handle())
        request.reply.CopyFrom(reply.handle())
        resp = pipe.stub(1).Process(request, timeout=10)
        assert resp.image.shm == reply.handle() and not resp.image.data
        assert (resp.image.width, resp.image.height, resp.image.channels) == (8, 8, 3)
        np.testing.assert_array_equal(reply.pixels, img)
        forged = _shm_request(frame.handle())
        forged.reply.CopyFrom(reply.handle())
        forged.reply.token = secrets.token_bytes(16)
        code, details = _status(lambda: pipe.stub(1).Process(forged, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reply" in details
        # a reply of another size: the image comes back as bytes
        small = _shm_request(frame.handle())
        small.reply.CopyFrom(reply.handle())
        small.reply.size = 10
        resp = pipe.stub(1).Process(small, timeout=10)
        np.testing.assert_array_equal(codec.decode_image(resp.image), img)
    finally:
        frame.close()
        reply.close()


def test_forged_stale_and_foreign_handles_are_refused_and_the_step_keeps_serving(
        single: tuple[InProcessPipeline, FrameStore], tmp_path: Path) -> None:
    pipe, frames = single
    stub = pipe.stub(1)
    segment = frames.create((8, 8, 3))
    good = segment.handle()
    other = FrameStore(DEFAULT_DIR, "other-pipeline", max_bytes=1 << 20)
    foreign = other.create((8, 8, 3))
    link = f"{frames.prefix}1-{os.getpid()}-1-999999"
    os.symlink(os.path.join(DEFAULT_DIR, segment.name), os.path.join(DEFAULT_DIR, link))
    try:
        def variant(**changes: Any) -> step_pb2.SharedFrame:
            handle = step_pb2.SharedFrame()
            handle.CopyFrom(good)
            for key, value in changes.items():
                setattr(handle, key, value)
            return handle

        cases = {
            "path": (variant(name="../../etc/passwd"), "is not a segment of this pipeline"),
            "other pipeline": (foreign.handle(), "is not a segment of this pipeline"),
            "stale": (variant(name=f"{frames.prefix}1-1-1-1"), "does not exist (stale handle"),
            "token": (variant(token=secrets.token_bytes(16)), "does not match the handle"),
            "short token": (variant(token=b"x"), "token has 1 bytes"),
            "size": (variant(size=good.size + 1), "the handle says"),
            "huge": (variant(size=1 << 62), "is outside"),
            "symlink": (variant(name=link), "cannot be opened"),
        }
        for label, (handle, message) in cases.items():
            code, details = _status(lambda h=handle: stub.Process(_shm_request(h), timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, label
            assert message in details and "step 1 (identity)" in details, (label, details)
        # a handle whose size disagrees with the image header
        code, details = _status(lambda: stub.Process(_shm_request(good, 4, 4, 3), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs" in details
        both = _shm_request(good)
        both.image.data = b"\0" * 192
        code, details = _status(lambda: stub.Process(both, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "send one of them" in details
        elsewhere = variant(domain="another-host:1:2")
        code, details = _status(lambda: stub.Process(_shm_request(elsewhere), timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "domain" in details
        # still serving, and the valid handle still works
        segment.pixels[...] = 7
        resp = stub.Process(_shm_request(good), timeout=10)
        assert set(resp.image.data) == {7}
    finally:
        os.unlink(os.path.join(DEFAULT_DIR, link))
        segment.close()
        foreign.close()
        other.close()


def test_open_checks_owner_regular_file_and_header_without_a_server(tmp_path: Path) -> None:
    store = FrameStore(str(tmp_path), "p9", max_bytes=1 << 20)
    segment = store.create((2, 3, 1))
    segment.pixels[...] = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    mapped = store.open(segment.handle())
    assert bytes(mapped.data) == bytes(range(6))
    mapped.close()
    path = tmp_path / segment.name
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF  # a damaged header
    path.write_bytes(bytes(raw))
    with pytest.raises(BadHandle, match="does not match"):
        store.open(segment.handle())
    fifo = f"{store.prefix}1-1-1-5"
    os.mkfifo(tmp_path / fifo)
    handle = step_pb2.SharedFrame(name=fifo, size=6, token=b"0" * 16, domain=store.domain)
    with pytest.raises(BadHandle):
        store.open(handle)
    with pytest.raises(NotShared):
        store.open(step_pb2.SharedFrame(name=segment.name, size=6, domain="x"))
    segment.close()
    store.close()
    assert not path.exists()
    assert (tmp_path / fifo).stat().st_size == 0 and HEADER_SIZE == 64


def test_a_cached_mapping_evicted_by_another_request_mid_open_stays_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under load the console saw INTERNAL "mmap closed or invalid": another request evicted
    # (and unmapped) the cached mapping between this request's cache lookup and its read.
    store = FrameStore(str(tmp_path), "p8", max_bytes=1 << 20)
    segment = store.create((2, 3, 1))
    segment.pixels[...] = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    store.open(segment.handle()).close()  # the mapping is cached now
    real = shm.HEADER

    class EvictEverythingFirst:
        def unpack_from(self, buffer: Any) -> tuple[Any, ...]:
            monkeypatch.setattr(shm, "MAPPING_CACHE", 0)
            store._cache_mapping(("another-request", False), 0, mmap.mmap(-1, 4096))
            return real.unpack_from(buffer)

    monkeypatch.setattr(shm, "HEADER", EvictEverythingFirst())
    mapped = store.open(segment.handle())
    monkeypatch.setattr(shm, "HEADER", real)
    assert bytes(mapped.data) == bytes(range(6))
    mapped.close()
    segment.close()
    store.close()


def test_sweep_removes_segments_of_dead_processes_only(tmp_path: Path) -> None:
    store = FrameStore(str(tmp_path), "p9", max_bytes=1 << 20)
    mine = store.create((1, 1, 1))
    ns = os.stat("/proc/self/ns/pid").st_ino
    dead = f"{store.prefix}{ns}-999999999-1-1"  # no such pid
    reused = f"{store.prefix}{ns}-{os.getpid()}-1-2"  # our pid, another start time
    elsewhere = f"{store.prefix}{ns + 1}-999999999-1-3"  # another pid namespace: not ours
    for name in (dead, reused, elsewhere):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(store.sweep()) == sorted([dead, reused])
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, elsewhere])
    mine.close()
    store.close()


# -- real processes killed mid-request --------------------------------------------------------------

SLOW_CHAIN = [{"id": 1, "type": "gaussian_blur", "params": {"sigma": 1.0}, "next_step": 2},
              {"id": 2, "type": "deblur", "params": {"iterations": 30}, "next_step": 3},
              {"id": 3, "type": "deblur", "params": {"iterations": 30}}]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 2, 3])
def test_nothing_is_left_in_dev_shm_after_a_step_is_sigkilled_mid_request(
        tmp_path: Path, victim: int) -> None:
    pipeline_id = f"shmkill-{secrets.token_hex(4)}"
    prefix = f"stepchain-{pipeline_id}-"
    pipe = ProcessPipeline(tmp_path, SLOW_CHAIN, pipeline_id=pipeline_id)
    try:
        pipe.wait_serving()
        stub = pipe.stub(1)
        img = noisy_image(400, 400)
        stub.Process(raw_request(img), timeout=60)  # learn each other's domain
        seen: list[str] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                stub.Process(raw_request(img), timeout=60)
            except grpc.RpcError as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 2:  # both hops are in flight
            seen = _segments(prefix)
            time.sleep(0.005)
        assert len(seen) >= 1, "the request never went through shared memory"
        pid = pipe.procs[victim].proc.pid
        pipe.procs[victim].signal(signal.SIGKILL)
        caller.join(60)

        def of_victim() -> list[str]:
            return [n for n in _segments(prefix) if n.split("-")[-3] == str(pid)]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and of_victim():
            time.sleep(0.1)
        assert of_victim() == []  # swept by the surviving steps
        if victim != 1:
            assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        for step_id, proc in pipe.procs.items():  # the others stop: their pools go too
            if step_id != victim:
                proc.signal(signal.SIGTERM)
                proc.proc.wait(30)
        assert _segments(prefix) == []
    finally:
        pipe.stop()
        for name in _segments(prefix):  # never leave anything behind, even when failing
            os.unlink(os.path.join(DEFAULT_DIR, name))


def test_a_full_frame_directory_means_bytes_not_a_failed_request(
        pipe: InProcessPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [{"id": 1, "type": "gaussian_blur", "next_step": 2}, {"id": 2, "type": "edges"}]
    pipe.add(1, steps)
    pipe.add(2, steps)
    frames = pipe.servers[1].servicer.frames
    assert frames is not None

    def full(shape: tuple[int, int, int]) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frames, "create", full)
    img = noisy_image(30, 30)
    for _ in range(2):  # the second request would use shared memory
        resp = pipe.stub(1).Process(raw_request(img), timeout=20)
        np.testing.assert_array_equal(codec.decode_image(resp.image),
                                      native.edges(native.gaussian_blur(img)))

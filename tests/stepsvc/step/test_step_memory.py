"""The step's memory budget with a real `stepchain step serve` process: hostile images that are
small on the wire and huge decoded are refused from their header, memory stays bounded."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from step_fixtures import ProcessPipeline, noisy_image, raw_request
from stepchain.v1 import step_pb2

from stepsvc.frames import codec
from stepsvc.step.memory_budget import (
    MIB,
    MemoryBudget,
    MemoryExhausted,
    cgroup_memory_limit,
    default_memory_mb,
    request_bytes,
)

IDENTITY = [{"id": 0, "type": "identity"}]
SIDE = 6000  # 36 MP, under the default --max-pixels (40 MP)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 6000x6000 RGBA PNG of about 140 KB (flat colour with a few lines)."""
    img = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    img[..., 3] = 255
    img[::500, :, 0] = 200
    buf = io.BytesIO()
    Image.fromarray(img, "RGBA").save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture
def identity_step(tmp_path: Path) -> Iterator[ProcessPipeline]:
    pipe = ProcessPipeline(tmp_path, IDENTITY)
    try:
        pipe.wait_serving()
        yield pipe
    finally:
        pipe.stop()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.parametrize("output", [codec.RAW, codec.PNG], ids=["raw-answer", "png-answer"])
def test_eight_concurrent_36_megapixel_pngs_stay_under_1_gib_and_all_are_answered(
        identity_step: ProcessPipeline, big_png: bytes, output: int) -> None:
    assert len(big_png) < 1_000_000
    request = step_pb2.ProcessRequest(output_encoding=output)  # type: ignore[arg-type]
    request.image.encoding = codec.PNG
    request.image.data = big_png
    stub = identity_step.stub(0)
    outcomes: list[tuple[grpc.StatusCode, str]] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            stub.Process(request, timeout=60)
            result = (grpc.StatusCode.OK, "")
        except grpc.RpcError as err:
            result = (err.code(), err.details() or "")
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == 8, "a call hung"
    for code, message in outcomes:
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), message
        if code != grpc.StatusCode.OK:
            assert message.startswith("step 0 (identity)"), message
    pid = identity_step.procs[0].proc.pid
    assert peak_rss_bytes(pid) < 1024 * MIB
    # Still serving.
    ok = stub.Process(raw_request(noisy_image()), timeout=30)
    assert ok.image.width == 64


@pytest.mark.slow
def test_raw_answer_that_no_message_can_carry_is_refused_from_the_header(
        identity_step: ProcessPipeline, big_png: bytes) -> None:
    request = step_pb2.ProcessRequest()
    request.image.encoding = codec.PNG
    request.image.data = big_png
    with pytest.raises(grpc.RpcError) as info:
        identity_step.stub(0).Process(request, timeout=30)
    err: grpc.RpcError = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "6000x6000x4 (RAW)" in (err.details() or "")
    assert "--max-message-mb" in (err.details() or "")
    # Refused before decoding: the step never held the 144 MB image.
    assert peak_rss_bytes(identity_step.procs[0].proc.pid) < 400 * MIB


def test_a_request_larger_than_the_whole_budget_is_refused_at_once_naming_the_flag() -> None:
    budget = MemoryBudget(100 * MIB)
    with pytest.raises(MemoryExhausted, match="--max-memory-mb"):
        budget.reserve(101 * MIB, timeout=10)
    assert budget.used == 0


def test_a_request_waits_for_memory_running_requests_free_and_gives_up_at_its_deadline() -> None:
    budget = MemoryBudget(100 * MIB)
    budget.reserve(80 * MIB, timeout=None)
    with pytest.raises(MemoryExhausted, match="running request"):
        budget.reserve(40 * MIB, timeout=0.05)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.reserve(40 * MIB, timeout=10), got.set()))
    waiter.start()
    budget.release(80 * MIB)
    waiter.join(10)
    assert got.is_set() and budget.used == 40 * MIB


def test_footprint_counts_decoding_output_scratch_and_answer_from_the_header() -> None:
    need = request_bytes(wire=1000, width=100, height=10, channels=4, encoded=True,
                         out_shape=(10, 100, 1), kernel="gaussian_blur", answers_encoded=True,
                         forwards=False)
    # wire + 2x decoded + output + 4x scratch + encoded answer (2x output)
    assert need == 1000 + 2 * 4000 + 1000 + 4 * 4000 + 2 * 1000


def test_budget_defaults_to_three_quarters_of_the_container_limit_else_512_mib() -> None:
    assert default_memory_mb(1024 * MIB) == 768
    if cgroup_memory_limit() is None:
        assert default_memory_mb() == 512

"""Threads, schedules, passes and concurrent calls never change a kernel's result."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from native_fixtures import photo, rgba, small_photo

import native
from native import _native  # type: ignore[attr-defined]

#: every schedule, with and without a chunk in rows (1 row, uneven and larger than a block)
SCHEDULES = ("static", "dynamic", "guided", "static,1", "dynamic,16", "guided,7", "dynamic,500")
THREADS = (1, 2, 4)

CALLS: dict[str, dict[str, Any]] = {
    "identity": {},
    "grayscale": {},
    "gaussian_blur": {"sigma": 3.0},
    "sharpen": {"amount": 2.0, "sigma": 1.5},
    "edges": {},
    "brightness": {"factor": 1.4, "contrast": 1.2},
    "resize": {"width": 173, "height": 121, "method": "bicubic"},
    "deblur": {"sigma": 1.2, "iterations": 4},
    "classify": {},
}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # big enough that every kernel splits it into several ~64K-sample row chunks (smaller images
    # run on fewer threads on purpose), odd height so the chunks split unevenly between threads
    return np.ascontiguousarray(photo("coffee")[:397])


@pytest.mark.parametrize("kernel", sorted(CALLS))
def test_results_are_identical_for_every_thread_count_and_schedule(kernel: str,
                                                                   image: np.ndarray) -> None:
    want = native.run(kernel, image, threads=1, schedule="static", **CALLS[kernel])
    for threads in THREADS:
        for schedule in SCHEDULES:
            got = native.run(kernel, image, threads=threads, schedule=schedule, **CALLS[kernel])
            if kernel == "classify":
                # exact equality: per-row sums are added in row order, whoever computed them
                assert got == want, (threads, schedule)
            else:
                assert np.array_equal(got, want), (threads, schedule)


def test_more_threads_than_rows_gives_the_same_result() -> None:
    # 3 rows: far fewer row chunks than the 16 threads asked for
    img = rgba(small_photo("astronaut", 40))[:3]
    for kernel, params in CALLS.items():
        one = native.run(kernel, img, threads=1, **params)
        many = native.run(kernel, img, threads=16, schedule="dynamic", **params)
        if kernel == "classify":
            assert one == many
        else:
            assert np.array_equal(one, many), kernel


@pytest.mark.parametrize("kernel", sorted(CALLS))
def test_passes_repeat_the_kernel_without_changing_its_output(kernel: str,
                                                              image: np.ndarray) -> None:
    once = native.run(kernel, image, passes=1, threads=2, **CALLS[kernel])
    thrice = native.run(kernel, image, passes=3, threads=2, **CALLS[kernel])
    if kernel == "classify":
        assert once == thrice
    else:
        assert np.array_equal(once, thrice)


def test_concurrent_calls_with_different_thread_counts_equal_serial_calls(image: np.ndarray) -> None:
    jobs = [(kernel, threads, schedule)
            for kernel in sorted(CALLS) for threads in (1, 2, 3) for schedule in SCHEDULES]
    serial = {job: native.run(job[0], image, threads=job[1], schedule=job[2], **CALLS[job[0]])
              for job in jobs}

    def call(job: tuple[str, int, str]) -> Any:
        kernel, threads, schedule = job
        return native.run(kernel, image, threads=threads, schedule=schedule, **CALLS[kernel])

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(call, jobs * 2))
    for job, got in zip(jobs * 2, concurrent, strict=True):
        want = serial[job]
        if job[0] == "classify":
            assert got == want, job
        else:
            assert np.array_equal(got, want), job


def test_two_threaded_blurs_in_parallel_python_threads_are_both_correct() -> None:
    a = np.ascontiguousarray(small_photo("astronaut", 256))
    b = np.ascontiguousarray(small_photo("chelsea", 256))
    want = [native.gaussian_blur(x, sigma=3.0, threads=2) for x in (a, b)]
    results: list[np.ndarray] = [np.empty(0), np.empty(0)]
    barrier = threading.Barrier(2)

    def work(i: int, img: np.ndarray) -> None:
        barrier.wait()
        results[i] = native.gaussian_blur(img, sigma=3.0, threads=2, passes=5)

    threads = [threading.Thread(target=work, args=(i, x)) for i, x in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results[0], want[0])
    assert np.array_equal(results[1], want[1])


def test_the_gil_is_released_while_a_kernel_computes() -> None:
    """Python code in the calling process keeps running during a long native call.

    With the GIL held, the main thread could not run a single loop iteration until the kernel
    returned (the worker would be dead by then); with it released it runs many."""
    img = np.ascontiguousarray(small_photo("astronaut", 512))
    started = threading.Event()
    out: list[np.ndarray] = []

    def work() -> None:
        started.set()
        out.append(native.gaussian_blur(img, sigma=3.0, threads=1, passes=100))

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    iterations_while_running = 0
    while worker.is_alive():
        iterations_while_running += 1
        worker.join(timeout=0.001)
    assert iterations_while_running >= 20
    assert np.array_equal(out[0], native.gaussian_blur(img, sigma=3.0, threads=1))


def test_raw_binding_rejects_inconsistent_buffers_instead_of_crashing() -> None:
    src = np.zeros((4, 5, 3), np.uint8)
    dst = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="source buffer has 60 bytes, shape needs 120"):
        _native.identity(src, dst, 8, 5, 3, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="destination buffer has 60 bytes, expected 20"):
        _native.grayscale(src, dst, 4, 5, 3, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="bad shape"):
        _native.identity(src, dst, 4, 5, 2, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="threads and passes must be >= 1"):
        _native.identity(src, dst, 4, 5, 3, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="gaussian_blur rejected its arguments"):
        _native.gaussian_blur(src, dst, 4, 5, 3, 1, 0, 0, 1, 1.0, 301)
    with pytest.raises(ValueError, match="bad resize target"):
        _native.resize(src, dst, 4, 5, 3, 1, 0, 0, 1, 0, 5, 0)
    with pytest.raises(ValueError, match="chunk >= 0"):
        _native.identity(src, dst, 4, 5, 3, 1, 1, -1, 1)


def test_a_chunk_can_be_given_in_the_schedule_or_as_its_own_parameter(image: np.ndarray) -> None:
    want = native.gaussian_blur(image, sigma=2.0, threads=1)
    assert native.validate_params("blur", {"schedule": "dynamic,16"})["chunk"] == 16
    assert native.validate_params("blur", {"schedule": " guided , 4 "})["schedule"] == "guided"
    assert "chunk" not in native.validate_params("blur", {"schedule": "dynamic"})
    for params in ({"schedule": "dynamic,16"}, {"schedule": "static", "chunk": 3},
                   {"schedule": "guided,2", "chunk": 2}):
        assert np.array_equal(native.gaussian_blur(image, sigma=2.0, threads=2, **params), want)


@pytest.mark.parametrize(("params", "message"), [
    ({"schedule": "dynamic,0"}, "blur.schedule chunk must be an integer 1..65536"),
    ({"schedule": "dynamic,-4"}, "blur.schedule chunk must be an integer 1..65536"),
    ({"schedule": "dynamic,x"}, "blur.schedule chunk must be an integer 1..65536"),
    ({"schedule": "dynamic,99999999"}, "blur.schedule chunk must be an integer 1..65536"),
    ({"schedule": "fast,4"}, "blur.schedule must be one of static, dynamic, guided"),
    ({"chunk": 0}, "gaussian_blur.chunk must be >= 1, got 0"),
    ({"chunk": 2.5}, "blur.chunk must be an integer"),
    ({"schedule": "dynamic,8", "chunk": 16}, "gaussian_blur.schedule gives chunk 8 but gaussian_blur.chunk is 16"),
])
def test_a_bad_chunk_is_rejected_with_a_message_naming_it(params: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        native.gaussian_blur(small_photo("astronaut", 16), **params)


@pytest.mark.parametrize(("env", "want"), [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                           ({"GOMP_SPINCOUNT": "1000"}, None)])
def test_idle_openmp_threads_sleep_unless_the_user_chose_a_wait_policy(
        env: dict[str, str], want: str | None) -> None:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, native; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == str(want)

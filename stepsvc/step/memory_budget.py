"""A step's memory budget: a request is admitted only when the bytes it will hold fit.

The pixel limit alone does not bound memory: eight concurrent 36-megapixel PNGs of 140 KB each
pass it, and each decodes to 144 MB before anything else happens. So every request's footprint
is worked out from its header before a pixel is decoded (:func:`request_bytes`: the encoded
input, the decoded image, the kernel's output and its scratch, the encoded answer) and reserved
here; what does not fit waits for memory as long as its deadline allows, and what could never
fit is refused at once. The budget defaults to three quarters of the container's memory limit
(cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) and to DEFAULT_MAX_MEMORY_MB where
there is none; ``--max-memory-mb`` sets it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

MIB = 1024 * 1024
#: Budget without a container memory limit (`--max-memory-mb` default): with the process's own
#: ~150 MiB, a step stays under 1 GiB.
DEFAULT_MAX_MEMORY_MB = 512
#: Share of a container's memory limit a step budgets for requests; the rest is the process
#: itself (interpreter, gRPC, NumPy, allocator slack).
CGROUP_SHARE = 0.75
#: Limits at or above this are "no limit" (cgroup v1 reports ~2^63 for unlimited).
_UNLIMITED = 1 << 60
#: Working memory a kernel needs beyond its input and output, per byte of input image
#: (float intermediates: the separable blur's row buffer, Richardson-Lucy's estimate images).
KERNEL_SCRATCH = {"deblur": 16.0, "gaussian_blur": 4.0, "sharpen": 4.0, "edges": 4.0,
                  "classify": 4.0}


class MemoryExhausted(Exception):
    """The request's bytes do not fit the budget (RESOURCE_EXHAUSTED)."""


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's container in bytes; None when there is none."""
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    try:  # cgroup v2 path of this process (nested cgroups inside a container)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, _, own = line.partition(":")[2].partition(":")
            if hierarchy == "":
                candidates.insert(0, root / own.lstrip("/") / "memory.max")
            elif hierarchy == "memory":
                candidates.insert(0, root / "memory" / own.lstrip("/") /
                                  "memory.limit_in_bytes")
    except OSError:
        pass
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _UNLIMITED else value
    return None


def default_memory_mb(limit_bytes: int | None = None) -> int:
    """The budget without `--max-memory-mb`: CGROUP_SHARE of the container's limit, else
    DEFAULT_MAX_MEMORY_MB."""
    limit = cgroup_memory_limit() if limit_bytes is None else limit_bytes
    if limit is None:
        return DEFAULT_MAX_MEMORY_MB
    return max(1, int(limit * CGROUP_SHARE) // MIB)


def request_bytes(*, wire: int, width: int, height: int, channels: int, encoded: bool,
                  out_shape: tuple[int, int, int], kernel: str, answers_encoded: bool,
                  forwards: bool) -> int:
    """Bytes a request will hold at its peak, from its header alone.

    `wire`: the received message; decoding PNG/JPEG holds the decoder's image and the array
    (2x the pixels); the kernel's output (written into the forward request when there is a next
    step) and its scratch; the last step's answer (a copy of the output, or the encoded file,
    at most about the same size).
    """
    pixels = width * height * channels
    decoded = 2 * pixels if encoded else 0
    out = out_shape[0] * out_shape[1] * out_shape[2]
    scratch = int(KERNEL_SCRATCH.get(kernel, 0.0) * pixels)
    answer = 0 if forwards else out * (2 if answers_encoded else 1)
    return wire + decoded + out + scratch + answer


class MemoryBudget:
    """Bytes reserved by running requests, at most `limit` in all."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"memory budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self._used = 0
        self._holders = 0
        self._freed = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    def check(self, need: int) -> None:
        """Raises MemoryExhausted at once when `need` could never fit."""
        if need > self.limit:
            raise MemoryExhausted(
                f"the request needs about {_mib(need)} of memory (decoded input, output and "
                f"working buffers, from its header); this step's whole budget is "
                f"{_mib(self.limit)} (--max-memory-mb); send a smaller image or give the step "
                "more memory")

    def reserve(self, need: int, timeout: float | None) -> None:
        """Reserves `need` bytes, waiting at most `timeout` s for running requests to free them.

        Raises MemoryExhausted when `need` exceeds the budget (at once) or does not fit in time.
        """
        self.check(need)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._freed:
            while self._used + need > self.limit:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise MemoryExhausted(
                        f"the request needs about {_mib(need)} of memory and {self._holders} "
                        f"running request(s) hold {_mib(self._used)} of this step's "
                        f"{_mib(self.limit)} budget (--max-memory-mb) until its deadline; "
                        "retry later or add replicas")
                self._freed.wait(left)
            self._used += need
            self._holders += 1

    def release(self, need: int) -> None:
        """Gives back what reserve(need) took."""
        with self._freed:
            self._used -= need
            self._holders -= 1
            self._freed.notify_all()


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"

"""A latency histogram with sub-millisecond resolution, bounded memory, and exact mean.

Locust keeps response times in whole milliseconds, so a 0.3 ms kernel reads as 0 and a p95 as a
staircase. ``LatencyHistogram`` keeps every sample in a bucket of 1 µs below 1 ms and of three
significant digits above (at most 0.5 % off), so percentiles keep sub-millisecond precision
while the number of buckets stays bounded (about 900 per decade) however long a test runs. The
sum is kept exactly, so the mean is exact.

Histograms merge (a Locust master adds up its workers') and travel as plain lists
(``to_wire``/``from_wire``) inside Locust's msgpack reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Microseconds kept exactly below this; three significant digits from here on.
_EXACT_BELOW_US = 1000


def bucket_us(ms: float) -> int:
    """The bucket (in whole microseconds) that a sample of ``ms`` milliseconds falls in."""
    us = round(ms * 1000.0) if ms > 0 and math.isfinite(ms) else 0
    if us < _EXACT_BELOW_US:
        return us
    scale = 10 ** (len(str(us)) - 3)
    return round(us / scale) * scale


@dataclass(frozen=True)
class Summary:
    """Count, mean and percentiles of one histogram, in milliseconds (``None``: no samples)."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class LatencyHistogram:
    """Samples in milliseconds; see the module docstring for the resolution."""

    __slots__ = ("_buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.sum_ms = 0.0

    def add(self, ms: float, times: int = 1) -> None:
        """Records ``times`` samples of ``ms`` milliseconds (negative or NaN counts as 0)."""
        key = bucket_us(ms)
        self._buckets[key] = self._buckets.get(key, 0) + times
        self.count += times
        self.sum_ms += max(0.0, ms) * times if math.isfinite(ms) else 0.0

    def merge(self, other: LatencyHistogram) -> None:
        """Adds every sample of ``other`` to this histogram."""
        for key, count in other._buckets.items():
            self._buckets[key] = self._buckets.get(key, 0) + count
        self.count += other.count
        self.sum_ms += other.sum_ms

    @property
    def mean_ms(self) -> float | None:
        return self.sum_ms / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1) in milliseconds; ``None`` when empty."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets (``qs`` in any order)."""
        if not self.count:
            return [None for _ in qs]
        ranks = sorted((max(1, math.ceil(q * self.count)), i) for i, q in enumerate(qs))
        found: list[float | None] = [None for _ in qs]
        seen = 0
        pending = iter(ranks)
        rank, index = next(pending)
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            while seen >= rank:
                found[index] = key / 1000.0
                nxt = next(pending, None)
                if nxt is None:
                    return found
                rank, index = nxt
        return found

    def summary(self) -> Summary:
        p50, p95, p99 = self.percentiles((0.50, 0.95, 0.99))
        return Summary(count=self.count, mean_ms=self.mean_ms, p50_ms=p50, p95_ms=p95,
                       p99_ms=p99)

    def to_wire(self) -> list[object]:
        """``[sum_ms, [[bucket_us, count], ...]]``: msgpack- and JSON-safe."""
        return [self.sum_ms, [[key, count] for key, count in self._buckets.items()]]

    @classmethod
    def from_wire(cls, wire: Sequence[object]) -> LatencyHistogram:
        """The histogram ``to_wire`` described; ``ValueError`` on anything else."""
        try:
            sum_ms, pairs = wire
            histogram = cls()
            for key, count in pairs:  # type: ignore[attr-defined]
                key, count = int(key), int(count)
                if key < 0 or count < 0:
                    raise ValueError("negative bucket or count")
                histogram._buckets[key] = histogram._buckets.get(key, 0) + count
                histogram.count += count
            histogram.sum_ms = float(sum_ms)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a latency histogram: {exc}") from None
        return histogram

    @classmethod
    def of(cls, samples: Iterable[float]) -> LatencyHistogram:
        """A histogram of ``samples`` (milliseconds)."""
        histogram = cls()
        for ms in samples:
            histogram.add(ms)
        return histogram

"""Histograms of durations, cheap enough to record one per message.

A host keeps one :class:`Histogram` per metric its entities observe (for
example ``telemetry_lag_s``: device timestamp to value applied). Buckets are
fixed and shared, so snapshots from several hosts add up and two snapshots of
one host subtract into the histogram of the window between them::

    h = Histogram()
    for lag in (0.001, 0.002, 0.2):
        h.observe(lag)
    window = Histogram.from_dict(h.to_dict())
    assert window.count == 3 and window.quantile(0.5) <= 0.0025
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["BOUNDS_S", "Histogram"]

#: Upper bounds in seconds: 0.1 ms to ~100 s, 10 per decade (about 26 % apart).
BOUNDS_S: Final[tuple[float, ...]] = tuple(10 ** (k / 10) / 10_000 for k in range(61))


class Histogram:
    """Counts of values per bucket (upper bounds :data:`BOUNDS_S`, then +inf)."""

    __slots__ = ("count", "counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, value: float) -> None:
        """Record one value (negative values, from clock skew, count as 0)."""
        if not math.isfinite(value):
            return
        value = max(0.0, value)
        self.counts[bisect.bisect_left(BOUNDS_S, value)] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the ``q`` quantile (0..1), capped at max."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} outside 0..1")
        if self.count == 0:
            raise ValueError("quantile of an empty histogram")
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                bound = BOUNDS_S[i] if i < len(BOUNDS_S) else self.max
                return min(bound, self.max)
        return self.max

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one."""
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def minus(self, earlier: Histogram) -> Histogram:
        """The values recorded since ``earlier`` (a snapshot of this histogram).

        ``max`` cannot be subtracted: the window's max is this histogram's max
        when it grew since ``earlier``, else the upper bound of the window's top bucket.
        """
        out = Histogram()
        out.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        if any(n < 0 for n in out.counts):
            raise ValueError("the earlier snapshot is not of this histogram")
        out.count = self.count - earlier.count
        out.sum = self.sum - earlier.sum
        if self.max > earlier.max:
            out.max = self.max
        else:
            top = max((i for i, n in enumerate(out.counts) if n), default=-1)
            out.max = min(BOUNDS_S[top], self.max) if 0 <= top < len(BOUNDS_S) else self.max
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "count": self.count, "sum": self.sum,
                "max": self.max}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls()
        counts: Sequence[int] = d.get("counts") or ()
        if len(counts) != len(h.counts):
            raise ValueError(f"a histogram has {len(h.counts)} buckets, not {len(counts)}")
        h.counts = [int(n) for n in counts]
        h.count = int(d.get("count", sum(h.counts)))
        h.sum = float(d.get("sum", 0.0))
        h.max = float(d.get("max", 0.0))
        return h

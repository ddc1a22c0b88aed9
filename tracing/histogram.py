"""A fixed log-scale latency histogram: mergeable by adding counts, percentiles within ~12%."""

from __future__ import annotations

import bisect

# Upper bounds in milliseconds: 0.1 ms to about 10 minutes, each 1.25 times the last.
BOUNDS_MS: list[float] = []
_bound = 0.1
while _bound < 600_000:
    BOUNDS_MS.append(round(_bound, 4))
    _bound *= 1.25
BUCKETS = len(BOUNDS_MS) + 1  # the last one holds anything slower


def empty() -> list[int]:
    return [0] * BUCKETS


def bucket_of(ms: float) -> int:
    return bisect.bisect_left(BOUNDS_MS, ms)


def add(histogram: list[int], ms: float, n: int = 1) -> None:
    histogram[bucket_of(ms)] += n


def merge(into: list[int], other: list[int]) -> list[int]:
    if len(into) < BUCKETS:
        into.extend([0] * (BUCKETS - len(into)))
    for i, n in enumerate(other[:BUCKETS]):
        into[i] += n
    return into


def percentile(histogram: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding the q-th quantile (0 < q <= 1); None when empty."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return BOUNDS_MS[i] if i < len(BOUNDS_MS) else BOUNDS_MS[-1]
    return BOUNDS_MS[-1]

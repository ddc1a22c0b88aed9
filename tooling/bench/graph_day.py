"""What the flow graph's 24-hour window costs to read: a day of aggregates for `edges` edges
(8,640 ten-second buckets each, and the hourly sums the collector keeps beside them), read the way
the page reads them (tracing.aggregates.window_totals), against reading every bucket of the day, as
the window did before the hourly sums (the baseline, in the same process). Both reads must give
the same graph."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction

from tracing import aggregates, histogram
from tracing.models import EdgeHour, EdgeStat

SOURCE = "queue:bench.day"


def _edge(i: int) -> tuple[str, str, str, str]:
    return ("", f"{SOURCE}{i}", f"handler:bench_day{i}", "")


def _fill(edges: int, first: datetime, until: datetime, progress: Callable[[str], None]) -> int:
    """Every bucket of the day for each edge, as the collector would have left them."""
    size = timedelta(seconds=settings.TRACING_EDGE_BUCKET_SECONDS)
    start = datetime.fromtimestamp(first.timestamp() - first.timestamp() % size.total_seconds(), UTC)
    if start < first:  # the window reads buckets starting inside it
        start += size
    rows = 0
    for i in range(edges):
        tallies = {}
        bucket = start
        while bucket < until:
            latencies = histogram.empty()
            histogram.add(latencies, 1.0 + (rows % 97))
            tallies[(bucket, *_edge(i))] = aggregates._Tally(count=1 + rows % 3, errors=rows % 50 == 0, histogram=latencies)
            bucket += size
            rows += 1
        with transaction.atomic():
            EdgeStat.objects.bulk_create(
                [EdgeStat(bucket=k[0], app=k[1], source=k[2], target=k[3], queue=k[4], count=t.count, errors=t.errors, histogram=t.histogram) for k, t in tallies.items()],
                batch_size=2_000,
            )
            hours = aggregates.by_hour(tallies)
            EdgeHour.objects.bulk_create([EdgeHour(bucket=k[0], app=k[1], source=k[2], target=k[3], queue=k[4], count=t.count, errors=t.errors, histogram=t.histogram) for k, t in hours.items()])
        progress(f"p12: filled {i + 1}/{edges} edges ({rows:,} buckets)")
    return rows


def _clean() -> None:
    for model in (EdgeStat, EdgeHour):
        model.objects.filter(source__startswith=SOURCE).delete()


def day_window_ms(edges: int, progress: Callable[[str], None], *, runs: int = 3) -> dict[str, Any]:
    until = datetime.now(UTC)
    first = until - timedelta(hours=24)
    _clean()
    try:
        rows = _fill(edges, first, until, progress)
        timings, baseline = [], []
        for run in range(runs):
            progress(f"p12: reading the day, run {run + 1}/{runs}")
            started = time.perf_counter()
            read = aggregates.window_totals(first, until)
            timings.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            every_bucket = aggregates._sum(first, until, None)
            baseline.append((time.perf_counter() - started) * 1000)
            assert read == every_bucket, "the hourly sums and the buckets give different graphs"
        assert all(sum(read[_edge(i)]["histogram"]) == rows // edges for i in range(edges)), "the day was not read whole"
    finally:
        _clean()
    window_ms, bucket_ms = statistics.median(timings), statistics.median(baseline)
    return {
        "p12_day_window_ms": round(window_ms, 1),
        "p12_every_bucket_ms": round(bucket_ms, 1),
        "p12_day_window_speedup": round(bucket_ms / window_ms, 1) if window_ms else None,
        "p12_edges": edges,
        "p12_buckets": rows,
    }

"""The flow graph's rolling aggregates, kept by the collector as spans arrive.

Each send span is an edge from its producer (a service, or the handler it ran in) to a queue;
each process span an edge from a queue to a handler. Per edge and time bucket: how many, how
many failed, how many ended in a dead letter, and a latency histogram. The console reads these
rows, never the span table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from tracing import histogram
from tracing.models import EdgeStat

PRODUCER, CONSUMER, ERROR = 3, 4, 2


@dataclasses.dataclass
class _Tally:
    count: int = 0
    errors: int = 0
    dead: int = 0
    histogram: list[int] = dataclasses.field(default_factory=histogram.empty)


def edge_of(span: dict[str, Any]) -> tuple[str, str] | None:
    attributes = span.get("a") or {}
    queue = attributes.get("messaging.destination.name")
    if not queue:
        return None
    if span.get("k") == PRODUCER:
        return str(attributes.get("flowscope.producer") or f"service:{span.get('sv') or 'unknown'}"), f"queue:{queue}"
    if span.get("k") == CONSUMER:
        consumer = attributes.get("flowscope.consumer") or attributes.get("messaging.consumer.group.name")
        return (f"queue:{queue}", f"handler:{consumer}") if consumer else None
    return None


def bucket_start(end_ns: int) -> datetime:
    size = settings.TRACING_EDGE_BUCKET_SECONDS
    seconds = end_ns // 1_000_000_000
    return datetime.fromtimestamp(seconds - seconds % size, UTC)


def tally(spans: Iterable[dict[str, Any]]) -> dict[tuple[datetime, str, str], _Tally]:
    tallies: dict[tuple[datetime, str, str], _Tally] = {}
    buckets: dict[int, datetime] = {}  # a batch spans a few seconds: one datetime per second
    for span in spans:
        edge = edge_of(span)
        if edge is None:
            continue
        second = span["en"] // 1_000_000_000
        bucket = buckets.get(second)
        if bucket is None:
            bucket = buckets[second] = bucket_start(span["en"])
        key = (bucket, *edge)
        item = tallies.get(key)
        if item is None:
            item = tallies[key] = _Tally()
        item.count += 1
        item.errors += span.get("sc") == ERROR
        item.dead += (span.get("a") or {}).get("flowscope.outcome") == "dead"
        histogram.add(item.histogram, max(0, span["en"] - span["st"]) / 1e6)
    return tallies


def apply(spans: Iterable[dict[str, Any]]) -> int:
    """Add these spans to the stored aggregates; call inside the transaction that stores them."""
    tallies = tally(spans)
    if not tallies:
        return 0
    existing = {
        (row.bucket, row.source, row.target): row
        for row in EdgeStat.objects.select_for_update().filter(bucket__in={k[0] for k in tallies}, source__in={k[1] for k in tallies}, target__in={k[2] for k in tallies})
    }
    updated, created = [], []
    for key, item in tallies.items():
        row = existing.get(key)
        if row is None:
            created.append(EdgeStat(bucket=key[0], source=key[1], target=key[2], count=item.count, errors=item.errors, dead=item.dead, histogram=item.histogram))
        else:
            row.count += item.count
            row.errors += item.errors
            row.dead += item.dead
            row.histogram = histogram.merge(list(row.histogram), item.histogram)
            updated.append(row)
    EdgeStat.objects.bulk_create(created)
    EdgeStat.objects.bulk_update(updated, ["count", "errors", "dead", "histogram"])
    return len(tallies)

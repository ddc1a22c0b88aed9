"""The flow graph's rolling aggregates, kept by the collector as spans arrive.

Each send span is an edge from its sender (a service, or the handler it ran in) to a queue.
Each process span is an edge to its handler: from the sender when the span names it (an attached
app's agent carries the sender through the message, so a chain, a group or a chord's callback is
drawn task to task, through its queue), else from the queue. Edges are kept per app
(`flowscope.app`; empty for Flowscope's own flows), so two apps' queues of one name stay apart.
Per edge and time bucket: how many, how many failed, how many ended in a dead letter, a latency
histogram and, where spans say it, a queue-wait histogram. The console reads these rows, never
the span table.

A hop joined by a span link (a requeue's send links to the trace its message died in) is an edge
of its own, kept apart from the message edges by its `queue` column, which names the link
(`link:requeue-of`) instead of a queue: from the handler the linked span's message reached (the
linked span's own handler, or the handler of a send's process spans) to the queue the linking
span sent into. The linked spans are read back from the span table, for linking spans only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q

from tracing import histogram
from tracing.bulk import datetime_adapter, insert_rows, upsert_rows
from tracing.models import EdgeCounts, EdgeHour, EdgeStat, Span

PRODUCER, CONSUMER, ERROR = 3, 4, 2
LINK = "link:"  # the queue column's prefix on an edge joined by a span link
LINKS_PER_QUERY = 200
HOUR = timedelta(hours=1)
FOLD_EVERY = 256  # histograms waiting to be summed per edge, in one zip


@dataclasses.dataclass
class _Tally:
    count: int = 0
    errors: int = 0
    dead: int = 0
    histogram: list[int] = dataclasses.field(default_factory=histogram.empty)
    waits: list[int] = dataclasses.field(default_factory=list)  # filled only when a span says its queue wait


Edge = tuple[str, str, str, str]  # app, source, target, and the queue a sender -> handler edge went through ("" otherwise)
Key = tuple[datetime, str, str, str, str]  # bucket, then the edge


def _text(value: Any) -> str:
    return value if type(value) is str else "" if value is None else str(value)


def edge_of(span: dict[str, Any]) -> Edge | None:
    """A plain tuple: one is made for every span the collector stores, and a named one showed in its time."""
    attributes = span.get("a") or {}
    queue = attributes.get("messaging.destination.name")
    if not queue:
        return None
    app = attributes.get("flowscope.app") or ""
    if type(app) is not str:  # any JSON value may come over OTLP; the rows' keys are strings
        app = str(app)
    app = app[:100]  # EdgeStat.app's length (the whole string itself when shorter: no copy)
    kind = span.get("k")
    if kind == PRODUCER:
        return app, _text(attributes.get("flowscope.producer")) or f"service:{span.get('sv') or 'unknown'}", f"queue:{queue}", ""
    if kind == CONSUMER:
        consumer = attributes.get("flowscope.consumer") or attributes.get("messaging.consumer.group.name")
        if not consumer:
            return None
        sender = _text(attributes.get("flowscope.producer"))
        if sender and app:  # an attached app's execution that names its sender: task to task
            return app, sender, f"handler:{consumer}", _text(queue)[:300]
        return app, f"queue:{queue}", f"handler:{consumer}", ""
    return None


def bucket_start(end_ns: int) -> datetime:
    size = settings.TRACING_EDGE_BUCKET_SECONDS
    seconds = end_ns // 1_000_000_000
    return datetime.fromtimestamp(seconds - seconds % size, UTC)


def tally(spans: Iterable[dict[str, Any]]) -> dict[Key, _Tally]:
    tallies: dict[Key, _Tally] = {}
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
        attributes = span.get("a") or {}
        item.count += 1
        item.errors += span.get("sc") == ERROR
        item.dead += attributes.get("flowscope.outcome") == "dead"
        histogram.add(item.histogram, max(0, span["en"] - span["st"]) / 1e6)
        wait = attributes.get("flowscope.queue_wait_ms")
        if type(wait) is float or type(wait) is int:  # a number, not a bool or text
            if not item.waits:
                item.waits = histogram.empty()
            histogram.add(item.waits, max(0.0, float(wait)))
    return tallies


def _linked_handlers(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(app, handler node) of each stored linked span: its own when it is a process span, else
    that of a process span under it (the send's delivery). Spans not stored are left out."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    ordered = sorted(pairs)
    for i in range(0, len(ordered), LINKS_PER_QUERY):
        match = Q()
        for trace_id, span_id in ordered[i : i + LINKS_PER_QUERY]:
            match |= Q(trace_id=trace_id, span_id=span_id) | Q(trace_id=trace_id, parent_span_id=span_id, kind=CONSUMER)
        for trace_id, span_id, parent, kind, attributes in Span.objects.filter(match).values_list("trace_id", "span_id", "parent_span_id", "kind", "attributes"):
            consumer = (attributes or {}).get("flowscope.consumer") if kind == CONSUMER else None
            if not consumer:
                continue
            app = _text((attributes or {}).get("flowscope.app"))[:100]
            if (trace_id, span_id) in pairs:
                found[(trace_id, span_id)] = (app, f"handler:{_text(consumer)}")
            elif (trace_id, parent) in pairs:
                found.setdefault((trace_id, parent), (app, f"handler:{_text(consumer)}"))
    return found


def tally_links(spans: Iterable[dict[str, Any]], tallies: dict[Key, _Tally]) -> None:
    """Add the hops joined by span links to `tallies`: a linking span that is an edge of the
    graph counts once on (the linked span's handler -> the queue it sent into), kept per link
    type. A link to a span of another app, or to one not stored, is not an edge."""
    linking = [(span, edge) for span in spans if span.get("l") and (edge := edge_of(span)) is not None]
    if not linking:
        return
    handlers = _linked_handlers({(link[0], link[1]) for span, _ in linking for link in span["l"]})
    for span, (app, _source, target, _queue) in linking:
        for trace_id, span_id, link_attributes in span["l"]:
            linked = handlers.get((trace_id, span_id))
            if linked is None or linked[0] != app:
                continue
            kind = _text((link_attributes or {}).get("flowscope.link")) or "link"
            key = (bucket_start(span["en"]), app, linked[1], target, (LINK + kind)[:300])
            item = tallies.get(key)
            if item is None:
                item = tallies[key] = _Tally()
            item.count += 1
            item.errors += span.get("sc") == ERROR
            histogram.add(item.histogram, max(0, span["en"] - span["st"]) / 1e6)


def apply(spans: Iterable[dict[str, Any]]) -> int:
    """Add these spans to the stored aggregates, per bucket and per hour; call inside the
    transaction that stores them (after they are stored: a span link may point into the same batch)."""
    spans = list(spans)
    tallies = tally(spans)
    tally_links(spans, tallies)
    if not tallies:
        return 0
    _add_to_rows(EdgeStat, tallies)
    _add_to_rows(EdgeHour, by_hour(tallies))
    return len(tallies)


def by_hour(tallies: dict[Key, _Tally]) -> dict[Key, _Tally]:
    """The same tallies keyed by the hour their bucket falls in."""
    hours: dict[Key, _Tally] = {}
    for (bucket, *edge), item in tallies.items():
        key = (bucket.replace(minute=0, second=0, microsecond=0), *edge)
        hour = hours.get(key)
        if hour is None:
            hours[key] = _Tally(item.count, item.errors, item.dead, list(item.histogram), list(item.waits))
            continue
        hour.count += item.count
        hour.errors += item.errors
        hour.dead += item.dead
        histogram.merge(hour.histogram, item.histogram)
        if item.waits:
            hour.waits = histogram.merge(hour.waits or histogram.empty(), item.waits)
    return hours


EDGE_KEY = ("bucket", "app", "source", "target", "queue")
EDGE_SUMS = ("count", "errors", "dead", "histogram", "waits")


def _add_to_rows(model: type[EdgeCounts], tallies: dict[Key, _Tally]) -> None:
    """Add the tallies to their rows: read (locked) once; the rows found written back in one
    INSERT ... ON CONFLICT DO UPDATE, the new ones inserted. Django's bulk_update built a CASE
    expression per field and row; the two of a batch (buckets and hours) were half the collector's
    time at the batch sizes a steady stream brings.

    A new row is a plain insert, never an upsert: another collector may insert the same edge's
    row after the read (nothing was there to lock), and overwriting its counts would lose them.
    The unique constraint refuses the second insert instead, the batch's transaction rolls back
    and the batch, unacknowledged, is stored again on the next round, adding to that row."""
    found = (
        model.objects.select_for_update()
        .filter(bucket__in={k[0] for k in tallies}, app__in={k[1] for k in tallies}, source__in={k[2] for k in tallies}, target__in={k[3] for k in tallies})
        .values_list(*EDGE_KEY, *EDGE_SUMS)
    )
    existing = {tuple(row[:5]): row[5:] for row in found}
    adapt, dumps = datetime_adapter(), json.dumps
    added, new = [], []
    for key, item in tallies.items():
        count, errors, dead, latencies, waits = item.count, item.errors, item.dead, item.histogram, item.waits
        stored = existing.get(key)
        if stored is not None:
            count, errors, dead = count + stored[0], errors + stored[1], dead + stored[2]
            latencies = histogram.merge(list(stored[3]), latencies)
            waits = histogram.merge(list(stored[4]), waits) if waits else stored[4]
        (new if stored is None else added).append((adapt(key[0]), *key[1:], count, errors, dead, dumps(latencies), dumps(waits)))
    upsert_rows(model, EDGE_KEY + EDGE_SUMS, added, conflict=EDGE_KEY, update=EDGE_SUMS)
    insert_rows(model._meta.db_table, tuple(model._meta.get_field(f).column for f in EDGE_KEY + EDGE_SUMS), new)


Totals = dict[tuple[str, str, str, str], dict[str, Any]]  # (app, source, target, queue) -> count, errors, dead, histogram, waits


def _full(counts: list[int]) -> list[int]:
    """A stored histogram as long as today's (a shorter one summed column-wise would cut the sum short)."""
    return counts if len(counts) >= histogram.BUCKETS else counts + [0] * (histogram.BUCKETS - len(counts))


def _sum(first: datetime, until: datetime, app: str | None, model: type[EdgeCounts] = EdgeStat) -> Totals:
    """The stored rows of [first, until) summed per edge. Histograms are summed column-wise a few
    hundred at a time (zip): a Python loop per row and bucket was most of the cost."""
    rows = model.objects.filter(bucket__gte=first, bucket__lt=until)
    if app is not None:
        rows = rows.filter(app=app)
    totals: Totals = {}
    waiting: dict[tuple[str, str, str, str], tuple[list[list[int]], list[list[int]]]] = {}

    def fold(key: tuple[str, str, str, str]) -> None:
        latencies, waits = waiting[key]
        edge = totals[key]
        if latencies:
            edge["histogram"] = [sum(column) for column in zip(edge["histogram"], *map(_full, latencies), strict=False)]
            latencies.clear()
        if waits:
            edge["waits"] = [sum(column) for column in zip(edge["waits"], *map(_full, waits), strict=False)]
            waits.clear()

    columns = ("app", "source", "target", "queue", "count", "errors", "dead", "histogram", "waits")
    for row_app, source, target, through, count, errors, dead, latencies, waits in rows.values_list(*columns).iterator(chunk_size=2000):
        key = (row_app, source, target, through)
        edge = totals.get(key)
        if edge is None:
            edge = totals[key] = {"count": 0, "errors": 0, "dead": 0, "histogram": histogram.empty(), "waits": histogram.empty()}
            waiting[key] = ([], [])
        edge["count"] += count
        edge["errors"] += errors
        edge["dead"] += dead
        pending = waiting[key]
        pending[0].append(latencies)
        if waits:
            pending[1].append(waits)
        if len(pending[0]) >= FOLD_EVERY:
            fold(key)
    for key in waiting:
        fold(key)
    return totals


def _add(into: Totals, other: Totals) -> None:
    for key, edge in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = {**edge, "histogram": list(edge["histogram"]), "waits": list(edge["waits"])}
            continue
        for name in ("count", "errors", "dead"):
            mine[name] += edge[name]
        histogram.merge(mine["histogram"], edge["histogram"])
        histogram.merge(mine["waits"], edge["waits"])


def window_totals(first: datetime, until: datetime, app: str | None = None) -> Totals:
    """The aggregates of [first, until) summed per edge (`app` as flow_graph takes it): the whole
    hours inside the window from the hourly rows, the parts of hours at its ends from the buckets."""
    start = first.replace(minute=0, second=0, microsecond=0)
    if start < first:
        start += HOUR
    end = until.replace(minute=0, second=0, microsecond=0)
    if start >= end:
        return _sum(first, until, app)
    totals = _sum(first, start, app)
    _add(totals, _sum(start, end, app, EdgeHour))
    _add(totals, _sum(end, until, app))
    return totals

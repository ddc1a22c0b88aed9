"""Per-trace summaries (TraceSummary), kept by the collector as spans arrive, for the trace search.

A trace's spans come in several batches, in any order, and a batch may come twice (a
redelivery after a crash, an OTLP client's retry). So:
1. the collector passes only the spans it has just stored (a span stored twice is passed once:
   the span_once constraint decides), inside the transaction that stores them;
2. each batch is folded per trace into a partial summary (counts and sums add, times take the
   min and max, tags are a union, the root is the parentless span that started first, else the
   earliest span seen);
3. the partials are merged into the stored rows, locked first so two collectors merging into
   one trace wait for each other rather than lose a count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db import connection, transaction

from tracing.bulk import datetime_adapter, insert_rows
from tracing.models import Span, TraceSummary

CONSUMER, ERROR = 4, 2
LOOKUP_CHUNK = 500  # trace ids a query names: within every database's limit on parameters
MAX_TAGS = 500  # a trace of many distinct span names keeps the first 500 tags: a bounded row
TAG_VALUE_LIMIT = 300
OWN_APP = ""  # spans without flowscope.app: Flowscope's own flows, tagged "app:"
COLUMNS = ("trace_id", "start_time", "end_time", "duration_us", "root_name", "root_start", "rooted", "spans", "errors", "wait_us", "work_us", "tags")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass
class Partial:
    start_us: int
    end_us: int
    root_name: str
    root_start_us: int
    rooted: bool
    spans: int = 0
    errors: int = 0
    wait_us: int = 0
    work_us: int = 0
    tags: dict[str, None] = dataclasses.field(default_factory=dict)  # ordered set

    def root_key(self) -> tuple[bool, int]:
        return (not self.rooted, self.root_start_us)

    def merge(self, other: Partial) -> None:
        self.start_us = min(self.start_us, other.start_us)
        self.end_us = max(self.end_us, other.end_us)
        if other.root_key() < self.root_key():
            self.root_name, self.root_start_us, self.rooted = other.root_name, other.root_start_us, other.rooted
        self.spans += other.spans
        self.errors += other.errors
        self.wait_us += other.wait_us
        self.work_us += other.work_us
        for tag in other.tags:
            if len(self.tags) >= MAX_TAGS:
                break
            self.tags.setdefault(tag)


def _tag(kind: str, value: Any) -> str:
    return f"{kind}:{str(value)[:TAG_VALUE_LIMIT]}"


def tags_of(span: dict[str, Any]) -> list[str]:
    """What a search can ask of a span, as tags."""
    a = span.get("a") or {}
    tags = [_tag("name", span.get("n") or ""), _tag("app", a.get("flowscope.app") or OWN_APP)]
    if span.get("sv"):
        tags.append(_tag("service", span["sv"]))
    if a.get("flowscope.message_type"):
        tags.append(_tag("type", a["flowscope.message_type"]))
    if a.get("messaging.destination.name"):
        tags.append(_tag("queue", a["messaging.destination.name"]))
    handler = a.get("flowscope.consumer") or a.get("messaging.consumer.group.name")
    if handler:
        tags.append(_tag("handler", handler))
    return tags


def partials(spans: Iterable[dict[str, Any]]) -> dict[str, Partial]:
    """Spans in the collector's form (t, s, p, n, st, en, sc, a, ...) folded per trace."""
    out: dict[str, Partial] = {}
    for s in spans:
        start, end = s["st"] // 1000, max(s["en"], s["st"]) // 1000
        one = Partial(start_us=start, end_us=end, root_name=str(s.get("n") or "")[:300], root_start_us=start, rooted=not s.get("p"), spans=1)
        one.errors = int(s.get("sc") == ERROR)
        if s.get("k") == CONSUMER:
            one.work_us = end - start
        wait = (s.get("a") or {}).get("flowscope.queue_wait_ms")
        if type(wait) is int or type(wait) is float:  # a number, not a bool or text
            one.wait_us = max(0, int(wait * 1000))
        one.tags = dict.fromkeys(tags_of(s))
        current = out.get(s["t"])
        if current is None:
            out[s["t"]] = one
        else:
            current.merge(one)
    return out


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _time(us: int, adapt: Callable[[datetime], Any]) -> Any:
    return adapt(_EPOCH + timedelta(microseconds=us))


def _stored(row: TraceSummary) -> Partial:
    return Partial(
        start_us=_us(row.start_time),
        end_us=_us(row.end_time),
        root_name=row.root_name,
        root_start_us=_us(row.root_start),
        rooted=row.rooted,
        spans=row.spans,
        errors=row.errors,
        wait_us=row.wait_us,
        work_us=row.work_us,
        tags=dict.fromkeys(row.tags),
    )


def rows_of(merged: dict[str, Partial]) -> list[tuple[Any, ...]]:
    """Summary rows in COLUMNS order, for a raw insert."""
    tags = list if connection.vendor == "postgresql" else lambda t: orjson.dumps(list(t)).decode()  # TagsField's column
    adapt = datetime_adapter()  # once: through Django's connection proxy each value took a third of the collector's time
    return [
        (
            trace_id,
            _time(p.start_us, adapt),
            _time(p.end_us, adapt),
            p.end_us - p.start_us,
            p.root_name,
            _time(p.root_start_us, adapt),
            p.rooted,
            p.spans,
            p.errors,
            p.wait_us,
            p.work_us,
            tags(p.tags),
        )
        for trace_id, p in sorted(merged.items())
    ]


def apply(spans: Iterable[dict[str, Any]]) -> int:
    """Merge newly stored spans into their traces' summaries; call inside the transaction that
    stores them, with each span once. Returns how many summaries it wrote."""
    merged = partials(spans)
    if not merged:
        return 0
    ids = sorted(merged)  # locked in one order, so two collectors cannot deadlock on a pair
    existing: dict[str, Partial] = {}
    for i in range(0, len(ids), LOOKUP_CHUNK):
        stored = TraceSummary.objects.select_for_update().filter(trace_id__in=ids[i : i + LOOKUP_CHUNK]).order_by("trace_id")
        existing.update((row.trace_id, _stored(row)) for row in stored)
    for trace_id, row in existing.items():
        row.merge(merged[trace_id])
        merged[trace_id] = row
    stale = list(existing)
    for i in range(0, len(stale), LOOKUP_CHUNK):
        # Rewritten whole rather than updated column by column: a raw delete and one bulk insert
        # cost far less than Django's bulk_update of a CASE per column and row.
        TraceSummary.objects.filter(trace_id__in=stale[i : i + LOOKUP_CHUNK])._raw_delete(TraceSummary.objects.db)
    insert_rows(TraceSummary._meta.db_table, COLUMNS, rows_of(merged))
    return len(merged)


def as_collected(span: Span) -> dict[str, Any]:
    """A stored span in the collector's form, to summarise spans already in the table."""
    start_ns = _us(span.start_time) * 1000
    return {
        "t": span.trace_id,
        "s": span.span_id,
        "p": span.parent_span_id,
        "n": span.name,
        "k": span.kind,
        "sv": span.service,
        "st": start_ns,
        "en": start_ns + span.duration_us * 1000,
        "sc": span.status_code,
        "a": span.attributes,
    }


def rebuild(trace_ids: Iterable[str] | None = None, *, batch: int = 2000) -> int:
    """Summaries made again from the stored spans: of these traces, or of every trace (spans
    stored before summaries were kept, or written other than through the collector)."""
    spans = Span.objects.all() if trace_ids is None else Span.objects.filter(trace_id__in=list(trace_ids))
    if trace_ids is None:
        TraceSummary.objects.all()._raw_delete(TraceSummary.objects.db)
    else:
        TraceSummary.objects.filter(trace_id__in=list(trace_ids))._raw_delete(TraceSummary.objects.db)
    written, chunk, current = 0, [], ""

    def apply_in_transaction(spans_of_whole_traces: list[dict[str, Any]]) -> int:
        with transaction.atomic():  # apply locks the summaries it updates, as in the collector's transaction
            return apply(spans_of_whole_traces)

    fields = ("trace_id", "span_id", "parent_span_id", "name", "kind", "service", "start_time", "duration_us", "status_code", "attributes")
    for span in spans.only(*fields).order_by("trace_id").iterator(chunk_size=batch):
        # A chunk ends only between traces, so no trace is written twice.
        if len(chunk) >= batch and span.trace_id != current:
            written += apply_in_transaction(chunk)
            chunk = []
        chunk.append(as_collected(span))
        current = span.trace_id
    return written + apply_in_transaction(chunk)

"""The trace search: traces by time, service, span name, message type, queue, handler, app,
status, duration and span attributes, newest (or longest) first, in keyset pages.

It reads the per-trace summaries (tracing.summaries), one row a trace, walking the index of
the chosen order; what a search filters on is in the summary's tags, so any mix of them is one
containment test (a GIN index on PostgreSQL). An attribute filter asks the spans of each
candidate trace (a GIN index on their attributes on PostgreSQL, a scan on SQLite)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from tracing.models import Span, TraceSummary

SORTS = ("start", "duration")
RARE_SPANS = 2000  # an attribute value on at most this many spans is looked up first (_few_traces)
STATUSES = ("", "error", "ok")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_KEY_US = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)  # a start or a duration


class BadSearch(ValueError):
    """A search the caller got wrong; `field` names the parameter."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def parse_attribute(text: str) -> tuple[str, str]:
    """`key=value` (the first `=` splits; the value may hold more)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadSearch("attr", f"{text!r} is not key=value (e.g. flowscope.attempt=2)")
    if '"' in key:
        raise BadSearch("attr", f"the key {key!r} holds a double quote, which no attribute key here does")
    return key, value


@dataclasses.dataclass(frozen=True)
class TraceQuery:
    since: datetime | None = None
    until: datetime | None = None
    service: str = ""
    span_name: str = ""
    message_type: str = ""
    queue: str = ""
    handler: str = ""
    app: str | None = None  # None: any; "": Flowscope's own flows; else that attached app
    status: str = ""  # "", "error" (a span failed) or "ok" (none did)
    min_duration_ms: float | None = None
    max_duration_ms: float | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    trace_ids: tuple[str, ...] | None = None  # only these (a lookup by message, conversation or saga)
    sort: str = "start"

    def check(self) -> TraceQuery:
        """Refuse what contradicts itself, naming the field."""
        if self.sort not in SORTS:
            raise BadSearch("sort", f"{self.sort!r} is not one of {', '.join(SORTS)}")
        if self.status not in STATUSES:
            raise BadSearch("status", f"{self.status!r} is not one of error, ok (or empty for any)")
        if self.since and self.until and self.since >= self.until:
            raise BadSearch("until", f"{self.until.isoformat()} is not after since ({self.since.isoformat()})")
        for name in ("min_duration_ms", "max_duration_ms"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1e12:
                raise BadSearch(name, f"{value} is not a duration between 0 and 1e12 ms")
        if self.min_duration_ms is not None and self.max_duration_ms is not None and self.min_duration_ms > self.max_duration_ms:
            raise BadSearch("max_duration_ms", f"{self.max_duration_ms} is below min_duration_ms ({self.min_duration_ms})")
        return self

    def tags(self) -> list[str]:
        named = (("service", self.service), ("name", self.span_name), ("type", self.message_type), ("queue", self.queue), ("handler", self.handler))
        return [f"{kind}:{value}" for kind, value in named if value] + ([f"app:{self.app}"] if self.app is not None else [])


@dataclasses.dataclass(frozen=True)
class Cursor:
    sort: str
    key: int  # start in µs since the epoch, or duration in µs
    trace_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.sort}|{self.key}|{self.trace_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            kind, key, trace_id = raw.split("|")
            cursor = cls(kind, int(key), trace_id)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise BadSearch("cursor", f"{text[:80]!r} is not a cursor this search gave out") from None
        if cursor.sort != sort or not TRACE_ID.match(cursor.trace_id) or not 0 <= cursor.key <= MAX_KEY_US:
            raise BadSearch("cursor", f"{text[:80]!r} is not a cursor of a search sorted by {sort}")
        return cursor


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _with_tags(rows: QuerySet[TraceSummary], tags: list[str]) -> QuerySet[TraceSummary]:
    if not tags:
        return rows
    table = connection.ops.quote_name(TraceSummary._meta.db_table)
    if connection.vendor == "postgresql":
        return rows.extra(where=[f"{table}.tags @> %s::text[]"], params=[tags])  # the GIN index when the tags are rare
    where = [f"EXISTS (SELECT 1 FROM json_each({table}.tags) WHERE json_each.value = %s)"] * len(tags)
    return rows.extra(where=where, params=tags)


def _typed(value: str) -> list[Any]:
    """The value as text, and as the number or boolean it spells: attributes keep their JSON
    types (flowscope.attempt is 2, not "2")."""
    candidates: list[Any] = [value]
    try:
        parsed = json.loads(value)
    except ValueError:
        return candidates
    # Not an overflowing float ("15276e346782", a hex id, reads as inf) nor NaN: no JSON value
    # spells them, and PostgreSQL refused the search whole with a 500.
    if isinstance(parsed, bool | int) or (isinstance(parsed, float) and math.isfinite(parsed)):
        candidates.append(parsed)
    return candidates


def _span_match(key: str, value: str) -> tuple[str, list[Any]]:
    """SQL on the span alias `s` true when its attribute `key` is `value` (as text, number or boolean)."""
    candidates = _typed(value)
    if connection.vendor == "postgresql":
        return " OR ".join(["s.attributes @> %s::jsonb"] * len(candidates)), [json.dumps({key: c}) for c in candidates]
    return f"json_extract(s.attributes, %s) IN ({', '.join(['%s'] * len(candidates))})", [f'$."{key}"', *[int(c) if isinstance(c, bool) else c for c in candidates]]


def _few_traces(match: str, params: list[Any]) -> set[str] | None:
    """The traces of the spans that match, if there are at most RARE_SPANS of them (the GIN
    index finds those at once); None when there are more. PostgreSQL keeps no statistics of
    what a jsonb column holds, so it cannot tell a rare value from a common one and would fetch
    every matching span of a common one: asked first, the answer chooses the plan."""
    spans = connection.ops.quote_name(Span._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT s.trace_id FROM {spans} s WHERE {match} LIMIT {RARE_SPANS + 1}", params)
        found = [row[0] for row in cursor.fetchall()]
    return set(found) if len(found) <= RARE_SPANS else None


def _with_attributes(rows: QuerySet[TraceSummary], attributes: tuple[tuple[str, str], ...]) -> QuerySet[TraceSummary]:
    summary = connection.ops.quote_name(TraceSummary._meta.db_table)
    spans = connection.ops.quote_name(Span._meta.db_table)
    for key, value in attributes:
        match, params = _span_match(key, value)
        if connection.vendor != "postgresql":
            rows = rows.extra(where=[f"EXISTS (SELECT 1 FROM {spans} s WHERE s.trace_id = {summary}.trace_id AND ({match}))"], params=params)
            continue
        few = _few_traces(match, params)
        if few is not None:
            rows = rows.filter(trace_id__in=few)
            continue
        # A common value: walk the traces in the chosen order and ask each one's spans (within
        # its time span, so only the day partitions it lies in). OFFSET 0 keeps PostgreSQL from
        # turning the test into a join that would read every matching span first.
        rows = rows.extra(
            where=[f"EXISTS (SELECT 1 FROM {spans} s WHERE s.trace_id = {summary}.trace_id AND s.start_time >= {summary}.start_time AND s.start_time <= {summary}.end_time AND ({match}) OFFSET 0)"],
            params=params,
        )
    return rows


def _filtered(query: TraceQuery) -> QuerySet[TraceSummary]:
    rows = TraceSummary.objects.all()
    if query.trace_ids is not None:
        rows = rows.filter(trace_id__in=query.trace_ids)
    if query.since:
        rows = rows.filter(start_time__gte=query.since)
    if query.until:
        rows = rows.filter(start_time__lt=query.until)
    if query.status == "error":
        rows = rows.filter(errors__gt=0)
    elif query.status == "ok":
        rows = rows.filter(errors=0)
    if query.min_duration_ms is not None:
        rows = rows.filter(duration_us__gte=int(query.min_duration_ms * 1000))
    if query.max_duration_ms is not None:
        rows = rows.filter(duration_us__lte=int(query.max_duration_ms * 1000))
    return _with_attributes(_with_tags(rows, query.tags()), query.attributes)


def _after(rows: QuerySet[TraceSummary], cursor: Cursor) -> QuerySet[TraceSummary]:
    """Rows past the cursor, as one row comparison: PostgreSQL starts the index scan at the
    cursor with it, where the same test spelt with OR filtered every row from the top (a second
    page took 600 ms at 2,000,000 spans). SQLite compares rows too (3.15 and later)."""
    table = connection.ops.quote_name(TraceSummary._meta.db_table)
    if cursor.sort == "start":
        at = _EPOCH + timedelta(microseconds=cursor.key)
        value = connection.ops.adapt_datetimefield_value(at) if connection.vendor == "sqlite" else at
        return rows.extra(where=[f"({table}.start_time, {table}.trace_id) < (%s, %s)"], params=[value, cursor.trace_id])
    return rows.extra(where=[f"({table}.duration_us, {table}.trace_id) < (%s, %s)"], params=[cursor.key, cursor.trace_id])


def _cursor_of(row: TraceSummary, sort: str) -> str:
    return Cursor(sort, _us(row.start_time) if sort == "start" else row.duration_us, row.trace_id).encode()


def found(row: TraceSummary) -> dict[str, Any]:
    """A trace as the search lists it. `shares`: where its time went, as parts of one bar (queue
    wait, work in process spans, the rest; parallel work can add up to more than the duration,
    so the parts are of whichever is larger)."""
    whole = max(row.duration_us, row.wait_us + row.work_us, 1)
    wait, work = row.wait_us / whole, row.work_us / whole
    return {
        "trace_id": row.trace_id,
        "first": row.start_time,
        "last": row.end_time,
        "root_name": row.root_name,
        "services": row.services,
        "spans": row.spans,
        "errors": row.errors,
        "duration_ms": row.duration_us / 1000,
        "wait_ms": row.wait_us / 1000,
        "work_ms": row.work_us / 1000,
        "shares": {"wait": round(wait, 4), "work": round(work, 4), "other": round(max(0.0, 1 - wait - work), 4)},
    }


def search_traces(query: TraceQuery, *, cursor: str = "", limit: int = 50) -> tuple[list[dict[str, Any]], str]:
    """One page of traces, newest (or longest) first, and the cursor of the next ('' at the end).
    Raises BadSearch naming the field for a query that contradicts itself or a foreign cursor."""
    query.check()
    rows = _filtered(query)
    if cursor:
        rows = _after(rows, Cursor.decode(cursor, query.sort))
    column = "start_time" if query.sort == "start" else "duration_us"
    page = list(rows.order_by(f"-{column}", "-trace_id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return [found(r) for r in page], (_cursor_of(page[-1], query.sort) if more and page else "")

"""Response bodies of the trace tree, one span in full, and the comparison of two traces."""

from __future__ import annotations

from typing import Any

from ninja import Schema
from pydantic import Field

from console.api.answers import DateTime, TraceHop, TraceOut


class LinkedFrom(Schema):
    trace_id: str
    span_id: str = Field(description="the span of that trace that links to this one")


class TreeHop(TraceHop):
    critical: bool = Field(description="on the critical path: the chain of spans that decides when the trace ends")
    queue_wait_ms: float | None = Field(description="a consumer span's wait in its queue, from its parent send's end (or as its app said) to its start; null for other spans")
    linked_from: list[LinkedFrom] = Field(description="spans of other traces (or this one) that link to this span")


class TreeOut(TraceOut):
    duration_ms: float = Field(description="from the first span's start to the last span's end")
    errors: int = Field(description="spans with status error in the whole trace")
    items: list[TreeHop] = Field(description="depth first in start order, from `offset`")


class SpanOut(Schema):
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: int = Field(description="OpenTelemetry SpanKind: 0 internal, 1 server, 2 client, 3 producer, 4 consumer")
    start_time: DateTime
    duration_ms: float
    status_code: int = Field(description="0 unset, 1 ok, 2 error")
    status_message: str
    attributes: dict[str, Any] = Field(description="redacted")
    events: list[Any] = Field(description="redacted")
    links: list[Any] = Field(description="to spans of other traces (or this one)")
    linked_from: list[LinkedFrom]


class CompareSide(Schema):
    span_id: str
    start_ms: float = Field(description="after its trace's first span began")
    duration_ms: float
    status_code: int


class CompareRow(Schema):
    path: list[str] = Field(description="span names from the root down to this span")
    name: str
    depth: int
    occurrence: int = Field(description="0 for the first span on this path in start order, 1 for the second…")
    state: str = Field(json_schema_extra={"enum": ["matched", "missing", "extra"]}, description="missing: in a only; extra: in b only")
    a: CompareSide | None
    b: CompareSide | None
    change_ms: float = Field(description="b's duration minus a's (a missing span: minus a's; an extra one: b's)")
    change_pct: float | None = Field(description="of a's duration; null unless matched and a's is above zero")
    order: int = Field(description="the row's place in tree order (a's, then b's extras)")


class CompareTrace(Schema):
    trace_id: str
    spans: int
    duration_ms: float


class CompareOut(Schema):
    a: CompareTrace
    b: CompareTrace
    change_ms: float
    change_pct: float | None
    matched: int
    missing: int = Field(description="spans of a with no partner in b")
    extra: int = Field(description="spans of b with no partner in a")
    rows: list[CompareRow] = Field(description="biggest change first, at most `limit`")

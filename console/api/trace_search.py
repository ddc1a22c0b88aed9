"""Finding traces: the trace search (time, service, span name, message type, queue, handler,
app, status, duration, attributes) in keyset pages, and the lookups by conversation, message or
saga, which narrow the same search."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import Field, field_validator

from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import FilterQuery, QueryText
from console.models import Role
from flows.operate.selectors import OWN_FLOWS
from tracing.search import SORTS, BadSearch, TraceQuery, parse_attribute, search_traces
from tracing.selectors import traces_for

router = Router(tags=["traces"])
LOOKUP_LIMIT = 500  # traces one conversation, message or saga can name in a search


class TraceSearchQuery(Schema):
    """The trace search, as query parameters. Every filter combines with the others."""

    since: datetime | None = Field(None, description="traces that started at or after this (ISO 8601)")
    until: datetime | None = Field(None, description="traces that started before this (ISO 8601)")
    service: QueryText = Field("", max_length=200, description="a span of this service")
    span_name: QueryText = Field("", max_length=300, description="a span of this name")
    message_type: QueryText = Field("", max_length=300)
    queue: QueryText = Field("", max_length=300)
    handler: QueryText = Field("", max_length=300)
    app: QueryText = Field("", max_length=100, description="an attached app's name; \"(flowscope)\" for Flowscope's own flows; empty for all")
    status: QueryText = Field("", description="error: a span failed; ok: none did; empty for any")
    min_duration_ms: float | None = Field(None, ge=0, le=1e12)
    max_duration_ms: float | None = Field(None, ge=0, le=1e12)
    attr: list[QueryText] = Field(default_factory=list, description="key=value, repeatable: a span of the trace has this attribute")
    sort: QueryText = Field("start", description=f"{' or '.join(SORTS)}: newest or longest first")
    correlation_id: QueryText = ""
    message_id: QueryText = ""
    saga_id: QueryText = ""

    @field_validator("since", "until", mode="before")
    @classmethod
    def iso_8601_only(cls, value: Any) -> Any:
        return FilterQuery.iso_8601_only(value)

    @field_validator("since", "until")
    @classmethod
    def in_utc(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is UTC (as the console shows times): a pasted link means
        the same wherever it is opened."""
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return FilterQuery.in_utc(value)


class TraceRow(Schema):
    trace_id: str
    first: datetime = Field(description="start of its earliest span")
    last: datetime = Field(description="end of its latest span")
    root_name: str
    services: list[str]
    spans: int
    errors: int
    duration_ms: float
    wait_ms: float = Field(description="queue wait its process spans reported, summed")
    work_ms: float = Field(description="time in its process spans, summed")
    shares: dict[str, float] = Field(description="where the time went, parts of one bar: wait, work, other")


class TracePage(Schema):
    items: list[TraceRow]
    next_cursor: str = Field(description="pass as `cursor` for the next page; empty at the end")


def trace_query(params: TraceSearchQuery) -> TraceQuery:
    """The search these parameters ask for; BadSearch naming the field if they contradict."""
    ids = None
    if params.correlation_id or params.message_id or params.saga_id:
        rows = traces_for(correlation_id=params.correlation_id, message_id=params.message_id, saga_id=params.saga_id, limit=LOOKUP_LIMIT)
        ids = tuple(r["trace_id"] for r in rows)
    return TraceQuery(
        since=params.since,
        until=params.until,
        service=params.service,
        span_name=params.span_name,
        message_type=params.message_type,
        queue=params.queue,
        handler=params.handler,
        app=None if not params.app else "" if params.app == OWN_FLOWS else params.app,
        status=params.status,
        min_duration_ms=params.min_duration_ms,
        max_duration_ms=params.max_duration_ms,
        attributes=tuple(parse_attribute(a) for a in params.attr),
        trace_ids=ids,
        sort=params.sort or "start",
    ).check()


@router.get("/traces", response=answers(200, TracePage, 422))
def search(request: HttpRequest, params: Query[TraceSearchQuery], cursor: QueryText = "", limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Traces newest first (or longest first with sort=duration), filtered by any mix of the
    parameters; with correlation_id, message_id or saga_id, only the traces holding a span of
    that conversation, message or saga. Keyset pages: `next_cursor` fetches the next.

    GET /api/v1/traces?service=shop&status=error&attr=flowscope.attempt=2
    200 {"items": [{"trace_id": "...", "root_name": "send order.placed", "services": ["shop"],
    "spans": 7, "errors": 1, "duration_ms": 41.2, "shares": {"wait": 0.3, ...}, ...}], "next_cursor": "..."}
    422 naming the field: an attribute without `=`, since not before until, min_duration_ms
    above max_duration_ms, an unknown sort or status, a cursor this search did not give out."""
    need(request, Role.VIEWER)
    try:
        rows, next_cursor = search_traces(trace_query(params), cursor=cursor, limit=limit)
    except BadSearch as exc:
        raise HttpError(422, str(exc)) from None
    return {"items": rows, "next_cursor": next_cursor}

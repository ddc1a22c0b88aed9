"""One trace as a tree, one span of it in full, and two traces compared."""

from __future__ import annotations

import re
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router
from ninja.errors import HttpError

from console.api.auth import need
from console.api.errors import answers
from console.api.trace_answers import CompareOut, SpanOut, TreeOut
from console.models import Role
from tracing.models import Span, SpanLink
from tracing.redaction import redact
from tracing.trace_compare import compare_traces
from tracing.trace_tree import ERROR, SpanNode, TraceTree, queue_wait_ms, trace_tree

router = Router(tags=["traces"])
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")


def _tree(trace_id: str, parameter: str = "", *, light: bool = True) -> TraceTree:
    """The stored trace, or a 400 (malformed) or 404 (unknown) naming `parameter` if given."""
    named = f"{parameter}: " if parameter else ""
    if not TRACE_ID.match(trace_id):
        raise HttpError(400, f"{named}a trace id is 32 lowercase hexadecimal characters")
    tree = trace_tree(trace_id, light=light)
    if tree is None:
        raise HttpError(404, f"{named}no spans stored for trace {trace_id}")
    return tree


# Declared before /traces/{trace_id}: that pattern would take "compare" as an id.
@router.get("/traces/compare", response=answers(200, CompareOut, 400, 404, 422))
def compare(request: HttpRequest, a: str, b: str, limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
    """Two traces aligned span by span on their paths (names from the root): `a` the baseline,
    `b` the run in question. Rows biggest change first. 400 for a malformed id or the same id
    twice, 404 for an unknown one, each naming its parameter.

    GET /api/v1/traces/compare?a=<32 hex>&b=<32 hex> → {"a": {...}, "b": {...}, "matched": 6,
    "missing": 1, "extra": 0, "rows": [{"path": [...], "state": "matched", "change_ms": 40.2, ...}]}"""
    need(request, Role.VIEWER)
    for name, value in (("a", a), ("b", b)):
        if not TRACE_ID.match(value):
            raise HttpError(400, f"{name}: a trace id is 32 lowercase hexadecimal characters")
    if a == b:
        raise HttpError(400, "b: names the same trace as a; compare two different traces")
    return compare_traces(_tree(a, "a"), _tree(b, "b"), limit=limit)


@router.get("/traces/{trace_id}/spans/{span_id}", response=answers(200, SpanOut, 400, 404, 422))
def get_span(request: HttpRequest, trace_id: str, span_id: str) -> dict[str, Any]:
    """One span in full (attributes and events redacted), with the spans that link to it: what
    the trace page shows for the span picked. 400 for a malformed id, 404 for an unknown span."""
    need(request, Role.VIEWER)
    if not TRACE_ID.match(trace_id):
        raise HttpError(400, "trace_id: a trace id is 32 lowercase hexadecimal characters")
    if not SPAN_ID.match(span_id):
        raise HttpError(400, "span_id: a span id is 16 lowercase hexadecimal characters")
    span = Span.objects.filter(trace_id=trace_id, span_id=span_id).first()
    if span is None:
        raise HttpError(404, f"span_id: no span {span_id} stored in trace {trace_id}")
    return {
        "trace_id": trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "service": span.service,
        "kind": span.kind,
        "start_time": span.start_time.isoformat(),
        "duration_ms": span.duration_us / 1000,
        "status_code": span.status_code,
        "status_message": span.status_message,
        "attributes": redact(span.attributes),
        "events": redact(span.events),
        "links": span.links,
        "linked_from": [{"trace_id": k.trace_id, "span_id": k.span_id} for k in SpanLink.objects.filter(linked_trace_id=trace_id, linked_span_id=span_id).order_by("start_time")],
    }


@router.get("/traces/{trace_id}", response=answers(200, TreeOut, 400, 404, 422))
def get_trace(
    request: HttpRequest,
    trace_id: str,
    offset: int = Query(0, ge=0),
    limit: int = Query(2000, ge=1, le=20000),
    attributes: bool = Query(
        True, description="false: each span without its attributes, events and status message (empty here: ask /traces/{trace_id}/spans/{span_id}); the trace page reads 20,000 spans at once so"
    ),
) -> HttpResponse:
    """The hop tree, depth first in start order, a window of it at a time (`offset`, `limit`),
    with links to and from other traces, the critical path and each consumer's queue wait.
    400 for a malformed id, 404 for an unknown one."""
    need(request, Role.VIEWER)
    tree = _tree(trace_id, light=not attributes)
    walked = tree.walk_nodes()
    first = min(node.span.start_time for _, node in walked)
    critical = tree.critical_path()
    linked_from: dict[str, list[dict[str, str]]] = {}
    for link in tree.links_in:
        linked_from.setdefault(link["span_id"], []).append({"trace_id": link["trace_id"], "span_id": link["linking_span_id"]})
    links_out: dict[str, list[dict[str, Any]]] = {}
    for link in tree.links_out:
        links_out.setdefault(link["span_id"], []).append({"trace_id": link["trace_id"], "span_id": link["linked_span_id"], "attributes": {}})

    def hop(depth: int, node: SpanNode) -> dict[str, Any]:
        s = node.span
        full = isinstance(s, Span)
        return {
            "depth": depth,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name,
            "service": s.service,
            "kind": s.kind,
            "start_ms": round((s.start_time - first).total_seconds() * 1000, 3),
            "duration_ms": s.duration_us / 1000,
            "status_code": s.status_code,
            "status_message": s.status_message if full else "",
            "attributes": redact(s.attributes) if full else {},
            "events": redact(s.events) if full else [],
            "links": s.links if full else links_out.get(s.span_id, []),
            "critical": s.span_id in critical,
            "queue_wait_ms": queue_wait_ms(node),
            "linked_from": linked_from.get(s.span_id, []),
        }

    end = max((node.span.start_time - first).total_seconds() * 1000 + node.span.duration_us / 1000 for _, node in walked)
    body = {
        "trace_id": trace_id,
        "spans": tree.spans,
        "offset": offset,
        "duration_ms": round(end, 3),
        "errors": sum(1 for _, node in walked if node.span.status_code == ERROR),
        "links_out": tree.links_out,
        "links_in": tree.links_in,
        "items": [hop(depth, node) for depth, node in walked[offset : offset + limit]],
    }
    # Written here rather than through the schema: validating 20,000 items cost more than the
    # rest of the answer together. tests/test_api_schemas.py checks the answer against the schema.
    return HttpResponse(orjson.dumps(body), content_type="application/json")

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router
from ninja.errors import HttpError

from console.api.answers import TraceOut
from console.api.auth import need
from console.api.errors import answers
from console.models import Role
from tracing.redaction import redact
from tracing.selectors import trace_tree

router = Router(tags=["traces"])
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


@router.get("/traces/{trace_id}", response=answers(200, TraceOut, 400, 404, 422))
def get_trace(request: HttpRequest, trace_id: str, offset: int = Query(0, ge=0), limit: int = Query(2000, ge=1, le=20000)) -> dict[str, Any]:
    """The hop tree, depth first in start order, a window of it at a time (`offset`, `limit`),
    with links to and from other traces. 400 for a malformed id, 404 for an unknown one."""
    need(request, Role.VIEWER)
    if not TRACE_ID.match(trace_id):
        raise HttpError(400, "a trace id is 32 lowercase hexadecimal characters")
    tree = trace_tree(trace_id)
    if tree is None:
        raise HttpError(404, f"no spans stored for trace {trace_id}")
    walked = tree.walk()
    start = min((s.start_time for _, s in walked))
    return {
        "trace_id": trace_id,
        "spans": tree.spans,
        "offset": offset,
        "links_out": tree.links_out,
        "links_in": tree.links_in,
        "items": [
            {
                "depth": depth,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "name": s.name,
                "service": s.service,
                "kind": s.kind,
                "start_ms": round((s.start_time - start).total_seconds() * 1000, 3),
                "duration_ms": s.duration_us / 1000,
                "status_code": s.status_code,
                "status_message": s.status_message,
                "attributes": redact(s.attributes),
                "events": redact(s.events),
                "links": s.links,
            }
            for depth, s in walked[offset : offset + limit]
        ],
    }

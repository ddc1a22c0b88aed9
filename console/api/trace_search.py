"""Finding traces: by conversation, message or saga, or an app's latest."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Query, Router
from ninja.errors import HttpError

from console.api.answers import TraceFound
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import QueryText
from console.models import Role
from tracing.selectors import recent_traces, traces_for

APP_FILTER = Query("", max_length=100)  # an attached app's name; "(flowscope)" for Flowscope's own flows
router = Router(tags=["traces"])


@router.get("/traces", response=answers(200, list[TraceFound], 400, 422))
def search_traces(
    request: HttpRequest, correlation_id: QueryText = "", message_id: QueryText = "", saga_id: QueryText = "", app: QueryText = APP_FILTER, limit: int = Query(50, ge=1, le=500)
) -> list[dict[str, Any]]:
    """Traces holding a span of this conversation, message or saga, of one attached app if `app`
    is given; with `app` alone, that app's latest traces (the last 24 hours). 400 if none is named."""
    need(request, Role.VIEWER)
    if not (correlation_id or message_id or saga_id):
        if app:
            return [{**r, "first": r["first"].isoformat(), "last": r["last"].isoformat()} for r in recent_traces(app=app, limit=limit)]
        raise HttpError(400, "name a correlation_id, a message_id or a saga_id, or an app for its latest traces")
    rows = traces_for(correlation_id=correlation_id, message_id=message_id, saga_id=saga_id, app=app, limit=limit)
    return [{**r, "first": r["first"].isoformat(), "last": r["last"].isoformat()} for r in rows]

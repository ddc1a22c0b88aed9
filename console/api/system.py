"""The flow graph, queues, and publishing into a flow from outside."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router
from ninja.responses import Status

from console.api.answers import FlowGraph, Published, QueueOut
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import MessageIn, QueryText
from console.audit import audit
from console.live import graph_app
from console.models import Role
from flows.patterns.sending import send
from flows.produce.backpressure import queue_statuses
from tracing.selectors import flow_graph

APP_FILTER = Query("", max_length=100)  # an attached app's name; "(flowscope)" for Flowscope's own flows
router = Router(tags=["system"])


@router.get("/graph", response=answers(200, FlowGraph, 422))
def get_flow_graph(request: HttpRequest, minutes: float = Query(15, gt=0, le=24 * 60), app: QueryText = APP_FILTER) -> dict[str, Any]:
    """Senders, queues and handlers; edges with rate, error rate, dead-letter rate, p50, p95 and
    p95 queue wait. `app`: one attached app's edges, "(flowscope)" for Flowscope's own flows,
    empty for all. 422 for a window out of range or an app name over 100 characters."""
    need(request, Role.VIEWER)
    return flow_graph(window=timedelta(minutes=minutes), app=graph_app(app))


@router.get("/queues", response=answers(200, list[QueueOut], 503))
def get_queues(request: HttpRequest) -> list[dict[str, Any]]:
    """Depth, watermarks and back-pressure state of every queue."""
    need(request, Role.VIEWER)
    return [dataclasses.asdict(q) for q in queue_statuses()]


@router.post("/messages", response=answers(202, Published, 400, 404, 409, 413, 422, 503))
def publish_message(request: HttpRequest, body: MessageIn) -> Status[dict[str, str]]:
    """Publish into a flow (fire-and-forget, fan-out or competing consumers), validated against
    the type's schema: 202 {"message_id": ...}; 400 naming what is wrong; 404 for an unknown
    type; 409 for a type that is not sent this way; 503 with the queue's state under back-pressure
    (and Retry-After)."""
    principal = need(request, Role.OPERATOR)
    envelope = send(body.type, body.payload, schema_version=body.schema_version, correlation_id=body.correlation_id)
    audit(principal, "publish", object_type="message", object_ids=[str(envelope.message_id)], after={"type": body.type})
    return Status(202, {"message_id": str(envelope.message_id), "correlation_id": envelope.correlation_id})

"""What the patterns know, as the pages show it: one message (each subscriber's status), one queue
(its competing consumers and their spread) and one message type (schema versions in use, upcasts,
a responder's timeouts and late replies). Read-only; every filter is in the query."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import Field

from console.api.auth import need
from console.api.errors import answers
from console.models import Role
from flows.operate.pattern_selectors import message_view, queue_view, type_view

router = Router(tags=["patterns"])

# Type and queue names as the engine takes them (flows.core.envelope: letters, digits, . _ -).
NAME = re.compile(r"^[\w.\-]{1,200}$")
WINDOW_MINUTES = (1, 7 * 24 * 60)
DEFAULT_WINDOW = 60


def checked_name(parameter: str, value: str) -> str:
    if not NAME.match(value):
        raise HttpError(400, f"{parameter}: a name of 1 to 200 letters, digits, '.', '_' or '-', not {value[:40]!r}")
    return value


class Hop(Schema):
    name: str
    kind: str
    trace_id: str
    span_id: str
    service: str
    start_time: datetime
    duration_ms: float
    status: str
    queue: str
    consumer: str
    worker: str
    attempt: int | None
    outcome: str
    upcast_to: int | None = Field(description="the schema version the consumer read it at, when it was upcast")


class Subscriber(Schema):
    consumer: str
    queue: str
    status: str = Field(description="not seen, delivered, retrying, done, dead or discarded")
    attempts: int
    worker: str
    last_at: datetime | None
    dead_letter_id: int | None


class MessageOut(Schema):
    message_id: str
    message_type: str
    schema_version: int | None
    pattern: str
    correlation_id: str
    causation_id: str
    first_seen: datetime | None
    trace_ids: list[str]
    hops: list[Hop]
    hops_cut: bool = Field(description="more hops are stored than listed")
    subscribers: list[Subscriber]


class Backlog(Schema):
    depth: int
    broker_consumers: int | None = Field(description="as the broker counts them (RabbitMQ); null on Redis")
    high: int | None
    low: int | None
    mode: str | None
    state: str = Field(description="open, throttled or unlimited")
    activations: int


class Consumer(Schema):
    worker: str = Field(description="a worker process: node name / pid")
    deliveries: int
    share: float
    errors: int
    mean_ms: float


class QueueSpread(Schema):
    name: str
    window_minutes: int
    handlers: list[str]
    deliveries: int
    consumers: list[Consumer]
    fair_share: float | None
    skew: float | None = Field(description="the busiest consumer's share over the fair share (1 is even)")
    skewed: bool
    skew_threshold: float
    backlog: Backlog | None = Field(description="depth and back-pressure now; null for a queue the catalog does not declare")


class VersionUse(Schema):
    version: int
    sent: int
    processed: int
    upcast: int = Field(description="deliveries read at a newer version than sent")
    dead: int


class TypeHandler(Schema):
    consumer: str
    queue: str
    reads_version: int | None


class LateOut(Schema):
    request_id: str
    arrived_at: datetime
    late_ms: float | None


class Responder(Schema):
    consumer: str
    queue: str
    requests: int
    waits: int
    replied_in_time: int
    timeouts: int
    failed: int
    timeout_share: float | None
    late_replies: int
    recent_late: list[LateOut]


class TypeOut(Schema):
    name: str
    window_minutes: int
    pattern: str
    declared_versions: list[int]
    latest: int | None
    upcasters: list[str]
    handlers: list[TypeHandler]
    versions: list[VersionUse]
    upcast: int
    responders: list[Responder]


def _window(minutes: int) -> timedelta:
    return timedelta(minutes=minutes)


WINDOW = Query(DEFAULT_WINDOW, ge=WINDOW_MINUTES[0], le=WINDOW_MINUTES[1], description="minutes back from now")


@router.get("/messages/{message_id}", response=answers(200, MessageOut, 404, 422))
def get_message(request: HttpRequest, message_id: uuid.UUID) -> dict[str, Any]:
    """One message: type, version, conversation, traces, hops, and each handler's status for it
    (for a fan-out event, every subscriber's). 404 when nothing names it; 422 for a malformed id.

    GET /api/v1/messages/<uuid> → {"message_type": "order.placed", "subscribers": [{"consumer":
    "billing", "status": "done", ...}, {"consumer": "mail", "status": "dead", "dead_letter_id": 7}]}"""
    need(request, Role.VIEWER)
    view = message_view(message_id)
    if view is None:
        raise HttpError(404, f"message_id: no span, dead letter or delivery status names message {message_id}")
    return view


@router.get("/queues/{name}", response=answers(200, QueueSpread, 400, 404, 422))
def get_queue(request: HttpRequest, name: str, window: int = WINDOW) -> dict[str, Any]:
    """One queue's competing consumers over the last `window` minutes (1 to 10080): deliveries per
    worker process, shares and skew; its depth and back-pressure state now.

    GET /api/v1/queues/orders?window=60 → {"consumers": [{"worker": "a@host/12", "share": 0.52}, ...],
    "skew": 1.04, "skewed": false, "backlog": {"depth": 3, "state": "open", ...}}"""
    need(request, Role.VIEWER)
    view = queue_view(checked_name("name", name), window=_window(window))
    if view is None:
        raise HttpError(404, f"name: no handler consumes queue {name!r} and no delivery from it in the last {window} minutes")
    return view


@router.get("/types/{name}", response=answers(200, TypeOut, 400, 404, 422))
def get_type(request: HttpRequest, name: str, window: int = WINDOW) -> dict[str, Any]:
    """One message type over the last `window` minutes: schema versions declared and in use, how
    many deliveries were upcast; for a request type its responder's timeouts and late replies.

    GET /api/v1/types/person.created?window=1440 → {"versions": [{"version": 1, "processed": 4,
    "upcast": 4, ...}, {"version": 2, ...}], "upcast": 4, "responders": []}"""
    need(request, Role.VIEWER)
    view = type_view(checked_name("name", name), window=_window(window))
    if view is None:
        raise HttpError(404, f"name: no message type {name!r} is declared or seen in the last {window} minutes")
    return view

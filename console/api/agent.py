"""What attached apps' agents send and fetch: dead letters and resolutions in, requeue orders out.

Only a token of the agent role gets in (any other role, a session included, is 403; an unknown
token 401); a token tied to an app (create_token --app) reports and leases for that app only (403
naming both otherwise). A report is checked whole before anything is stored: over MAX_REPORT_BYTES 413, not
JSON 400, not the shape below 422 with where and what; then it is stored in one transaction.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.db import transaction
from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from console.api.auth import need
from console.api.errors import answers
from console.models import Role
from console.roles import Principal
from flows.operate.attached import attached_record_death, attached_resolve, orders_ack, orders_lease

router = Router(tags=["agent"])
MAX_REPORT_BYTES = 1024 * 1024
APP = Field(min_length=1, max_length=100, pattern=r"^[\w.:@-]+$")


class Strict(BaseModel):
    """What an agent sends, checked whole. Plain pydantic, not ninja's Schema: a Schema wraps each
    nested object in an ORM attribute reader before validating it, which took a third of a live
    report's CPU in the web process (200 task changes: 23 of 72 ms, profiled)."""

    model_config = ConfigDict(extra="forbid")


class RequeueOf(Strict):
    dead_letter_id: int = Field(ge=1)
    series: int = Field(ge=1)


class Routing(Strict):
    queue: str = Field("", max_length=200)
    exchange: str = Field("", max_length=200)
    routing_key: str = Field("", max_length=200)
    priority: int | None = Field(None, ge=0, le=255)


class Death(Strict):
    """A task that failed for good: its exact call, its error and where it ran."""

    task: str = Field(min_length=1, max_length=200)
    task_id: str = Field(min_length=1, max_length=200)
    args: list[Any] | None = Field(description="the call's args as JSON; null when they were not JSON (see call_repr)")
    kwargs: dict[str, Any] | None
    requeueable: bool = Field(description="args and kwargs are the exact call, as JSON")
    call_repr: str = Field("", max_length=10_000, description="repr of args and kwargs that were not JSON")
    routing: Routing
    error_type: str = Field(min_length=1, max_length=300)
    error_message: str = Field("", max_length=20_000)
    traceback: str = Field("", max_length=100_000)
    frames: list[str] = Field(default_factory=list, max_length=10, description='innermost frames outside Celery, "module:function"')
    attempts: int = Field(ge=1)
    traceparent: str = Field("", pattern=r"^$|^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    root_id: str = Field("", max_length=200)
    parent_id: str = Field("", max_length=200)
    worker: str = Field("", max_length=200)
    requeue_of: RequeueOf | None = None


class Resolution(Strict):
    """A requeued copy that succeeded."""

    task_id: str = Field(min_length=1, max_length=200)
    requeue_of: RequeueOf


class Report(Strict):
    app: str = APP
    dead: list[Death] = Field(default_factory=list, max_length=100)
    resolved: list[Resolution] = Field(default_factory=list, max_length=1000)


class Stored(Schema):
    dead_letters: list[int]
    resolved: int


class Ack(Strict):
    app: str = APP
    ids: list[int] = Field(max_length=1000)


class Acked(Schema):
    acked: int


class Order(Schema):
    id: int
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    routing: dict[str, Any]
    traceparent: str
    flowscope_requeue_of: str


class Orders(Schema):
    orders: list[Order]


def agent(request: HttpRequest) -> Principal:
    """An agent's token and nothing else: an operator may requeue, but not report deaths."""
    principal = need(request, Role.AGENT)
    if principal.role != Role.AGENT:
        raise HttpError(403, f"only an agent token (manage.py create_token --role agent) may do this; {principal.name or 'this caller'} has the {principal.role} role")
    return principal


def for_app(principal: Principal, app: str) -> None:
    """A token tied to an app reports and leases for that app only."""
    if principal.app and principal.app != app:
        raise HttpError(
            403,
            f"{principal.name} is the agent token of app {principal.app!r}; it may not report or take orders for app {app!r} (give that app a token of its own: manage.py create_token --role agent --app {app})",
        )


def body_of(request: HttpRequest, schema: type[Strict]) -> Any:
    if len(request.body) > MAX_REPORT_BYTES:
        raise HttpError(413, f"report body is {len(request.body)} bytes, over the limit of {MAX_REPORT_BYTES}: send fewer reports a request")
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise NinjaValidationError([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]) from None


@router.post("/agent/reports", response=answers(200, Stored, 400, 413, 422))
def report(request: HttpRequest) -> dict[str, Any]:
    """Tasks an attached app saw fail for good (`dead`) and requeued copies that succeeded
    (`resolved`), stored all or none. 200 {"dead_letters": [ids], "resolved": n}; a report sent
    again (its answer lost) stores nothing new."""
    principal = agent(request)
    body: Report = body_of(request, Report)
    for_app(principal, body.app)
    with transaction.atomic():
        dead = [attached_record_death(app=body.app, report=d.model_dump()).pk for d in body.dead]
        resolved = sum(attached_resolve(app=body.app, dead_letter_id=r.requeue_of.dead_letter_id, series=r.requeue_of.series) for r in body.resolved)
    return {"dead_letters": dead, "resolved": resolved}


@router.get("/agent/requeues", response=answers(200, Orders, 422))
def requeues(request: HttpRequest, app: str = Query(..., min_length=1, max_length=100, pattern=r"^[\w.:@-]+$"), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Lease the app's pending requeue orders: each is offered to one agent until its lease runs
    out; acknowledge it (POST /agent/requeues/ack) once sent."""
    for_app(agent(request), app)
    return {"orders": orders_lease(app=app, limit=limit)}


@router.post("/agent/requeues/ack", response=answers(200, Acked, 400, 413, 422))
def acknowledge(request: HttpRequest) -> dict[str, Any]:
    """Orders sent on the app's broker: never offered again. 200 {"acked": n}."""
    principal = agent(request)
    body: Ack = body_of(request, Ack)
    for_app(principal, body.app)
    return {"acked": orders_ack(app=body.app, ids=body.ids)}

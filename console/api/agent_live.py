"""What attached apps' agents report live and the revokes they carry out: task state changes and
worker heartbeats in, revoke orders out. The same doors as console.api.agent: an agent token
only, for its own app when it is tied to one; a report checked whole (413, 400, 422) before it is
stored, all or none."""

from __future__ import annotations

from typing import Any, Literal

from django.db import transaction
from django.http import HttpRequest
from ninja import Query, Router, Schema
from pydantic import Field

from console.api.agent import APP, Ack, Acked, Strict, agent, body_of, for_app
from console.api.errors import answers
from flows.operate.live_tasks import STATES, record_tasks, record_workers
from flows.operate.revokes import revokes_ack, revokes_lease

router = Router(tags=["agent"])
EPOCH_2000, EPOCH_2100 = 946_684_800, 4_102_444_800
NAME = Field(None, max_length=200)
REPR = Field(None, max_length=10_000)


class TaskChange(Strict):
    """One task's state change, as the app saw it."""

    id: str = Field(min_length=1, max_length=200)
    state: Literal[STATES]  # type: ignore[valid-type]
    at: float = Field(ge=EPOCH_2000, le=EPOCH_2100, description="epoch seconds, when the app saw it")
    name: str | None = NAME
    worker: str | None = NAME
    queue: str | None = NAME
    runtime_s: float | None = Field(None, ge=0)
    args: str | None = Field(None, max_length=10_000, description="a repr of the args; redacted before it is stored")
    kwargs: str | None = REPR
    exception: str | None = REPR
    trace_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    retries: int | None = Field(None, ge=0, le=1_000_000, strict=True, description="Celery's retries count of this attempt: a later attempt's change wins")
    received_at: float | None = Field(None, ge=EPOCH_2000, le=EPOCH_2100, description="when it was received, if this change folds a 'received' in")
    started_at: float | None = Field(None, ge=EPOCH_2000, le=EPOCH_2100, description="when it started, if this change folds a 'started' in")


class WorkerBeat(Strict):
    """A worker's heartbeat: how it is and what it has done."""

    hostname: str = Field(min_length=1, max_length=200)
    at: float = Field(ge=EPOCH_2000, le=EPOCH_2100)
    online: bool = Field(strict=True)
    pool: str | None = Field(None, max_length=50)
    concurrency: int | None = Field(None, ge=0, strict=True)
    active: int | None = Field(None, ge=0, strict=True)
    processed: int | None = Field(None, ge=0, strict=True)
    dropped: int | None = Field(None, ge=0, strict=True, description="task reports the worker's main process could not hold (its outbox full); pool processes log theirs at exit")


class LiveReport(Strict):
    app: str = APP
    tasks: list[TaskChange] = Field(default_factory=list, max_length=1000)
    workers: list[WorkerBeat] = Field(default_factory=list, max_length=100)


class LiveStored(Schema):
    tasks: int
    workers: int


class Revoke(Schema):
    id: int
    task_id: str
    terminate: bool
    signal: str | None


class Revokes(Schema):
    orders: list[Revoke]


@router.post("/agent/live", response=answers(200, LiveStored, 400, 413, 422))
def live_report(request: HttpRequest) -> dict[str, int]:
    """Task state changes and worker heartbeats, stored all or none.
    200 {"tasks": n changed, "workers": n changed}; a report sent again changes nothing."""
    principal = agent(request)
    body: LiveReport = body_of(request, LiveReport)
    for_app(principal, body.app)
    with transaction.atomic():
        tasks = record_tasks(body.app, [t.model_dump() for t in body.tasks])
        workers = record_workers(body.app, [w.model_dump() for w in body.workers])
    return {"tasks": tasks, "workers": workers}


@router.get("/agent/revokes", response=answers(200, Revokes, 422))
def revokes(request: HttpRequest, app: str = Query(..., min_length=1, max_length=100, pattern=r"^[\w.:@-]+$"), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Lease the app's pending revoke orders; acknowledge each (POST /agent/revokes/ack) once sent."""
    for_app(agent(request), app)
    return {"orders": revokes_lease(app=app, limit=limit)}


@router.post("/agent/revokes/ack", response=answers(200, Acked, 400, 413, 422))
def acknowledge_revokes(request: HttpRequest) -> dict[str, int]:
    """Revokes sent on the app's broker: never offered again. 200 {"acked": n}."""
    principal = agent(request)
    body: Ack = body_of(request, Ack)
    for_app(principal, body.app)
    return {"acked": revokes_ack(app=body.app, ids=body.ids)}

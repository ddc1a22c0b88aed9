"""Attached apps live, as Flower shows them: workers, the task list, and revoking a task.

A revoke is an order the app's agent carries out on the app's own broker (flows.operate.revokes):
the console holds none of the app's credentials.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpRequest
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from pydantic import ConfigDict, Field, field_validator

from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import QueryText
from console.audit import audit
from console.models import Role
from flows.models import LiveSource, LiveTask, LiveWorker
from flows.operate.live_selectors import TaskFilter, tasks_page, tasks_shown, workers_of
from flows.operate.revokes import RevokeError, revoke_order, signal_name

router = Router(tags=["live"])
APP_QUERY = Query("", max_length=100, pattern=r"^[\w.:@-]*$")
FINISHED = {LiveTask.State.SUCCEEDED, LiveTask.State.FAILED, LiveTask.State.REVOKED}


class WorkerOut(Schema):
    app: str
    hostname: str
    online: bool = Field(description="false once it said so, or once it went silent past LIVE_WORKER_TIMEOUT_S")
    said_offline: bool
    heartbeat_at: str
    silent_s: float
    pool: str
    concurrency: int | None
    active: int | None
    processed: int | None
    dropped: int
    source: str


class Workers(Schema):
    items: list[WorkerOut]


class RevokeState(Schema):
    order: int
    terminate: bool
    signal: str | None
    by: str
    sent: bool = Field(description="the app's agent took the order and sent the revoke")


class TaskOut(Schema):
    app: str
    id: str
    name: str
    state: str = Field(json_schema_extra={"enum": LiveTask.State.values})
    state_at: str
    source: str = Field(description='"agent": its exact call is known; "events": known from Celery events alone, it cannot be requeued exactly')
    exact_call: bool
    worker: str
    queue: str
    args: str = Field(description="repr, redacted")
    kwargs: str = Field(description="repr, redacted")
    exception: str
    runtime_s: float | None
    retries: int | None
    trace_id: str
    received_at: str | None
    started_at: str | None
    dead_letter_id: int | None = Field(description="the dead letter it became (failed for good, reported by its agent): requeue it there")
    revoke: RevokeState | None


class TaskPage(Schema):
    items: list[TaskOut]
    next_cursor: str


class TaskQuery(Schema):
    app: str = Field("", max_length=100, pattern=r"^[\w.:@-]*$")
    state: LiveTask.State | None = None
    name: QueryText = Field("", max_length=200)
    worker: QueryText = Field("", max_length=200)

    def to_filter(self) -> TaskFilter:
        return TaskFilter(app=self.app, state=self.state.value if self.state else "", name=self.name, worker=self.worker)


class RevokeIn(Schema):
    model_config = ConfigDict(extra="forbid")
    terminate: bool = Field(False, strict=True, description="also stop it if it is running (its pool process gets `signal`)")
    signal: str | None = Field(None, max_length=10, description="with terminate: SIGTERM (the default), SIGKILL, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 or SIGABRT")
    app: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[\w.:@-]+$", description="the task's app: needed for a task the console has not seen yet")

    @field_validator("signal")
    @classmethod
    def known_signal(cls, value: str | None) -> str | None:
        try:
            return signal_name(value) if value else None
        except RevokeError as exc:
            raise ValueError(str(exc)) from None


class Revoked(Schema):
    order: int
    app: str
    task_id: str
    terminate: bool
    signal: str | None


@router.get("/workers", response=answers(200, Workers, 422))
def list_workers(request: HttpRequest, app: str = APP_QUERY) -> dict[str, Any]:
    """Attached apps' workers (of `app` only, when given), online first: pool, concurrency,
    active and processed tasks as their last heartbeat said."""
    need(request, Role.VIEWER)
    return {"items": workers_of(app)}


@router.get("/tasks", response=answers(200, TaskPage, 400, 422))
def list_tasks(request: HttpRequest, filters: Query[TaskQuery], cursor: str = Query("", max_length=200), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Attached apps' tasks by newest state change, filtered by app, state, task name and worker.
    200 {"items": [...], "next_cursor": "..."}; 400 for a cursor this API did not give out."""
    need(request, Role.VIEWER)
    rows, next_cursor = tasks_page(filters.to_filter(), cursor=cursor, limit=limit)
    return {"items": tasks_shown(rows), "next_cursor": next_cursor}


def _app_of(task_id: str, given: str | None) -> str:
    """The app the task belongs to: the one given, else the one app that has a task of that id."""
    apps = sorted(set(LiveTask.objects.filter(task_id=task_id).values_list("app", flat=True)))
    if given:
        return given
    if not apps:
        raise HttpError(404, f"no attached app has reported task {task_id!r}; to revoke it before it arrives, give its app")
    if len(apps) > 1:
        raise HttpError(400, f"apps {', '.join(apps)} each have a task {task_id!r}: give app")
    return apps[0]


@router.post("/tasks/{task_id}/revoke", response=answers(200, Revoked, 400, 404, 409, 413, 422))
def revoke(request: HttpRequest, task_id: str, body: RevokeIn) -> dict[str, Any]:
    """Revoke a task of an attached app (with `terminate`, stop it if running, its pool process
    sent `signal`): an order the app's agent carries out with app.control.revoke on its own broker.
    200 with the order; 403 below operator; 404 a task no app reported (give `app`); 409 when the
    task already finished, or no agent of the app reports (nobody would carry the order out)."""
    principal = need(request, Role.OPERATOR)
    if not 1 <= len(task_id) <= 200:
        raise HttpError(422, "a task id is 1 to 200 characters")
    app = _app_of(task_id, body.app)
    task = LiveTask.objects.filter(app=app, task_id=task_id).first()
    if task is not None and task.state in FINISHED:
        raise HttpError(409, f"task {task_id} of {app} already {task.state}: nothing to revoke")
    if not LiveWorker.objects.filter(app=app, source=LiveSource.AGENT).exists():
        raise HttpError(409, f"no agent of app {app!r} has reported: a revoke is carried out by the app's flowscope-agent, and none would take the order")
    with transaction.atomic():
        order = revoke_order(app=app, task_id=task_id, terminate=body.terminate, signal=body.signal, actor=principal.name)
        audit(
            principal,
            "terminate_task" if order.terminate else "revoke_task",
            object_type="task",
            object_ids=[task_id],
            before={"state": task.state if task else None},
            after={"app": app, "terminate": order.terminate, "signal": order.signal or None, "order": order.pk},
        )
    return {"order": order.pk, "app": app, "task_id": task_id, "terminate": order.terminate, "signal": order.signal or None}

"""Reads of the live pages: attached apps' tasks (filtered, newest first, keyset pages) and workers."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from flows.models import DeadLetter, LiveTask, LiveWorker, RevokeOrder
from flows.operate.live_tasks import setting
from flows.operate.selectors import BadCursor


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    app: str = ""
    state: str = ""
    name: str = ""
    worker: str = ""

    def apply(self, rows: QuerySet[LiveTask]) -> QuerySet[LiveTask]:
        for field in ("app", "state", "name", "worker"):
            if getattr(self, field):
                rows = rows.filter(**{field: getattr(self, field)})
        return rows


def _encode(row: LiveTask) -> str:
    return base64.urlsafe_b64encode(f"{row.state_at.isoformat()}|{row.pk}".encode()).decode()


def _decode(cursor: str) -> tuple[datetime, int]:
    try:
        at, pk = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), int(pk)
    except (ValueError, UnicodeDecodeError):
        raise BadCursor(f"cursor {cursor!r} is not one this API gave out") from None


def tasks_page(filters: TaskFilter, *, cursor: str = "", limit: int = 50) -> tuple[list[LiveTask], str]:
    """Newest state change first; keyset pages on (state_at, id). Returns rows and the next cursor ('' at the end)."""
    rows = filters.apply(LiveTask.objects.all())
    if cursor:
        at, pk = _decode(cursor)
        rows = rows.filter(Q(state_at__lt=at) | Q(state_at=at, id__lt=pk))
    page = list(rows.order_by("-state_at", "-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (_encode(page[-1]) if more and page else "")


def worker_timeout() -> timedelta:
    """A worker not heard from for this long is shown offline (its heartbeat comes every few seconds)."""
    return timedelta(seconds=setting("LIVE_WORKER_TIMEOUT_S", 30))


def workers_of(app: str = "") -> list[dict[str, Any]]:
    """Every worker of `app` (of every app when empty), online first; `online` is false once it
    said so or once no report came within the timeout, and `silent_s` says for how long."""
    now = timezone.now()
    fresh_since = now - worker_timeout()
    rows = LiveWorker.objects.filter(app=app) if app else LiveWorker.objects.all()
    shown = []
    for w in rows.order_by("app", "hostname"):
        shown.append(
            {
                "app": w.app,
                "hostname": w.hostname,
                "online": w.online and w.heartbeat_at >= fresh_since,
                "said_offline": not w.online,
                "heartbeat_at": w.heartbeat_at.isoformat(),
                "silent_s": round(max(0.0, (now - w.heartbeat_at).total_seconds()), 1),
                "pool": w.pool,
                "concurrency": w.concurrency,
                "active": w.active,
                "processed": w.processed,
                "dropped": w.dropped,
                "source": w.source,
            }
        )
    return sorted(shown, key=lambda w: (not w["online"], w["app"], w["hostname"]))


def live_summary() -> dict[str, Any]:
    """What a live frame carries for the workers and tasks pages: the workers, the tasks per
    state, and a mark that moves whenever a task changed (the tasks page re-fetches its filtered
    list when it does, rather than every frame carrying every list)."""
    mark = LiveTask.objects.aggregate(at=Max("updated_at"))["at"]
    counts = dict(LiveTask.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    pending = RevokeOrder.objects.filter(sent_at__isnull=True).count()
    return {"workers": workers_of(), "task_counts": counts, "tasks_mark": mark.isoformat() if mark else "", "revokes_pending": pending}


def _dead_letters_of(rows: list[LiveTask]) -> dict[tuple[str, str], int]:
    """The dead letter each failed task became, where its agent reported one: (app, task id) -> id.
    An attached dead letter's message id is the task id when that is a UUID (Celery's own ids)."""
    failed: dict[uuid.UUID, LiveTask] = {}
    for r in rows:
        if r.state == LiveTask.State.FAILED:
            try:
                failed[uuid.UUID(r.task_id)] = r
            except ValueError:
                continue
    if not failed:
        return {}
    found = DeadLetter.objects.filter(message_id__in=list(failed)).exclude(app="").values_list("app", "message_id", "pk")
    return {(app, failed[message_id].task_id): pk for app, message_id, pk in found if failed[message_id].app == app}


def tasks_shown(rows: list[LiveTask]) -> list[dict[str, Any]]:
    """Rows as the API and the page show them, with their newest revoke order's fate and the dead
    letter a failed one became. Args and kwargs were redacted before they were stored."""
    orders: dict[tuple[str, str], RevokeOrder] = {}
    for order in RevokeOrder.objects.filter(task_id__in={r.task_id for r in rows}).order_by("id"):
        orders[(order.app, order.task_id)] = order  # the newest wins
    dead = _dead_letters_of(rows)
    shown = []
    for r in rows:
        order = orders.get((r.app, r.task_id))
        shown.append(
            {
                "app": r.app,
                "id": r.task_id,
                "name": r.name,
                "state": r.state,
                "state_at": r.state_at.isoformat(),
                "source": r.source,
                "exact_call": r.source == "agent",
                "worker": r.worker,
                "queue": r.queue,
                "args": r.args,
                "kwargs": r.kwargs,
                "exception": r.exception,
                "runtime_s": r.runtime_s,
                "retries": r.retries,
                "trace_id": r.trace_id,
                "received_at": r.received_at.isoformat() if r.received_at else None,
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "dead_letter_id": dead.get((r.app, r.task_id)),
                "revoke": None if order is None else {"order": order.pk, "terminate": order.terminate, "signal": order.signal or None, "by": order.requested_by, "sent": order.sent_at is not None},
            }
        )
    return shown

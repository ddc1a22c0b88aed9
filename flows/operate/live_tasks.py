"""Live tasks and workers of attached apps: Flower's task list and worker table, kept in the database.

Two writers feed it: an app's agent (its worker processes report task state changes and
heartbeats, through the console's agent API) and the Celery-events watcher of an app that runs
no agent. Both call `record_tasks` and `record_workers`; `source` says which, and the page says
plainly that a task known from events alone carries no exact call (no exact requeue).

The invariant: one row per (app, task id) holding the newest state. Events arrive out of order
(the main process reports "received", a pool process "started" and "succeeded", each in its own
batch), so a state moves only to a newer one: a later `at`, or at the same `at` a later step
(received < started < retried < succeeded, failed, revoked); and where both sides know the attempt
(Celery's `retries`), a later attempt wins whatever the clocks say: a retry's copy may run and
succeed in one pool process before the process that asked for the retry reports "retried".
Details fill in whatever the order:
the args from "received" stay when "succeeded" comes first. Args and kwargs are redacted before
they are stored, so a secret in a call never reaches the database.

Concurrent batches for one task (two processes of one worker) meet on the row: each inserts the
rows it lacks as its own events make them (ON CONFLICT DO NOTHING, in task id order), then locks
the rows it found there, in the same order, and merges into them.

History is bounded: rows older than LIVE_TASKS_RETENTION_HOURS and, per app, beyond the newest
LIVE_TASKS_MAX are pruned, from the ingest itself (at most every PRUNE_EVERY_S per process) and by
the `flows.prune_live_tasks` task.
"""

from __future__ import annotations

import ast
import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from flows.models import LiveSource, LiveTask, LiveWorker, RevokeOrder
from tracing.bulk import datetime_adapter, upsert_rows
from tracing.redaction import MASK, mentions_sensitive_field, redact, redact_text

# Rank of a state at one instant: a later step wins a tie, so "started" never goes back to
# "received", and a finished task stays finished unless a newer event (a retry's run) comes.
RANK = {"received": 0, "started": 1, "retried": 2, "succeeded": 3, "failed": 3, "revoked": 3}
STATES = tuple(RANK)
SOURCES = tuple(LiveSource.values)
MAX_TEXT = 10_000  # args, kwargs, exception: a list row, not an archive
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
PLACEHOLDER_AT = datetime(1970, 1, 1, tzinfo=UTC)  # a row just inserted: any event is newer
PRUNE_EVERY_S = 30.0
_last_prune = {"at": -math.inf}
_prune_lock = threading.Lock()


class LiveReportError(ValueError):
    """An event or worker report that cannot be stored; the message says which and why."""


def setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


# --- checking what comes in ---


def _when(value: Any, where: str, field: str = "at") -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LiveReportError(f"{where}: {field!r} must be a number of epoch seconds, got {value!r}")
    at = datetime.fromtimestamp(value, tz=UTC) if EARLIEST.timestamp() <= value <= LATEST.timestamp() else None
    if at is None:
        raise LiveReportError(f"{where}: {field!r}={value!r} is not between 2000 and 2100 in epoch seconds")
    return at


def _text(value: Any, where: str, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LiveReportError(f"{where}: {field!r} must be a string or null, got {type(value).__name__}")
    return value.replace("\x00", "\\x00")[:limit]  # PostgreSQL keeps no NUL character


def _count(value: Any, where: str, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LiveReportError(f"{where}: {field!r} must be a whole number of at least 0 or null, got {value!r}")
    return value


def _task_event(event: Any, where: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise LiveReportError(f"{where}: a task event is an object, got {type(event).__name__}")
    task_id = _text(event.get("id"), where, "id", 201)
    if not task_id or len(task_id) > 200:
        raise LiveReportError(f"{where}: 'id' must be the task id, 1 to 200 characters")
    state = event.get("state")
    if state not in RANK:
        raise LiveReportError(f"{where}: state {state!r} is not one of {', '.join(STATES)}")
    runtime = event.get("runtime_s")
    if runtime is not None and (isinstance(runtime, bool) or not isinstance(runtime, int | float) or not math.isfinite(runtime) or runtime < 0):
        raise LiveReportError(f"{where}: 'runtime_s' must be a number of seconds of at least 0 or null, got {runtime!r}")
    trace_id = _text(event.get("trace_id"), where, "trace_id", 33)
    if trace_id and (len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id)):
        raise LiveReportError(f"{where}: 'trace_id' must be 32 lowercase hex digits, got {trace_id!r}")
    return {
        "id": task_id,
        "state": state,
        "at": _when(event.get("at"), where),
        "name": _text(event.get("name"), where, "name", 200),
        "worker": _text(event.get("worker"), where, "worker", 200),
        "queue": _text(event.get("queue"), where, "queue", 200),
        "runtime_s": float(runtime) if runtime is not None else None,
        "args": _text(event.get("args"), where, "args", MAX_TEXT),
        "kwargs": _text(event.get("kwargs"), where, "kwargs", MAX_TEXT),
        "exception": _text(event.get("exception"), where, "exception", MAX_TEXT),
        "trace_id": trace_id,
        "retries": _count(event.get("retries"), where, "retries"),
        # An agent folds a task's changes that waited together into the newest: the steps it folded keep their times.
        "received_at": _when(event["received_at"], where, "received_at") if event.get("received_at") is not None else None,
        "started_at": _when(event["started_at"], where, "started_at") if event.get("started_at") is not None else None,
    }


def _check_app(app: Any) -> str:
    if not isinstance(app, str) or not app or len(app) > 100:
        raise LiveReportError(f"app must be a name of 1 to 100 characters, got {app!r}")
    return app


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise LiveReportError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def redact_repr(text: str) -> str:
    """The project's redaction on a repr of args or kwargs, kept in the form the app gave it.

    Where no sensitive field name occurs anywhere in the text, no key can be one, and what is
    left to mask (e-mails, card numbers) is masked in the text as it is: the literal is not
    parsed. Otherwise it is read back as a Python literal when it is one (sensitive keys masked by
    name, e-mails and card numbers anywhere); when it is not (an object's repr), masked by value,
    and whole, since it names a sensitive field. Parsing every repr was a third of storing a
    change."""
    if not mentions_sensitive_field(text):
        return redact_text(text)[:MAX_TEXT]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return f"{MASK} (not a plain literal, and it names a sensitive field)"
    redacted = redact(value)
    return repr(tuple(redacted) if isinstance(value, tuple) else redacted)[:MAX_TEXT]


# --- tasks ---


def _newer(event: dict[str, Any], row: LiveTask) -> bool:
    if event["retries"] is not None and row.retries is not None and event["retries"] != row.retries:
        return event["retries"] > row.retries
    return (event["at"], RANK[event["state"]]) > (row.state_at, RANK.get(row.state, 0))


def _merge(row: LiveTask, event: dict[str, Any], source: str) -> None:
    """One event into the row: the state only forward, details filled in whatever the order."""
    newer = _newer(event, row)
    if newer:
        row.state, row.state_at = event["state"], event["at"]
        if event["retries"] is not None:
            row.retries = event["retries"]
    for field in ("name", "worker", "queue", "trace_id"):
        if event[field] and (newer or not getattr(row, field)):
            setattr(row, field, event[field])
    for field in ("args", "kwargs"):
        if event[field] is not None and (newer or not getattr(row, field)):
            setattr(row, field, redact_repr(event[field]))
    if event["exception"] and (newer or not row.exception):
        row.exception = redact_text(event["exception"])
    if event["runtime_s"] is not None and (newer or row.runtime_s is None):
        row.runtime_s = event["runtime_s"]
    received = event["at"] if event["state"] == "received" else event["received_at"]
    if received is not None and (row.received_at is None or received < row.received_at):
        row.received_at = received
    started = event["at"] if event["state"] == "started" else event["started_at"]
    if started is not None and (row.started_at is None or started > row.started_at):
        row.started_at = started
    if source == LiveSource.AGENT:  # the agent knows the exact call; events alone never take that back
        row.source = LiveSource.AGENT


MERGED = ["name", "state", "state_at", "source", "worker", "queue", "args", "kwargs", "exception", "runtime_s", "retries", "trace_id", "received_at", "started_at", "updated_at"]
KEY = ("app", "task_id")
COLUMNS = (*KEY, *MERGED)
DATETIMES = frozenset(f for f in MERGED if f.endswith("_at"))
BLANK = {f: None if LiveTask._meta.get_field(f).null else "" for f in MERGED}  # what a new row holds before its events


def _values(row: LiveTask, adapt: Callable[[datetime], Any]) -> tuple[Any, ...]:
    return (row.app, row.task_id, *(adapt(v) if v is not None and f in DATETIMES else v for f, v in ((f, getattr(row, f)) for f in MERGED)))


def _fresh(app: str, task_id: str, events: list[dict[str, Any]], source: str, now: datetime) -> LiveTask:
    """A task's row as its first events make it: any event is newer than the blank it starts from."""
    row = LiveTask(app=app, task_id=task_id, **{**BLANK, "state": "received", "state_at": PLACEHOLDER_AT, "source": source, "updated_at": now})
    for event in events:
        _merge(row, event, source)
    return row


def record_tasks(app: str, events: list[dict[str, Any]], *, source: str = LiveSource.AGENT) -> int:
    """Store a batch of task state changes of `app`, each
    {"id", "name", "state", "at" (epoch seconds), "worker", "queue", "runtime_s", "args", "kwargs",
    "exception", "trace_id"} and optionally "retries" (the attempt's), "received_at" and "started_at"
    (epoch seconds of the steps an agent folded into this change; unknown keys ignored). All or none: LiveReportError names the first
    bad event. Returns how many tasks changed."""
    _check_app(app)
    _check_source(source)
    if not isinstance(events, list):
        raise LiveReportError(f"events must be a list, got {type(events).__name__}")
    cleaned = [_task_event(e, f"event {i}") for i, e in enumerate(events)]
    if not cleaned:
        return 0
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(cleaned, key=lambda e: (e["at"], RANK[e["state"]])):
        by_id.setdefault(event["id"], []).append(event)
    ids = sorted(by_id)  # one lock order for every batch: two batches never wait on each other in a circle
    now = timezone.now()
    with transaction.atomic():
        adapt = datetime_adapter()
        # Most tasks are new here (an agent sends one change a task): each is merged onto a blank
        # row in memory and inserted as it ends up, one statement for the batch. A row that is
        # there already (an earlier change, or another batch's insert, which this one waits for)
        # is not written by it (ON CONFLICT DO NOTHING) and is merged under its lock below.
        fresh = {task_id: _fresh(app, task_id, by_id[task_id], source, now) for task_id in ids}
        inserted = set(upsert_rows(LiveTask, COLUMNS, [_values(row, adapt) for row in fresh.values()], conflict=KEY, returning="task_id"))
        known = [task_id for task_id in ids if task_id not in inserted]
        rows = list(LiveTask.objects.select_for_update().filter(app=app, task_id__in=known).order_by("task_id")) if known else []
        changed = []
        for row in rows:
            before = [getattr(row, f) for f in MERGED]
            for event in by_id[row.task_id]:
                _merge(row, event, source)
            if [getattr(row, f) for f in MERGED] != before:
                row.updated_at = now
                changed.append(row)
        # Written back as one upsert of the merged rows (the rows are locked): Django's
        # bulk_update builds a CASE per field and row, which took a second for 50 tasks, and its
        # bulk_create prepared every value through its field, half of each event's cost (tracing.bulk).
        upsert_rows(LiveTask, COLUMNS, [_values(row, adapt) for row in changed], conflict=KEY, update=tuple(MERGED))
    prune_now_and_then()
    return len(inserted) + len(changed)


# --- workers ---


def _worker_report(report: Any, where: str) -> dict[str, Any]:
    if not isinstance(report, dict):
        raise LiveReportError(f"{where}: a worker report is an object, got {type(report).__name__}")
    hostname = _text(report.get("hostname"), where, "hostname", 201)
    if not hostname or len(hostname) > 200:
        raise LiveReportError(f"{where}: 'hostname' must be the worker's name, 1 to 200 characters")
    online = report.get("online", True)
    if not isinstance(online, bool):
        raise LiveReportError(f"{where}: 'online' must be true or false, got {online!r}")
    return {
        "hostname": hostname,
        "at": _when(report.get("at"), where),
        "online": online,
        "pool": (_text(report.get("pool"), where, "pool", 50) or ""),
        "concurrency": _count(report.get("concurrency"), where, "concurrency"),
        "active": _count(report.get("active"), where, "active"),
        "processed": _count(report.get("processed"), where, "processed"),
        "dropped": _count(report.get("dropped"), where, "dropped"),
    }


def record_workers(app: str, workers: list[dict[str, Any]], *, source: str = LiveSource.AGENT) -> int:
    """Store worker reports of `app`, each {"hostname", "at", "online", "pool", "concurrency",
    "active", "processed"} (and "dropped", the agent's count of task reports it could not hold).
    An older report than the one stored changes nothing. Returns how many workers changed."""
    _check_app(app)
    _check_source(source)
    if not isinstance(workers, list):
        raise LiveReportError(f"workers must be a list, got {type(workers).__name__}")
    latest: dict[str, dict[str, Any]] = {}
    for i, report in enumerate(workers):
        cleaned = _worker_report(report, f"worker {i}")
        held = latest.get(cleaned["hostname"])
        if held is None or cleaned["at"] >= held["at"]:
            latest[cleaned["hostname"]] = cleaned
    if not latest:
        return 0
    names = sorted(latest)
    now = timezone.now()
    with transaction.atomic():
        LiveWorker.objects.bulk_create([LiveWorker(app=app, hostname=h, source=source, heartbeat_at=PLACEHOLDER_AT, first_seen_at=now) for h in names], ignore_conflicts=True)
        changed = []
        for row in LiveWorker.objects.select_for_update().filter(app=app, hostname__in=names).order_by("hostname"):
            report = latest[row.hostname]
            if report["at"] < row.heartbeat_at:
                continue
            row.heartbeat_at, row.online, row.pool = report["at"], report["online"], report["pool"] or row.pool
            for field in ("concurrency", "active", "processed", "dropped"):
                if report[field] is not None:
                    setattr(row, field, report[field])
            if source == LiveSource.AGENT:
                row.source = LiveSource.AGENT
            changed.append(row)
        LiveWorker.objects.bulk_create(
            changed, update_conflicts=True, unique_fields=["app", "hostname"], update_fields=["heartbeat_at", "online", "pool", "concurrency", "active", "processed", "dropped", "source"]
        )
    return len(changed)


# --- history ---


def prune_live(*, older_than: timedelta | None = None, keep_per_app: int | None = None) -> dict[str, int]:
    """Delete tasks older than the retention or beyond the newest `keep_per_app` of their app,
    workers silent for as long, and revoke orders sent as long ago."""
    older_than = older_than if older_than is not None else timedelta(hours=setting("LIVE_TASKS_RETENTION_HOURS", 24))
    keep = int(keep_per_app if keep_per_app is not None else setting("LIVE_TASKS_MAX", 10_000))
    cutoff = timezone.now() - older_than
    tasks, _ = LiveTask.objects.filter(state_at__lt=cutoff).delete()
    for app in LiveTask.objects.values_list("app", flat=True).distinct():
        edge = LiveTask.objects.filter(app=app).order_by("-state_at", "-id").values_list("state_at", "id")[keep : keep + 1]
        if edge:
            at, pk = edge[0]
            deleted, _ = LiveTask.objects.filter(app=app).filter(state_at__lte=at).exclude(state_at=at, id__gt=pk).delete()
            tasks += deleted
    workers, _ = LiveWorker.objects.filter(heartbeat_at__lt=cutoff).delete()
    orders, _ = RevokeOrder.objects.filter(sent_at__lt=cutoff).delete()
    return {"tasks": tasks, "workers": workers, "revoke_orders": orders}


def prune_now_and_then() -> None:
    """From the ingest, at most every PRUNE_EVERY_S in a process: the table stays bounded even
    where no beat runs the periodic prune."""
    with _prune_lock:
        if time.monotonic() - _last_prune["at"] < PRUNE_EVERY_S:
            return
        _last_prune["at"] = time.monotonic()
    prune_live()


def apps_known() -> Iterable[str]:
    return sorted(set(LiveWorker.objects.values_list("app", flat=True).distinct()) | set(LiveTask.objects.values_list("app", flat=True).distinct()))

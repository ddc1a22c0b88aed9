"""Where the watcher's output goes: spans to the span sink (the collector stores them as it stores
every worker's), tasks and workers to the live task list, failures to dead letters."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from flows.models import DeadLetter, LiveSource
from flows.operate.attached import attached_record_death
from flows.operate.live_tasks import record_tasks, record_workers
from tracing.sink import push

SEEN_THROUGH = "seen_through"  # envelope key of a dead letter known from events alone
EVENTS = "celery-events"


def write_spans(spans: list[dict[str, Any]]) -> None:
    push(spans)


def write_tasks(app: str, tasks: list[dict[str, Any]]) -> None:
    record_tasks(app, tasks, source=LiveSource.EVENTS)


def write_workers(app: str, workers: list[dict[str, Any]]) -> None:
    record_workers(app, workers, source=LiveSource.EVENTS)


def write_deaths(app: str, deaths: list[dict[str, Any]]) -> list[int]:
    """Dead letters through the agent's one path (attached_record_death), marked as seen through
    events so the console refuses a requeue nobody could send and says why."""
    stored = []
    with transaction.atomic():
        for report in deaths:
            row = attached_record_death(app=app, report=report)
            envelope = row.envelope if isinstance(row.envelope, dict) else {}
            # Ours (not a row an agent stored first, with the exact call) and not yet marked.
            if envelope.get("call_repr") == report["call_repr"] and envelope.get(SEEN_THROUGH) != EVENTS:
                DeadLetter.objects.filter(pk=row.pk).update(envelope={**envelope, SEEN_THROUGH: EVENTS})
            stored.append(row.pk)
    return stored


def events_only(dead: DeadLetter) -> bool:
    """A dead letter known from Celery's events alone: no exact call, no agent to send one."""
    return isinstance(dead.envelope, dict) and dead.envelope.get(SEEN_THROUGH) == EVENTS

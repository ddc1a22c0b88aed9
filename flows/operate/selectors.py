"""Reads the console needs from the engine's tables: dead letters (filtered, keyset-paged,
grouped by cause) and sagas (listed, and one saga's plan against what actually ran)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone

from flows.core.registry import catalog
from flows.core.sagas import ACTION, COMPENSATION
from flows.models import DeadLetter, SagaInstance, SagaStep
from flows.operate.live_tasks import apps_known
from tracing.redaction import redact_text

# The app filter's value for Flowscope's own flows (their dead letters have no app). Parentheses
# are in no attached app's name (console.api.agent allows letters, digits and . : @ - _).
OWN_FLOWS = "(flowscope)"


@dataclasses.dataclass(frozen=True)
class DeadLetterFilter:
    since: datetime | None = None
    until: datetime | None = None
    message_type: str = ""
    queue: str = ""
    consumer: str = ""
    state: str = ""
    fingerprint: str = ""
    app: str = ""  # an attached app's name, OWN_FLOWS for Flowscope's own, "" for all

    def apply(self, rows: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        if self.app:
            rows = rows.filter(app="" if self.app == OWN_FLOWS else self.app)
        if self.since:
            rows = rows.filter(dead_at__gte=self.since)
        if self.until:
            rows = rows.filter(dead_at__lt=self.until)
        for field in ("message_type", "queue", "consumer", "state", "fingerprint"):
            value = getattr(self, field)
            if value:
                rows = rows.filter(**{field: value})
        return rows


class BadCursor(ValueError):
    pass


def _encode_cursor(row: DeadLetter) -> str:
    return base64.urlsafe_b64encode(f"{row.dead_at.isoformat()}|{row.pk}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, pk = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), int(pk)
    except (ValueError, UnicodeDecodeError):
        raise BadCursor(f"cursor {cursor!r} is not one this API gave out") from None


def dead_letters_page(filters: DeadLetterFilter, *, cursor: str = "", limit: int = 50) -> tuple[list[DeadLetter], str]:
    """Newest first; keyset pagination on (dead_at, id), so page 1,000 costs what page 1 does.
    Returns the rows and the cursor of the next page ('' at the end)."""
    rows = filters.apply(DeadLetter.objects.all())
    if cursor:
        at, pk = _decode_cursor(cursor)
        rows = rows.filter(Q(dead_at__lt=at) | Q(dead_at=at, id__lt=pk))
    page = list(rows.order_by("-dead_at", "-id").defer("traceback", "envelope")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (_encode_cursor(page[-1]) if more and page else "")


def dead_letter_groups(filters: DeadLetterFilter, *, limit: int = 50) -> list[dict[str, Any]]:
    """Dead letters grouped by cause, largest first: count, first and last seen, an example."""
    groups = list(
        filters.apply(DeadLetter.objects.all())
        .values("fingerprint")
        .annotate(count=Count("id"), first_seen=Min("dead_at"), last_seen=Max("dead_at"), example_id=Max("id"))
        .order_by("-count", "-last_seen")[:limit]
    )
    examples = {d.pk: d for d in DeadLetter.objects.filter(pk__in=[g["example_id"] for g in groups]).only("id", "error_type", "error_message", "message_type", "consumer", "app")}
    for group in groups:
        example = examples.get(group["example_id"])
        group.update(
            {
                "error_type": example.error_type if example else "",
                "error_message": redact_text(example.error_message)[:300] if example else "",  # shown on pages and the live socket
                "message_type": example.message_type if example else "",
                "consumer": example.consumer if example else "",
                "app": example.app if example else "",
            }
        )
    return groups


def known_apps() -> list[str]:
    """Attached apps the console has heard of: from their live tasks and workers, and from their
    dead letters (an app whose workers are gone may still have some)."""
    dead = DeadLetter.objects.exclude(app="").values_list("app", flat=True).distinct()
    return sorted(set(apps_known()) | set(dead))


def dead_letter_counts() -> dict[str, int]:
    return dict(DeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by())


def sagas_page(*, saga_type: str = "", state: str = "", limit: int = 50, before: datetime | None = None) -> list[SagaInstance]:
    rows = SagaInstance.objects.all()
    if saga_type:
        rows = rows.filter(saga_type=saga_type)
    if state:
        rows = rows.filter(state=state)
    if before:
        rows = rows.filter(started_at__lt=before)
    return list(rows.order_by("-started_at")[:limit])


def saga_counts() -> dict[str, int]:
    return dict(SagaInstance.objects.values_list("state").annotate(n=Count("id")).order_by())


def saga_plan(saga: SagaInstance) -> list[dict[str, Any]]:
    """The declared steps against what happened: for each step its action and compensation,
    each with its outcome (succeeded, failed, running, pending, not needed), timing and error."""
    definition = catalog.sagas.get(saga.saga_type)
    history: dict[tuple[int, str], list[SagaStep]] = {}
    for record in saga.steps.order_by("finished_at", "id"):
        history.setdefault((record.index, record.phase), []).append(record)
    names = [s.name for s in definition.steps] if definition else sorted({i for i, _ in history})
    plan = []
    for index, name in enumerate(names):
        row: dict[str, Any] = {"index": index, "name": name}
        for phase in (ACTION, COMPENSATION):
            records = history.get((index, phase), [])
            last = records[-1] if records else None
            if last is not None:
                status = last.outcome
            elif saga.current_step == index and ((phase == ACTION and saga.state == "running") or (phase == COMPENSATION and saga.state in ("compensating", "failed"))):
                status = "running"
            elif phase == COMPENSATION and (saga.state in ("running", "completed") or (saga.failed_step is not None and index >= saga.failed_step)):
                status = "not needed"
            elif phase == COMPENSATION and definition and not definition.steps[index].compensation:
                status = "none declared"
            else:
                status = "pending"
            row[phase] = {
                "status": status,
                "started_at": last.started_at if last else None,
                "finished_at": last.finished_at if last else None,
                "duration_ms": round((last.finished_at - last.started_at).total_seconds() * 1000, 1) if last else None,
                "attempts": last.attempts if last else 0,
                "error": last.error if last else "",
                "message_id": str(last.message_id) if last else "",
            }
        plan.append(row)
    return plan


def saga_age_seconds(saga: SagaInstance) -> float:
    end = saga.finished_at or timezone.now()
    return (end - saga.started_at).total_seconds()

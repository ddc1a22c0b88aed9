"""Bulk requeue: a dry-run count first, then a job that requeues at a set rate, shows its
progress and can be cancelled. The job runs on a worker in slices of a few seconds, each
re-enqueueing the next, so no broker message stays unacknowledged for long."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from flows.deadletters import dead_letter_requeue
from flows.errors import FlowsError
from flows.models import DeadLetter, RequeueJob
from flows.selectors import DeadLetterFilter

SLICE_SECONDS = 5.0
BATCH = 100
MAX_RATE = 100_000.0


def _filter_from_json(data: dict[str, Any]) -> DeadLetterFilter:
    values = dict(data)
    for name in ("since", "until"):
        if values.get(name):
            values[name] = datetime.fromisoformat(values[name])
    return DeadLetterFilter(**values)


def _filter_to_json(filters: DeadLetterFilter) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dataclasses.asdict(filters).items() if v}


def _candidates(*, filters: DeadLetterFilter | None, ids: list[int] | None) -> QuerySet[DeadLetter]:
    rows = DeadLetter.objects.filter(state=DeadLetter.State.DEAD)
    if ids is not None:
        return rows.filter(pk__in=ids)
    return (filters or DeadLetterFilter()).apply(rows)


def requeue_count(*, filters: DeadLetterFilter | None = None, ids: list[int] | None = None) -> int:
    """The dry run: how many dead letters a job with these arguments would requeue now."""
    return _candidates(filters=filters, ids=ids).count()


def requeue_job_start(*, actor: str, filters: DeadLetterFilter | None = None, ids: list[int] | None = None, rate_per_s: float | None = None) -> RequeueJob:
    if rate_per_s is not None and not 0 < rate_per_s <= MAX_RATE:
        raise ValueError(f"rate must lie between 0 and {MAX_RATE:g} messages a second, or be left out")
    if ids is not None and not ids:
        raise ValueError("the selection is empty")
    if filters is not None and ids is not None:
        raise ValueError("give a filter or a selection, not both")
    from flows.tasks import run_requeue_job

    with transaction.atomic():
        candidates = _candidates(filters=filters, ids=ids)
        total = candidates.count()
        if not total:
            raise FlowsError("nothing to requeue: no dead letter matches")
        job = RequeueJob.objects.create(
            created_by=actor[:150],
            filters=_filter_to_json(filters) if filters else {},
            ids=list(ids or []),
            rate_per_s=rate_per_s,
            max_id=candidates.order_by("-id").values_list("id", flat=True).first() or 0,
            total=total,
        )
        transaction.on_commit(lambda: run_requeue_job.apply_async(args=[job.pk], queue="flows.control"))
    return job


def requeue_job_cancel(*, job_id: int) -> bool:
    return RequeueJob.objects.filter(pk=job_id, state=RequeueJob.State.RUNNING).update(state=RequeueJob.State.CANCELLED, finished_at=timezone.now()) == 1


class _Progress:
    """Progress written back at most every quarter second; each write also tells whether the
    job is still running (an operator may have cancelled it)."""

    EVERY = 0.25

    def __init__(self, job: RequeueJob) -> None:
        self.job = job
        self.done = self.skipped = 0
        self.written_at = time.monotonic()

    def count(self, requeued: bool) -> None:
        self.done += requeued
        self.skipped += not requeued

    def due(self) -> bool:
        return time.monotonic() - self.written_at >= self.EVERY

    def flush(self) -> bool:
        running = RequeueJob.objects.filter(pk=self.job.pk, state=RequeueJob.State.RUNNING).update(
            done=F("done") + self.done, skipped=F("skipped") + self.skipped, cursor_id=self.job.cursor_id
        )
        self.done = self.skipped = 0
        self.written_at = time.monotonic()
        return running == 1


def requeue_job_run_slice(job_id: int, *, slice_seconds: float = SLICE_SECONDS) -> bool:
    """Requeue for up to `slice_seconds`; True when the job needs another slice."""
    job = RequeueJob.objects.filter(pk=job_id, state=RequeueJob.State.RUNNING).first()
    if job is None:
        return False  # cancelled, finished, or a redelivered slice of a job already done
    filters = None if job.ids else _filter_from_json(job.filters)
    rows = _candidates(filters=filters, ids=job.ids or None).filter(pk__gt=job.cursor_id, pk__lte=job.max_id).order_by("pk")
    started = time.monotonic()
    sent = 0
    interval = 1.0 / job.rate_per_s if job.rate_per_s else 0.0
    progress = _Progress(job)
    while time.monotonic() - started < slice_seconds:
        batch = list(rows.filter(pk__gt=job.cursor_id).values_list("pk", flat=True)[:BATCH])
        if not batch:
            if progress.flush():
                RequeueJob.objects.filter(pk=job.pk, state=RequeueJob.State.RUNNING).update(state=RequeueJob.State.DONE, finished_at=timezone.now(), cursor_id=job.max_id)
            return False
        for pk in batch:
            if interval:
                # Paced from the slice's start, so the achieved rate holds over time instead of
                # drifting with each message's own cost.
                wait = started + sent * interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            try:
                requeued = dead_letter_requeue(dead_letter_id=pk, actor=f"{job.created_by} (job {job.pk})")
            except FlowsError:
                requeued = False
            sent += 1
            job.cursor_id = pk
            progress.count(requeued)
            if progress.due() and not progress.flush():
                return False  # cancelled meanwhile: stop after the message in hand
            if time.monotonic() - started >= slice_seconds:
                break
        if not progress.flush():
            return False
    return True

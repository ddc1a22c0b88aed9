"""Bulk requeue: a dry-run count first, then a job that requeues at a set rate, shows its
progress and can be cancelled. The job runs on a worker in slices of a few seconds, each
re-enqueueing the next, so no broker message stays unacknowledged for long."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from flows.core.errors import FlowsError, InvalidArgument
from flows.models import DeadLetter, RequeueJob
from flows.operate.attached import requeue_attached
from flows.operate.pacing import TokenBucket
from flows.operate.requeue import requeue_batch, requeue_recover_unconfirmed
from flows.operate.selectors import DeadLetterFilter
from flows.produce.publishing import one_connection_for_batches

SLICE_SECONDS = 5.0
BATCH = 500
BATCH_SECONDS = 0.05
MAX_RATE = 100_000.0
# A job runs in slices, each a task on the engine's control queue (flows.operate.tasks).
RUN_REQUEUE_JOB_TASK = "flows.run_requeue_job"
CONTROL_QUEUE = "flows.control"


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
        raise InvalidArgument(f"rate must lie between 0 and {MAX_RATE:g} messages a second, or be left out")
    if ids is not None and not ids:
        raise InvalidArgument("the selection is empty")
    if filters is not None and ids is not None:
        raise InvalidArgument("give a filter or a selection, not both")
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
        transaction.on_commit(lambda: current_app.send_task(RUN_REQUEUE_JOB_TASK, args=[job.pk], queue=CONTROL_QUEUE))
    return job


def requeue_job_cancel(*, job_id: int) -> bool:
    return RequeueJob.objects.filter(pk=job_id, state=RequeueJob.State.RUNNING).update(state=RequeueJob.State.CANCELLED, finished_at=timezone.now()) == 1


def batch_size(rate_per_s: float | None) -> int:
    """Dead letters claimed and published together: as many as BATCH_SECONDS of the asked rate
    (so pacing stays even and a cancel lands within that much), BATCH when unlimited."""
    if not rate_per_s:
        return BATCH
    return max(1, min(BATCH, int(rate_per_s * BATCH_SECONDS)))


def _record_progress(job: RequeueJob, *, done: int, skipped: int) -> bool:
    """Count a batch into the job (a cancelled one too: its batch in hand did go out) and say
    whether the job is still running (an operator may have cancelled it meanwhile)."""
    jobs = RequeueJob.objects.filter(pk=job.pk)
    jobs.update(done=F("done") + done, skipped=F("skipped") + skipped, cursor_id=job.cursor_id)
    return jobs.filter(state=RequeueJob.State.RUNNING).exists()


def requeue_job_run_slice(job_id: int, *, slice_seconds: float = SLICE_SECONDS, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Requeue for up to `slice_seconds`; True when the job needs another slice.

    Batch by batch: claim, publish, write progress (which is also where a cancel is seen, so a
    cancelled job stops after the batch in hand). With a rate, a token bucket paces the batches.
    """
    job = RequeueJob.objects.filter(pk=job_id, state=RequeueJob.State.RUNNING).first()
    if job is None:
        return False  # cancelled, finished, or a redelivered slice of a job already done
    requeue_recover_unconfirmed()  # requeues a crashed process claimed but never confirmed as sent
    filters = None if job.ids else _filter_from_json(job.filters)
    rows = _candidates(filters=filters, ids=job.ids or None).filter(pk__lte=job.max_id).order_by("pk")
    size = batch_size(job.rate_per_s)
    # Room for a second's worth: a job that fell behind (a slow moment on a busy machine) catches
    # up within the second instead of ending below the asked rate.
    bucket = TokenBucket(job.rate_per_s, capacity=max(size, job.rate_per_s), clock=clock, sleep=sleep) if job.rate_per_s else None
    actor = f"{job.created_by} (job {job.pk})"
    started = clock()
    # One broker connection for the slice's batches, not one a batch (on RabbitMQ each would be
    # a TCP and AMQP handshake).
    with one_connection_for_batches():
        while clock() - started < slice_seconds:
            batch = list(rows.filter(pk__gt=job.cursor_id).values_list("pk", flat=True)[:size])
            if not batch:
                RequeueJob.objects.filter(pk=job.pk, state=RequeueJob.State.RUNNING).update(state=RequeueJob.State.DONE, finished_at=timezone.now(), cursor_id=job.max_id)
                return False
            if bucket is not None:
                bucket.take(len(batch))
            requeued = requeue_batch(ids=batch, actor=actor) + requeue_attached(ids=batch, actor=actor)  # each takes its own kind
            job.cursor_id = batch[-1]
            if not _record_progress(job, done=len(requeued), skipped=len(batch) - len(requeued)):
                return False  # cancelled meanwhile: stop after the batch in hand
    return True

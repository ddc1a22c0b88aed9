"""Bulk requeue: a dry-run count first, then a job that requeues at a set rate, shows its
progress and can be cancelled. The job runs on a worker in slices of a few seconds, each
re-enqueueing the next, so no broker message stays unacknowledged for long.

A job tests the water before it floods:

1. Canary (state "canary"): it requeues its first `canary_size` dead letters and waits for their
   outcomes (flows.operate.requeue_outcomes) until all are known or `canary_timeout_s` has
   passed. A copy still "requeued" then is not yet known: it neither passes nor fails, and the
   verdict is on the outcomes known; with none known at all the job pauses ("no outcome").
   More than `max_failure_share` of the known ones dead again pauses the job ("paused", with
   `paused_reason`), the rest unsent; otherwise it runs on. A canary of 0 skips this step.
2. Ramp (state "running"): from the canary's size a second, doubling every second up to the
   job's rate (or to MAX_RATE without one), so a problem the canary was too small to show meets
   a trickle rather than the full rate. A job started without a canary does not ramp.
3. Watch: while it runs, the newest outcomes of its requeues (a sliding window) are checked
   every WINDOW_CHECK_SECONDS; past the share, the job pauses itself after the batch in hand.
4. An operator resumes a paused job (it ramps again, and only outcomes after the resume count
   in its window) or cancels it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import Count, F, Max, Min, QuerySet
from django.utils import timezone

from flows.core.errors import FlowsError, InvalidArgument
from flows.models import DeadLetter, RequeueJob
from flows.operate.attached import requeue_attached
from flows.operate.pacing import TokenBucket
from flows.operate.requeue import requeue_batch, requeue_recover_unconfirmed
from flows.operate.requeue_outcomes import Outcomes, canary_outcomes, recent_outcomes, too_many_failed
from flows.operate.selectors import DeadLetterFilter
from flows.produce.publishing import one_connection_for_batches

SLICE_SECONDS = 5.0
BATCH = 500
BATCH_SECONDS = 0.05
MAX_RATE = 100_000.0
# A job runs in slices, each a task on the engine's control queue (flows.operate.tasks).
RUN_REQUEUE_JOB_TASK = "flows.run_requeue_job"
CONTROL_QUEUE = "flows.control"
CANARY_SIZE = 10
MAX_CANARY = 10_000
MAX_FAILURE_SHARE = 0.2
CANARY_TIMEOUT_SECONDS = 60.0
MAX_CANARY_TIMEOUT_SECONDS = 3600.0
CANARY_POLL_SECONDS = 0.2
WINDOW_CHECK_SECONDS = 0.5
RAMP_DOUBLING_SECONDS = 1.0
ACTIVE = (RequeueJob.State.CANARY, RequeueJob.State.RUNNING)


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


def requeue_job_start(
    *,
    actor: str,
    filters: DeadLetterFilter | None = None,
    ids: list[int] | None = None,
    rate_per_s: float | None = None,
    canary_size: int = CANARY_SIZE,
    max_failure_share: float = MAX_FAILURE_SHARE,
    canary_timeout_s: float = CANARY_TIMEOUT_SECONDS,
) -> RequeueJob:
    if rate_per_s is not None and not 0 < rate_per_s <= MAX_RATE:
        raise InvalidArgument(f"rate must lie between 0 and {MAX_RATE:g} messages a second, or be left out")
    if not 0 <= canary_size <= MAX_CANARY:
        raise InvalidArgument(f"canary_size must lie between 0 (no canary) and {MAX_CANARY}")
    if not 0 <= max_failure_share <= 1:
        raise InvalidArgument("max_failure_share must lie between 0 and 1")
    if not 0 < canary_timeout_s <= MAX_CANARY_TIMEOUT_SECONDS:
        raise InvalidArgument(f"canary_timeout_s must lie between 0 and {MAX_CANARY_TIMEOUT_SECONDS:g} seconds")
    if ids is not None and not ids:
        raise InvalidArgument("the selection is empty")
    if filters is not None and ids is not None:
        raise InvalidArgument("give a filter or a selection, not both")
    with transaction.atomic():
        candidates = _candidates(filters=filters, ids=ids)
        bounds = candidates.aggregate(total=Count("id"), low=Min("id"), high=Max("id"))
        if not bounds["total"]:
            raise FlowsError("nothing to requeue: no dead letter matches")
        job = RequeueJob.objects.create(
            created_by=actor[:150],
            filters=_filter_to_json(filters) if filters else {},
            ids=list(ids or []),
            rate_per_s=rate_per_s,
            max_id=bounds["high"],
            min_id=bounds["low"],
            total=bounds["total"],
            state=RequeueJob.State.CANARY if canary_size else RequeueJob.State.RUNNING,
            canary_size=canary_size,
            max_failure_share=max_failure_share,
            canary_timeout_s=canary_timeout_s,
        )
        transaction.on_commit(lambda: _next_slice(job.pk))
    return job


def _next_slice(job_id: int) -> None:
    current_app.send_task(RUN_REQUEUE_JOB_TASK, args=[job_id], queue=CONTROL_QUEUE)


def requeue_job_cancel(*, job_id: int) -> bool:
    """Cancel a job in its canary, running or paused: it stops after the batch in hand."""
    states = (*ACTIVE, RequeueJob.State.PAUSED)
    return RequeueJob.objects.filter(pk=job_id, state__in=states).update(state=RequeueJob.State.CANCELLED, finished_at=timezone.now()) == 1


def requeue_job_resume(*, job_id: int) -> bool:
    """Go on with a paused job (an operator judged its failures acceptable, or fixed their
    cause): it ramps up again, and its window counts only outcomes from here. False when it is
    not paused."""
    job = RequeueJob.objects.filter(pk=job_id, state=RequeueJob.State.PAUSED).first()
    if job is None:
        return False
    with transaction.atomic():
        resumed = RequeueJob.objects.filter(pk=job.pk, state=RequeueJob.State.PAUSED).update(
            state=RequeueJob.State.RUNNING, paused_reason="", ramp_from=timezone.now(), window_after_id=job.cursor_id, canary_ended_at=job.canary_ended_at or timezone.now()
        )
        if resumed:
            transaction.on_commit(lambda: _next_slice(job.pk))
    return resumed == 1


def batch_size(rate_per_s: float | None) -> int:
    """Dead letters claimed and published together: as many as BATCH_SECONDS of the asked rate
    (so pacing stays even and a cancel lands within that much), BATCH when unlimited."""
    if not rate_per_s:
        return BATCH
    return max(1, min(BATCH, int(rate_per_s * BATCH_SECONDS)))


def _record_progress(job: RequeueJob, *, done: int, skipped: int, canary: list[int] | None = None) -> bool:
    """Count a batch into the job (a cancelled one too: its batch in hand did go out), with the
    ids a canary batch requeued, and say whether the job is still going (an operator may have
    cancelled it meanwhile)."""
    jobs = RequeueJob.objects.filter(pk=job.pk)
    with transaction.atomic():
        if canary is not None:
            # Merged with the stored ones, the row locked: a redelivered slice running beside
            # this one must not write its own list over this one's.
            stored = jobs.select_for_update().values_list("canary_ids", flat=True).get()
            job.canary_ids = sorted({*stored, *canary})
            jobs.update(canary_ids=job.canary_ids)
        jobs.update(done=F("done") + done, skipped=F("skipped") + skipped, cursor_id=job.cursor_id)
    return jobs.filter(state__in=ACTIVE).exists()


def _requeue(job: RequeueJob, batch: list[int]) -> list[int]:
    return requeue_batch(ids=batch, actor=job.actor) + requeue_attached(ids=batch, actor=job.actor)  # each takes its own kind


def _finish(job: RequeueJob) -> None:
    RequeueJob.objects.filter(pk=job.pk, state__in=ACTIVE).update(state=RequeueJob.State.DONE, finished_at=timezone.now(), cursor_id=job.max_id)


def _pause(job: RequeueJob, *, from_state: str, reason: str, **fields: Any) -> None:
    RequeueJob.objects.filter(pk=job.pk, state=from_state).update(state=RequeueJob.State.PAUSED, paused_reason=reason, **fields)


def _share(outcomes: Outcomes) -> str:
    return f"{outcomes.failed_again} of {outcomes.known} ({100 * (outcomes.failure_share or 0):.0f} %)"


def requeue_job_run_slice(job_id: int, *, slice_seconds: float = SLICE_SECONDS, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Work on the job for up to `slice_seconds`; True when it needs another slice."""
    job = RequeueJob.objects.filter(pk=job_id, state__in=ACTIVE).first()
    if job is None:
        return False  # paused, cancelled, finished, or a redelivered slice of a job already done
    requeue_recover_unconfirmed()  # requeues a crashed process claimed but never confirmed as sent
    filters = None if job.ids else _filter_from_json(job.filters)
    rows = _candidates(filters=filters, ids=job.ids or None).filter(pk__lte=job.max_id).order_by("pk")
    started = clock()
    deadline = started + slice_seconds
    # One broker connection for the slice's batches, not one a batch (on RabbitMQ each would be
    # a TCP and AMQP handshake).
    with one_connection_for_batches():
        if job.state == RequeueJob.State.CANARY:
            verdict = _canary(job, rows, deadline=deadline, clock=clock, sleep=sleep)
            if verdict is not None:
                return verdict
        return _run(job, rows, deadline=deadline, clock=clock, sleep=sleep)


def _canary(job: RequeueJob, rows: QuerySet[DeadLetter], *, deadline: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> bool | None:
    """Send the canary (once), then await its outcomes until the slice's deadline. Returns what
    the slice should answer, or None when the canary passed and the job runs on in this slice.

    1. Requeue candidates until `canary_size` went out (those skipped do not count), at the
       job's rate, noting their ids on the job with each batch, as its progress.
    2. Poll their outcomes; judge when all are known or the canary's time is up.
    3. Passed: "running", ramping from now. Failed, with more to send: "paused", saying why.
    """
    if not job.canary_started_at:
        job.canary_started_at = timezone.now()
        RequeueJob.objects.filter(pk=job.pk).update(canary_started_at=job.canary_started_at)
    size = batch_size(job.rate_per_s)
    bucket = TokenBucket(job.rate_per_s, capacity=max(size, job.rate_per_s), clock=clock, sleep=sleep) if job.rate_per_s else None
    while len(job.canary_ids) < job.canary_size:
        if clock() >= deadline:
            return True  # a large canary at a low rate: on in the next slice
        batch = list(rows.filter(pk__gt=job.cursor_id).values_list("pk", flat=True)[: min(size, job.canary_size - len(job.canary_ids))])
        if not batch:
            break  # fewer candidates than the canary: all of them are in it
        if bucket is not None:
            bucket.take(len(batch))
        requeued = _requeue(job, batch)
        job.cursor_id = batch[-1]
        if not _record_progress(job, done=len(requeued), skipped=len(batch) - len(requeued), canary=requeued):
            return False
    if not job.canary_ids:
        _finish(job)  # nothing could be sent: none was dead and sendable any more
        return False
    while True:
        outcomes = canary_outcomes(job)
        waited = (timezone.now() - job.canary_started_at).total_seconds()
        if not outcomes.pending or waited >= job.canary_timeout_s:
            break
        if clock() + CANARY_POLL_SECONDS > deadline:
            return True  # go on waiting in the next slice, the worker free meanwhile
        sleep(CANARY_POLL_SECONDS)
    ended = timezone.now()
    more = rows.filter(pk__gt=job.cursor_id).exists()
    if more and not outcomes.known:
        reason = f"canary: no outcome of the {len(job.canary_ids)} requeued within {job.canary_timeout_s:g} s (is a worker consuming their queue?)"
        _pause(job, from_state=RequeueJob.State.CANARY, reason=reason, canary_ended_at=ended)
        return False
    if more and too_many_failed(outcomes, job.max_failure_share):
        reason = f"canary: {_share(outcomes)} failed again, over the {100 * job.max_failure_share:g} % allowed; {outcomes.pending} still pending"
        _pause(job, from_state=RequeueJob.State.CANARY, reason=reason, canary_ended_at=ended)
        return False
    job.ramp_from = ended
    passed = RequeueJob.objects.filter(pk=job.pk, state=RequeueJob.State.CANARY).update(state=RequeueJob.State.RUNNING, canary_ended_at=ended, ramp_from=ended)
    return None if passed else False


def ramp_rate(job: RequeueJob, *, now: datetime) -> float | None:
    """The rate the job may send at now: doubling every RAMP_DOUBLING_SECONDS from the canary's
    size a second since `ramp_from`, up to its rate; its rate alone without a ramp."""
    if job.ramp_from is None:
        return job.rate_per_s
    target = job.rate_per_s or MAX_RATE
    doublings = max(0.0, (now - job.ramp_from).total_seconds()) / RAMP_DOUBLING_SECONDS
    start = float(max(1, job.canary_size))
    return target if doublings > 60 else min(target, start * 2**doublings)


def _run(job: RequeueJob, rows: QuerySet[DeadLetter], *, deadline: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    """Batch by batch: claim, publish, write progress (which is also where a cancel is seen, so a
    cancelled job stops after the batch in hand). With a rate (or a ramp), a token bucket paces
    the batches; every WINDOW_CHECK_SECONDS the newest outcomes may pause the job."""
    rate = ramp_rate(job, now=timezone.now())
    size = batch_size(rate)
    # Room for a second's worth: a job that fell behind (a slow moment on a busy machine) catches
    # up within the second instead of ending below the asked rate.
    bucket = TokenBucket(rate, capacity=max(size, rate), clock=clock, sleep=sleep) if rate else None
    checked = clock()
    while clock() < deadline:
        batch = list(rows.filter(pk__gt=job.cursor_id).values_list("pk", flat=True)[:size])
        if not batch:
            _finish(job)
            return False
        if bucket is not None:
            bucket.take(len(batch))
        requeued = _requeue(job, batch)
        job.cursor_id = batch[-1]
        if not _record_progress(job, done=len(requeued), skipped=len(batch) - len(requeued)):
            return False  # cancelled meanwhile: stop after the batch in hand
        if clock() - checked >= WINDOW_CHECK_SECONDS:
            checked = clock()
            recent = recent_outcomes(job)
            if too_many_failed(recent, job.max_failure_share):
                reason = f"failing again: {_share(recent)} of the newest outcomes, over the {100 * job.max_failure_share:g} % allowed"
                _pause(job, from_state=RequeueJob.State.RUNNING, reason=reason)
                return False
            if job.ramp_from is not None and bucket is not None and rate != (rate := ramp_rate(job, now=timezone.now())):
                size = batch_size(rate)
                bucket.retune(rate, capacity=max(size, rate))
    return True

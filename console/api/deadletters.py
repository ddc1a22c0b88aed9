"""Dead letters: list, groups, detail, requeue, discard, edit and requeue, bulk requeue jobs."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router
from ninja.errors import HttpError

from console.alerts.silences import group_silences
from console.api.answers import DeadLetterDetail, DeadLetterGroup, DeadLetterPage, Discarded, EditRequeued, RequeueCount, Requeued, RequeueJobOut
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import DiscardIn, EditRequeueIn, FilterQuery, RequeueJobIn, RowId
from console.audit import audit
from console.models import Role
from console.presenters import dead_letter_detail, dead_letter_summary, job_summary
from flows.models import DeadLetter, RequeueJob
from flows.operate.celery_events.writers import events_only
from flows.operate.dead_letters import dead_letter_discard, dead_letter_requeue
from flows.operate.requeue_jobs import requeue_count, requeue_job_cancel, requeue_job_resume, requeue_job_start
from flows.operate.selectors import dead_letter_groups, dead_letters_page
from tracing.redaction import redact

router = Router(tags=["dead letters"])
# One query parameter, not one per id: a page's 500 rows stay under Django's 1,000 fields a request.
IDS_PATTERN = r"^[1-9][0-9]{0,18}(,[1-9][0-9]{0,18}){0,499}$"
MAX_ROW_ID = 2**63 - 1


@router.get("/deadletters", response=answers(200, DeadLetterPage, 400, 422))
def list_dead_letters(
    request: HttpRequest,
    filters: Query[FilterQuery],
    cursor: str = "",
    limit: int = Query(50, ge=1, le=500),
    ids: str = Query("", max_length=10_000, pattern=IDS_PATTERN, description="up to 500 dead letter ids, comma-separated: only those"),
) -> dict[str, Any]:
    """Newest first. `next_cursor` fetches the following page (keyset: as fast on page 1,000 as on page 1).
    `ids` keeps to those dead letters, one page and no cursor: how a page refreshes the rows it shows.

    200 {"items": [...], "next_cursor": "..."}; 400 for a cursor this API did not give out.
    """
    need(request, Role.VIEWER)
    if ids:
        chosen = [int(i) for i in ids.split(",")]
        if max(chosen) > MAX_ROW_ID:
            raise HttpError(422, f"ids: a dead letter id is at most {MAX_ROW_ID}")
        rows = filters.to_filter().apply(DeadLetter.objects.filter(pk__in=chosen)).order_by("-dead_at", "-id").defer("traceback", "envelope")
        return {"items": [dead_letter_summary(d) for d in rows[:limit]], "next_cursor": ""}
    rows, next_cursor = dead_letters_page(filters.to_filter(), cursor=cursor, limit=limit)
    return {"items": [dead_letter_summary(d) for d in rows], "next_cursor": next_cursor}


@router.get("/deadletters/groups", response=answers(200, list[DeadLetterGroup], 422))
def list_groups(request: HttpRequest, filters: Query[FilterQuery], limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    """Dead letters grouped by cause (fingerprint): count, first and last seen, an example."""
    need(request, Role.VIEWER)
    groups = dead_letter_groups(filters.to_filter(), limit=limit)
    muted = group_silences(g["fingerprint"] for g in groups)
    return [{**g, "first_seen": g["first_seen"].isoformat(), "last_seen": g["last_seen"].isoformat(), "silence": muted.get(g["fingerprint"])} for g in groups]


@router.get("/deadletters/{dead_letter_id}", response=answers(200, DeadLetterDetail, 404, 422))
def get_dead_letter(request: HttpRequest, dead_letter_id: RowId) -> dict[str, Any]:
    """Envelope (payload redacted), error, traceback, attempts, trace ids and saga step. 404 if unknown."""
    need(request, Role.VIEWER)
    return dead_letter_detail(get_object_or_404(DeadLetter, pk=dead_letter_id))


def _conflict(dead: DeadLetter) -> HttpError:
    return HttpError(409, f"dead letter {dead.pk} is {dead.state}, not dead: nothing done")


def _sendable(dead: DeadLetter) -> None:
    """A dead letter known from Celery's events alone has no call to send and no agent to send it."""
    if events_only(dead):
        raise HttpError(
            409,
            f"dead letter {dead.pk} of app {dead.app!r} was seen through Celery's events only (manage.py watch_celery): events carry "
            "truncated reprs of args and kwargs, not the call, and no agent runs in the app to send it on its broker, so it cannot be "
            "requeued, as it was or corrected. Run the app's workers through flowscope-agent for exact requeue; discard this one once handled.",
        )


@router.post("/deadletters/{dead_letter_id}/requeue", response=answers(200, Requeued, 400, 404, 409, 413, 422, 503))
def requeue(request: HttpRequest, dead_letter_id: RowId) -> dict[str, Any]:
    """Republish the original envelope as a fresh series of attempts. 200 {"requeued": true};
    403 below operator; 404 unknown; 409 when it is no longer dead (someone got there first)."""
    principal = need(request, Role.OPERATOR)
    dead = get_object_or_404(DeadLetter, pk=dead_letter_id)
    _sendable(dead)
    with transaction.atomic():
        if not dead_letter_requeue(dead_letter_id=dead.pk, actor=principal.name):
            raise _conflict(DeadLetter.objects.get(pk=dead.pk))
        audit(principal, "requeue", object_type="dead_letter", object_ids=[dead.pk], before={"state": dead.state}, after={"state": "requeued"})
    return {"requeued": True, "dead_letter": dead_letter_summary(DeadLetter.objects.get(pk=dead.pk))}


@router.post("/deadletters/{dead_letter_id}/discard", response=answers(200, Discarded, 400, 404, 409, 413, 422))
def discard(request: HttpRequest, dead_letter_id: RowId, body: DiscardIn) -> dict[str, Any]:
    """Give up on a dead letter, with a reason. 409 when it is no longer dead."""
    principal = need(request, Role.OPERATOR)
    dead = get_object_or_404(DeadLetter, pk=dead_letter_id)
    with transaction.atomic():
        if not dead_letter_discard(dead_letter_id=dead.pk, actor=principal.name, reason=body.reason):
            raise _conflict(DeadLetter.objects.get(pk=dead.pk))
        audit(principal, "discard", object_type="dead_letter", object_ids=[dead.pk], before={"state": dead.state}, after={"state": "discarded"}, detail=body.reason)
    return {"discarded": True}


@router.post("/deadletters/{dead_letter_id}/edit-requeue", response=answers(200, EditRequeued, 400, 404, 409, 413, 422, 503))
def edit_and_requeue(request: HttpRequest, dead_letter_id: RowId, body: EditRequeueIn) -> dict[str, Any]:
    """Correct the payload (checked against the message type's schema: 400 naming the field
    otherwise) and requeue; the old and new payloads go to the audit log."""
    principal = need(request, Role.OPERATOR)
    dead = get_object_or_404(DeadLetter, pk=dead_letter_id)
    _sendable(dead)
    before = dead.envelope.get("payload")
    with transaction.atomic():
        if not dead_letter_requeue(dead_letter_id=dead.pk, actor=principal.name, payload=body.payload):
            raise _conflict(DeadLetter.objects.get(pk=dead.pk))
        after = DeadLetter.objects.get(pk=dead.pk).envelope.get("payload")
        audit(principal, "edit_requeue", object_type="dead_letter", object_ids=[dead.pk], before={"payload": redact(before)}, after={"payload": redact(after)})
    return {"requeued": True, "payload": redact(after)}


@router.post("/requeue-jobs", response=answers(200, RequeueJobOut | RequeueCount, 400, 409, 413, 422, 503))
def start_requeue_job(request: HttpRequest, body: RequeueJobIn) -> dict[str, Any]:
    """Requeue a selection (`ids`) or everything matching a filter, at `rate_per_s`.
    With `dry_run` only counts: 200 {"count": n}. Otherwise 200 with the job (poll it, or
    watch its progress on the live socket); 409 when nothing matches.

    The job first sends a canary of `canary_size` (10; 0 skips it) and awaits their outcomes
    (up to `canary_timeout_s`); it pauses, the rest unsent, when more than `max_failure_share`
    (0.2) of those known failed again, else ramps up to the rate, pausing itself if the newest
    outcomes fail again past that share. Its answer carries the canary's result and the counts
    of outcomes so far: {"state": "canary", "canary": {"sent": 10, "succeeded": 9, "failed_again": 1,
    "pending": 0, ...}, "outcomes": {...}, "paused_reason": ""}."""
    principal = need(request, Role.OPERATOR)
    filters = None if body.ids is not None else body.to_filter()
    if body.dry_run:
        return {"count": requeue_count(filters=filters, ids=body.ids)}
    with transaction.atomic():
        job = requeue_job_start(
            actor=principal.name,
            filters=filters,
            ids=body.ids,
            rate_per_s=body.rate_per_s,
            canary_size=body.canary_size,
            max_failure_share=body.max_failure_share,
            canary_timeout_s=body.canary_timeout_s,
        )
        after = {"total": job.total, "rate_per_s": job.rate_per_s, "canary_size": job.canary_size, "max_failure_share": job.max_failure_share, "filters": job.filters, "ids": job.ids[:1000]}
        audit(principal, "bulk_requeue", object_type="requeue_job", object_ids=[job.pk], after=after)
    return job_summary(job)


@router.get("/requeue-jobs/{job_id}", response=answers(200, RequeueJobOut, 404, 422))
def get_requeue_job(request: HttpRequest, job_id: RowId) -> dict[str, Any]:
    need(request, Role.VIEWER)
    return job_summary(get_object_or_404(RequeueJob, pk=job_id))


@router.post("/requeue-jobs/{job_id}/cancel", response=answers(200, RequeueJobOut, 404, 409, 422))
def cancel_requeue_job(request: HttpRequest, job_id: RowId) -> dict[str, Any]:
    """Stop a job in its canary, running or paused, after the batch in hand. 409 otherwise."""
    principal = need(request, Role.OPERATOR)
    job = get_object_or_404(RequeueJob, pk=job_id)
    with transaction.atomic():
        if not requeue_job_cancel(job_id=job.pk):
            now = RequeueJob.objects.get(pk=job.pk).state  # it may have finished since it was read
            raise HttpError(409, f"job {job.pk} is {now}: only a job in its canary, running or paused can be cancelled")
        audit(principal, "cancel_bulk_requeue", object_type="requeue_job", object_ids=[job.pk], before={"done": job.done, "state": job.state})
    return job_summary(RequeueJob.objects.get(pk=job.pk))


@router.post("/requeue-jobs/{job_id}/resume", response=answers(200, RequeueJobOut, 404, 409, 422))
def resume_requeue_job(request: HttpRequest, job_id: RowId) -> dict[str, Any]:
    """Go on with a paused job: it ramps up to its rate again, and only outcomes from now on
    count towards pausing it again. 200 with the job ("running"); 409 when it is not paused."""
    principal = need(request, Role.OPERATOR)
    job = get_object_or_404(RequeueJob, pk=job_id)
    with transaction.atomic():
        if not requeue_job_resume(job_id=job.pk):
            raise HttpError(409, f"job {job.pk} is {RequeueJob.objects.get(pk=job.pk).state}, not paused")
        audit(principal, "resume_bulk_requeue", object_type="requeue_job", object_ids=[job.pk], before={"done": job.done, "paused_reason": job.paused_reason}, after={"state": "running"})
    return job_summary(RequeueJob.objects.get(pk=job.pk))

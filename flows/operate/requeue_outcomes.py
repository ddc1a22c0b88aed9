"""What became of a bulk requeue job's messages: resolved, dead again, or not yet known.

A job's requeues are the dead letters whose `requeued_by` is the job's actor (RequeueJob.actor),
which every claim writes (flows.operate.requeue.claim_dead), for the engine's dead letters and
attached apps' alike; the consumer (or the app's agent) then moves the row on: "resolved" when
the copy succeeded, "dead" again when it failed for good (discarded since counts as dead again
too). A row still "requeued" has no outcome yet. A dead letter requeued again by someone else
since leaves the job's counts: its latest requeue is no longer the job's.

Reads only; the job's runner (flows.operate.requeue_jobs) decides with them.
"""

from __future__ import annotations

import dataclasses

from django.db.models import Count

from flows.models import DeadLetter, RequeueJob

# The sliding window: the newest outcomes of the job's requeues, judged once it holds enough.
WINDOW = 20
WINDOW_MIN = 10
_FAILED_AGAIN = (DeadLetter.State.DEAD, DeadLetter.State.DISCARDED)


@dataclasses.dataclass(frozen=True)
class Outcomes:
    succeeded: int = 0
    failed_again: int = 0
    pending: int = 0

    @property
    def known(self) -> int:
        return self.succeeded + self.failed_again

    @property
    def failure_share(self) -> float | None:
        """Of the outcomes known, the share that died again; None with none known."""
        return self.failed_again / self.known if self.known else None

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _tally(counts: dict[str, int], *, sent: int | None = None) -> Outcomes:
    succeeded = counts.get(DeadLetter.State.RESOLVED, 0)
    failed = sum(counts.get(s, 0) for s in _FAILED_AGAIN)
    pending = counts.get(DeadLetter.State.REQUEUED, 0) if sent is None else sent - succeeded - failed
    return Outcomes(succeeded=succeeded, failed_again=failed, pending=pending)


def job_outcomes(job: RequeueJob) -> Outcomes:
    """Every requeue of the job so far (the canary's too)."""
    rows = DeadLetter.objects.filter(pk__gte=job.min_id, pk__lte=max(job.cursor_id, job.min_id), requeued_by=job.actor)
    return _tally(dict(rows.values_list("state").annotate(n=Count("id")).order_by()))


def canary_outcomes(job: RequeueJob) -> Outcomes:
    """The canary's requeues; one requeued again by someone else since counts as pending."""
    if not job.canary_ids:
        return Outcomes()
    rows = DeadLetter.objects.filter(pk__in=job.canary_ids, requeued_by=job.actor)
    return _tally(dict(rows.values_list("state").annotate(n=Count("id")).order_by()), sent=len(job.canary_ids))


def recent_outcomes(job: RequeueJob) -> Outcomes:
    """The newest WINDOW known outcomes among the job's requeues since its last resume (by dead
    letter id, the order they were sent in); empty until WINDOW_MIN are known."""
    rows = DeadLetter.objects.filter(pk__gt=max(job.window_after_id, job.min_id - 1), pk__lte=job.cursor_id, requeued_by=job.actor)
    states = list(rows.exclude(state=DeadLetter.State.REQUEUED).order_by("-pk").values_list("state", flat=True)[:WINDOW])
    if len(states) < WINDOW_MIN:
        return Outcomes()
    failed = sum(1 for s in states if s in _FAILED_AGAIN)
    return Outcomes(succeeded=len(states) - failed, failed_again=failed)


def too_many_failed(outcomes: Outcomes, max_failure_share: float) -> bool:
    share = outcomes.failure_share
    return share is not None and share > max_failure_share

"""Periodic and operator tasks: the saga sweeper, requeue recovery, live task pruning, bulk requeue job slices."""

from __future__ import annotations

from celery import shared_task

from flows.models import RequeueJob
from flows.operate.live_tasks import prune_live
from flows.operate.requeue import requeue_recover_unconfirmed
from flows.operate.requeue_jobs import ACTIVE, CONTROL_QUEUE, RUN_REQUEUE_JOB_TASK, requeue_job_run_slice
from flows.patterns.saga_state import sweep_stalled_sagas as sweep


@shared_task(name="flows.sweep_stalled_sagas")
def sweep_stalled_sagas() -> int:
    return sweep()


@shared_task(name="flows.recover_requeues")
def recover_requeues() -> int:
    """Send the requeues a process claimed and died before sending (periodic, every 30 s)."""
    return requeue_recover_unconfirmed()


@shared_task(name="flows.prune_live_tasks")
def prune_live_tasks() -> dict[str, int]:
    """Attached apps' live task history beyond its age or size bound (periodic, hourly)."""
    return prune_live()


@shared_task(name=RUN_REQUEUE_JOB_TASK, acks_late=True)
def run_requeue_job(job_id: int) -> None:
    try:
        more = requeue_job_run_slice(job_id)
    except Exception as exc:
        # Say so on the job, where the operator watches it, rather than only in a worker log.
        RequeueJob.objects.filter(pk=job_id, state__in=ACTIVE).update(state=RequeueJob.State.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    if more:
        run_requeue_job.apply_async(args=[job_id], queue=CONTROL_QUEUE)

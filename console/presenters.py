"""How engine rows are shown, to pages and API alike: payloads and errors always redacted."""

from __future__ import annotations

from typing import Any

from flows.core import telemetry
from flows.models import DeadLetter, RequeueJob, SagaInstance
from flows.operate.celery_events.writers import events_only
from flows.operate.requeue_outcomes import canary_outcomes, job_outcomes
from flows.operate.selectors import saga_age_seconds, saga_plan
from tracing.redaction import redact, redact_text


def dead_letter_summary(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.pk,
        "message_id": str(d.message_id),
        "message_type": d.message_type,
        "queue": d.queue,
        "consumer": d.consumer,
        "state": d.state,
        "error_type": d.error_type,
        "error_message": redact_text(d.error_message)[:500],
        "fingerprint": d.fingerprint,
        "attempts": d.attempts,
        "poison": d.poison,
        "dead_at": d.dead_at.isoformat(),
        "correlation_id": d.correlation_id,
        "app": d.app,
    }


def dead_letter_detail(d: DeadLetter) -> dict[str, Any]:
    # All of it, not the payload alone: a malformed delivery's envelope is stored as it arrived.
    envelope = redact(d.envelope) if isinstance(d.envelope, dict) else {"unparsed": redact_text(str(d.envelope))}
    return {
        **dead_letter_summary(d),
        "schema_version": d.schema_version,
        "causation_id": d.causation_id,
        "pattern": d.pattern,
        "envelope": envelope,
        "error_message": redact_text(d.error_message),
        "traceback": redact_text(d.traceback),
        "times_dead": d.times_dead,
        "series": d.series,
        "first_dead_at": d.first_dead_at.isoformat(),
        "requeued_at": d.requeued_at.isoformat() if d.requeued_at else None,
        "requeued_by": d.requeued_by,
        "resolved_at": d.resolved_at.isoformat() if d.resolved_at else None,
        "discarded_by": d.discarded_by,
        "discard_reason": d.discard_reason,
        "trace_id": d.trace_id,
        "requeue_trace_id": d.requeue_trace_id,
        "saga_id": str(d.saga_id) if d.saga_id else None,
        "saga_step": d.saga_step,
        "events_only": events_only(d),
    }


def saga_summary(s: SagaInstance) -> dict[str, Any]:
    return {
        "id": str(s.pk),
        "saga_type": s.saga_type,
        "state": s.state,
        "current_step": s.current_step,
        "correlation_id": s.correlation_id,
        "started_at": s.started_at.isoformat(),
        "updated_at": s.updated_at.isoformat(),
        "finished_at": s.finished_at.isoformat() if s.finished_at else None,
        "age_s": round(saga_age_seconds(s), 3),
    }


def saga_detail(s: SagaInstance) -> dict[str, Any]:
    return {
        **saga_summary(s),
        "data": redact(s.data),
        "error": redact_text(s.error),
        "failed_step": s.failed_step,
        "resumed": s.resumed,
        "trace_id": telemetry.trace_id_of(s.headers),
        "plan": [{**row, "action": _times(row["action"]), "compensation": _times(row["compensation"])} for row in saga_plan(s)],
        "dead_letters": list(s.dead_letters.values_list("id", flat=True)),
    }


def _times(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in entry.items()} | {"error": redact_text(entry["error"])}


def job_summary(job: RequeueJob) -> dict[str, Any]:
    return {
        "id": job.pk,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "skipped": job.skipped,
        "progress": round(job.progress, 4),
        "rate_per_s": job.rate_per_s,
        "created_by": job.created_by,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "paused_reason": job.paused_reason,
        "max_failure_share": job.max_failure_share,
        "canary": {
            "size": job.canary_size,
            "timeout_s": job.canary_timeout_s,
            "sent": len(job.canary_ids),
            **canary_outcomes(job).as_dict(),
            "seconds": round((job.canary_ended_at - job.canary_started_at).total_seconds(), 3) if job.canary_started_at and job.canary_ended_at else None,
        },
        "outcomes": job_outcomes(job).as_dict(),
    }

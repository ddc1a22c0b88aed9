"""The alerting's Celery tasks, found by autodiscovery (console/celery.py): the periodic
evaluation (CELERY_BEAT_SCHEDULE, every ALERTS_EVALUATE_SECONDS) and one delivery of a notice."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.utils import timezone

from console.alerts.evaluate import evaluate_rules
from console.alerts.models import Delivery, DeliveryState
from console.alerts.notify import DELIVER_TASK, notice
from console.alerts.transports import DeliveryFailed, send

log = logging.getLogger(__name__)


@shared_task(name="console.alerts.evaluate")
def evaluate_alerts() -> dict[str, int]:
    return evaluate_rules()


@shared_task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver(self: Task, delivery_id: int, max_attempts: int, backoff_seconds: float) -> str:
    """Send one notice; on failure retry after backoff_seconds * 2^(attempt-1), up to
    max_attempts, recording every attempt's reason on the Delivery."""
    delivery = Delivery.objects.select_related("channel", "alert__rule").filter(pk=delivery_id, state=DeliveryState.PENDING).first()
    if delivery is None:
        return "gone"  # sent already (a redelivered task), or muted since
    attempt = delivery.attempts + 1
    try:
        send(delivery.channel, notice(delivery))
    except DeliveryFailed as exc:
        reason = f"attempt {attempt} of {max_attempts}: {exc}"
        if attempt >= max_attempts:
            Delivery.objects.filter(pk=delivery.pk).update(attempts=attempt, state=DeliveryState.FAILED, last_error=reason, updated_at=timezone.now())
            log.warning("alert delivery %s to channel %s failed for good: %s", delivery.pk, delivery.channel_id, exc)
            return "failed"
        Delivery.objects.filter(pk=delivery.pk).update(attempts=attempt, last_error=reason, updated_at=timezone.now())
        raise self.retry(countdown=backoff_seconds * 2 ** (attempt - 1), exc=exc) from None
    Delivery.objects.filter(pk=delivery.pk).update(attempts=attempt, state=DeliveryState.SENT, sent_at=timezone.now(), last_error="", updated_at=timezone.now())
    return "sent"

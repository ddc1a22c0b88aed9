"""Notices of an alert: one Delivery per channel, each sent by a Celery task of its own (`deliver`,
here beside what dispatches it) once the transaction that made it commits: no notice for an
alert that was rolled back. A failed attempt is sent again after backoff * 2^(attempt - 1) seconds
up to the attempts the dispatching process's settings allow, each reason kept on the Delivery."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.alerts.models import Alert, Channel, Delivery, DeliveryKind, DeliveryState
from console.alerts.transports import DeliveryFailed, send
from flows.core.brokers import RABBITMQ, broker_kind
from flows.operate.requeue_jobs import CONTROL_QUEUE
from flows.produce import rabbitmq

log = logging.getLogger(__name__)


def channels_for(alert: Alert) -> list[Channel]:
    chosen = list(alert.rule.channels.filter(enabled=True))
    return chosen or list(Channel.objects.filter(enabled=True))


def dispatch(delivery: Delivery) -> None:
    """Send it from a worker after commit. The retry policy travels with the task, so the process
    that decided to notify (and its settings) decides how hard to try."""
    args = [delivery.pk, settings.ALERTS_DELIVERY_ATTEMPTS, settings.ALERTS_DELIVERY_BACKOFF_SECONDS]
    transaction.on_commit(lambda: deliver.apply_async(args=args, queue=CONTROL_QUEUE))


def notify(alert: Alert, kind: str, *, muted: bool = False) -> list[Delivery]:
    """A delivery per channel; muted ones are recorded and never sent."""
    made = []
    for channel in channels_for(alert):
        delivery = Delivery.objects.create(alert=alert, channel=channel, kind=kind, state=DeliveryState.MUTED if muted else DeliveryState.PENDING)
        if not muted:
            dispatch(delivery)
        made.append(delivery)
    return made


def send_test(channel: Channel) -> Delivery:
    delivery = Delivery.objects.create(channel=channel, kind=DeliveryKind.TEST)
    dispatch(delivery)
    return delivery


def notice(delivery: Delivery) -> dict[str, Any]:
    """The generic JSON body: what happened, to which rule, what it saw."""
    sent_at = int(time.time())
    alert = delivery.alert
    if alert is None:
        return {"event": "test", "summary": f"a test from Flowscope to channel {delivery.channel.name!r}", "delivery_id": delivery.pk, "sent_at": sent_at, "alert": None}
    rule = alert.rule
    return {
        "event": delivery.kind,
        "summary": alert.summary,
        "delivery_id": delivery.pk,
        "sent_at": sent_at,
        "alert": {
            "id": alert.pk,
            "state": alert.state,
            "subject": alert.subject,
            "started_at": alert.started_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "observed": alert.observed,
            "last_observed": alert.last_observed,
            "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind, "scope": rule.scope, "scope_value": rule.scope_value, "threshold": rule.threshold, "window_seconds": rule.window_seconds},
        },
        "at": timezone.now().isoformat(),
    }


def _send_later(args: list[Any], delay: float) -> None:
    """The next attempt after `delay` seconds, held by the broker on RabbitMQ (as the engine's own
    delayed sends are: a countdown held in a worker is what quorum queues punish), by the worker
    on Redis."""
    if broker_kind() == RABBITMQ:
        deliver.apply_async(args=args, **rabbitmq.delayed_send_options(CONTROL_QUEUE, delay))
    else:
        deliver.apply_async(args=args, queue=CONTROL_QUEUE, countdown=delay)


@shared_task(name="console.alerts.deliver", acks_late=True)
def deliver(delivery_id: int, max_attempts: int, backoff_seconds: float) -> str:
    """Send one notice, once: a delivery no longer pending (sent by a redelivered task, or muted
    since) is left alone."""
    delivery = Delivery.objects.select_related("channel", "alert__rule").filter(pk=delivery_id, state=DeliveryState.PENDING).first()
    if delivery is None:
        return "gone"
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
        _send_later([delivery.pk, max_attempts, backoff_seconds], backoff_seconds * 2 ** (attempt - 1))
        return "retrying"
    Delivery.objects.filter(pk=delivery.pk).update(attempts=attempt, state=DeliveryState.SENT, sent_at=timezone.now(), last_error="", updated_at=timezone.now())
    return "sent"

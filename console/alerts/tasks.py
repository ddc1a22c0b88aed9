"""The alerting's Celery tasks, for autodiscovery (console/celery.py): the periodic evaluation
(CELERY_BEAT_SCHEDULE, every ALERTS_EVALUATE_SECONDS) and one delivery of a notice."""

from __future__ import annotations

from celery import shared_task

from console.alerts.evaluate import evaluate_rules
from console.alerts.notify import deliver


@shared_task(name="console.alerts.evaluate")
def evaluate_alerts() -> dict[str, int]:
    return evaluate_rules()


__all__ = ["deliver", "evaluate_alerts"]

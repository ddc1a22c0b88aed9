"""Orders an attached app's agent leases: requeue and revoke orders alike.

The console cannot reach an attached app's broker, so it writes orders that the app's agents
take. Each pending order (never sent, unleased or its lease run out) goes to one agent at a
time, however many of the app's workers ask; one leased and never acknowledged is offered again
once its lease runs out (at least once).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Model, Q, QuerySet
from django.utils import timezone


def lease_pending(model: type[Model], *, app: str, limit: int, lease_seconds: float) -> QuerySet:
    """Lease up to `limit` of `app`'s pending orders of `model` (its fields app, sent_at, lease,
    leased_until) to the caller: the rows this caller holds now, oldest first."""
    now = timezone.now()
    token = uuid.uuid4().hex
    pending = model.objects.filter(app=app, sent_at__isnull=True).filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
    ids = list(pending.order_by("id").values_list("pk", flat=True)[:limit])
    if not ids:
        return model.objects.none()
    pending.filter(pk__in=ids).update(lease=token, leased_until=now + timedelta(seconds=lease_seconds))  # a rival's lease wins its rows
    return model.objects.filter(lease=token, pk__in=ids).order_by("id")

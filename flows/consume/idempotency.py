"""Idempotent consumption: an inbox row per (consumer, message id), in the handler's transaction."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from flows.models import InboxEntry
from tracing.redis import get_redis, key

DUPLICATES_KEY = key("duplicates")


def inbox_claim(*, consumer: str, message_id: str) -> bool:
    """Claim the message for this consumer; False when an earlier delivery already applied it.

    Call inside the handler's transaction: if the handler fails, the claim rolls back with it.
    """
    try:
        with transaction.atomic():
            InboxEntry.objects.create(consumer=consumer, message_id=message_id)
    except IntegrityError:
        return False
    return True


def duplicate_count(consumer: str) -> None:
    get_redis().hincrby(DUPLICATES_KEY, consumer, 1)


def duplicate_counts() -> dict[str, int]:
    return {k.decode(): int(v) for k, v in get_redis().hgetall(DUPLICATES_KEY).items()}

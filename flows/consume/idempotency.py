"""Idempotent consumption: an inbox row per (consumer, message id), in the handler's transaction."""

from __future__ import annotations

from django.db import connection
from django.utils import timezone

from flows.models import InboxEntry
from tracing.redis import get_redis, key

DUPLICATES_KEY = key("duplicates")

_meta = InboxEntry._meta
_CONSUMER, _MESSAGE, _AT = (_meta.get_field(name) for name in ("consumer", "message_id", "processed_at"))
_CLAIM = (
    f"INSERT INTO {_meta.db_table} ({_CONSUMER.column}, {_MESSAGE.column}, {_AT.column}) VALUES (%s, %s, %s) ON CONFLICT ({_CONSUMER.column}, {_MESSAGE.column}) DO NOTHING RETURNING {_meta.pk.column}"
)


def inbox_claim(*, consumer: str, message_id: str) -> bool:
    """Claim the message for this consumer; False when an earlier delivery already applied it.

    Call inside the handler's transaction: if the handler fails, the claim rolls back with it.
    One INSERT ... ON CONFLICT DO NOTHING RETURNING (PostgreSQL, SQLite 3.35+): a row back means
    this delivery made the claim. The ORM's create() needed a savepoint around it to survive the
    IntegrityError of a duplicate: two more round trips on every message.
    """
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, [_CONSUMER.get_db_prep_value(consumer, connection), _MESSAGE.get_db_prep_value(message_id, connection), _AT.get_db_prep_value(timezone.now(), connection)])
        return cursor.fetchone() is not None


def duplicate_count(consumer: str) -> None:
    get_redis().hincrby(DUPLICATES_KEY, consumer, 1)


def duplicate_counts() -> dict[str, int]:
    return {k.decode(): int(v) for k, v in get_redis().hgetall(DUPLICATES_KEY).items()}

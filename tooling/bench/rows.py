"""Dead letters made in bulk for the benchmark: they need not pass through the workers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from flows.models import DeadLetter
from tracing.bulk import db_datetime, insert_rows

COLUMNS = (
    "message_id",
    "message_type",
    "schema_version",
    "correlation_id",
    "causation_id",
    "queue",
    "consumer",
    "pattern",
    "envelope",
    "error_type",
    "error_message",
    "traceback",
    "fingerprint",
    "poison",
    "attempts",
    "state",
    "series",
    "times_dead",
    "first_dead_at",
    "dead_at",
    "trace_id",
    "requeue_trace_id",
    "requeued_by",
    "discarded_by",
    "discard_reason",
    "app",
)


def dead_letter_row(
    *, message_type: str, queue: str, consumer: str, envelope: str, fingerprint: str, state: str, at: datetime, correlation_id: str = "", message_id: uuid.UUID | None = None
) -> tuple[Any, ...]:
    message_id = message_id or uuid.uuid4()
    when = db_datetime(at)
    return (
        str(message_id) if connection.vendor == "postgresql" else message_id.hex,
        message_type,
        1,
        correlation_id,
        "",
        queue,
        consumer,
        "fire_and_forget",
        envelope,
        "builtins.ValueError",
        "bench",
        "",
        fingerprint,
        False,
        3,
        state,
        0,
        1,
        when,
        when,
        "",
        "",
        "",
        "",
        "",
        "",  # app: Flowscope's own flows (the field's default lives in Django, not in the table)
    )


def insert_dead_letters(rows: list[tuple[Any, ...]]) -> None:
    with transaction.atomic():
        insert_rows(DeadLetter._meta.db_table, COLUMNS, rows)

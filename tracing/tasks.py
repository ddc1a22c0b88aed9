from __future__ import annotations

from celery import shared_task

from tracing.partitions import create_ahead
from tracing.retention import prune_spans


@shared_task(name="tracing.prune_spans")
def prune_spans_task() -> dict[str, int]:
    return prune_spans()


@shared_task(name="tracing.create_span_partitions")
def create_span_partitions_task() -> int:
    """PostgreSQL's day partitions of spans and links, today's and TRACING_PARTITION_DAYS_AHEAD more."""
    return create_ahead()

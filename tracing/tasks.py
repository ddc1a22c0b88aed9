from __future__ import annotations

from celery import shared_task

from tracing.retention import prune_spans


@shared_task(name="tracing.prune_spans")
def prune_spans_task() -> dict[str, int]:
    return prune_spans()

"""Deleting old spans in small batches, so no long lock is ever held on the span table."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from tracing.models import EdgeStat, Span, SpanLink


def _delete_in_batches(queryset, batch: int) -> int:  # type: ignore[no-untyped-def]
    deleted = 0
    while True:
        ids = list(queryset.order_by("id").values_list("id", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += queryset.model.objects.filter(id__in=ids).delete()[0]


def prune_spans(*, older_than: timedelta | None = None, batch: int = 5000) -> dict[str, int]:
    """Delete spans, links and aggregates older than the retention (TRACING_RETENTION_DAYS)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = timezone.now() - (older_than if older_than is not None else timedelta(days=settings.TRACING_RETENTION_DAYS))
    return {
        "spans": _delete_in_batches(Span.objects.filter(start_time__lt=cutoff), batch),
        "links": _delete_in_batches(SpanLink.objects.filter(start_time__lt=cutoff), batch),
        "edge_stats": _delete_in_batches(EdgeStat.objects.filter(bucket__lt=cutoff), batch),
    }

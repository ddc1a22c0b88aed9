"""Deleting old spans in small batches, so no long lock is ever held on the span table."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from tracing.models import EdgeStat, Span, SpanLink, TraceSummary


def _delete_in_batches(queryset, batch: int) -> int:  # type: ignore[no-untyped-def]
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += queryset.model.objects.filter(pk__in=ids).delete()[0]


def prune_spans(*, older_than: timedelta | None = None, batch: int = 5000) -> dict[str, int]:
    """Delete spans, links, aggregates and trace summaries older than the retention
    (TRACING_RETENTION_DAYS). A trace's summary goes with its first span: what remains of a
    trace cut by the cutoff is no longer the trace its summary describes."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = timezone.now() - (older_than if older_than is not None else timedelta(days=settings.TRACING_RETENTION_DAYS))
    return {
        "spans": _delete_in_batches(Span.objects.filter(start_time__lt=cutoff), batch),
        "links": _delete_in_batches(SpanLink.objects.filter(start_time__lt=cutoff), batch),
        "edge_stats": _delete_in_batches(EdgeStat.objects.filter(bucket__lt=cutoff), batch),
        "trace_summaries": _delete_in_batches(TraceSummary.objects.filter(start_time__lt=cutoff), batch),
    }

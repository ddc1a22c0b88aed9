"""Deleting old spans: in small batches on SQLite, so no long lock is ever held on the span
table; on PostgreSQL by dropping whole day partitions (tracing.partitions)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from tracing import partitions
from tracing.models import EdgeHour, EdgeStat, Span, SpanLink, TraceSummary


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
    trace cut by the cutoff is no longer the trace its summary describes.

    On PostgreSQL also {"span_days_dropped", "link_days_dropped"} when whole days went; their
    rows are not counted in "spans" and "links" (counting them would cost a scan each)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = timezone.now() - (older_than if older_than is not None else timedelta(days=settings.TRACING_RETENTION_DAYS))
    dropped: dict[str, int] = {}
    if partitions.partitioned():
        # Whole days only, for everything, so a kept span keeps its trace's summary and edges:
        # the day at the cutoff stays until it is all past it (PostgreSQL keeps up to a day more).
        cutoff = partitions.day_start(cutoff)
        deleted, dropped = partitions.prune_before(cutoff, batch=batch)
    else:
        deleted = {
            "spans": _delete_in_batches(Span.objects.filter(start_time__lt=cutoff), batch),
            "links": _delete_in_batches(SpanLink.objects.filter(start_time__lt=cutoff), batch),
        }
    return (
        deleted
        | {
            "edge_stats": _delete_in_batches(EdgeStat.objects.filter(bucket__lt=cutoff), batch),
            # An hour goes once all of it is past the cutoff, with the last of its buckets.
            "edge_hours": _delete_in_batches(EdgeHour.objects.filter(bucket__lte=cutoff - timedelta(hours=1)), batch),
            "trace_summaries": _delete_in_batches(TraceSummary.objects.filter(start_time__lt=cutoff), batch),
        }
        | dropped
    )

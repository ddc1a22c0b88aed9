import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tracing import partitions, summaries
from tracing.models import EdgeHour, EdgeStat, Span, SpanLink, TraceSummary
from tracing.retention import prune_spans

pytestmark = pytest.mark.django_db


def make_span(i: int, age: timedelta) -> Span:
    return Span(trace_id=f"{i:032x}", span_id=f"{i:016x}", name="op", start_time=timezone.now() - age, duration_us=1)


def test_spans_links_aggregates_and_summaries_older_than_the_retention_go_in_batches_and_the_rest_stay():
    Span.objects.bulk_create([make_span(i, timedelta(days=10)) for i in range(23)] + [make_span(100 + i, timedelta(hours=1)) for i in range(5)])
    summaries.rebuild()
    SpanLink.objects.create(trace_id="a" * 32, span_id="b" * 16, linked_trace_id="c" * 32, linked_span_id="d" * 16, start_time=timezone.now() - timedelta(days=9))
    EdgeStat.objects.create(bucket=timezone.now() - timedelta(days=8), source="a", target="b", count=1)
    EdgeStat.objects.create(bucket=timezone.now(), source="a", target="b", count=1)
    # Hours: one long past, one ending at the cutoff, one the cutoff falls in (kept). PostgreSQL
    # prunes whole days, so its cutoff is the start of that day.
    cutoff = timezone.now() - timedelta(days=7)
    cutoff = partitions.day_start(cutoff) if partitions.partitioned() else cutoff
    for start in (cutoff - timedelta(days=1), cutoff - timedelta(hours=1), cutoff - timedelta(minutes=30)):
        EdgeHour.objects.create(bucket=start, source="a", target="b", count=1)

    deleted = prune_spans(older_than=timedelta(days=7), batch=5)

    assert deleted == {"spans": 23, "links": 1, "edge_stats": 1, "edge_hours": 2, "trace_summaries": 23}
    assert Span.objects.count() == 5 and SpanLink.objects.count() == 0 and EdgeStat.objects.count() == 1
    assert EdgeHour.objects.count() == 1
    assert sorted(TraceSummary.objects.values_list("trace_id", flat=True)) == [f"{100 + i:032x}" for i in range(5)]


def test_the_command_uses_the_configured_retention_and_checks_its_arguments(settings):
    settings.TRACING_RETENTION_DAYS = 1
    Span.objects.bulk_create([make_span(1, timedelta(days=2)), make_span(2, timedelta(hours=2))])
    out = io.StringIO()
    call_command("prune_spans", stdout=out)
    assert out.getvalue().strip() == "deleted 1 spans, deleted 0 links, deleted 0 edge stats, deleted 0 edge hours, deleted 0 trace summaries"
    with pytest.raises(CommandError, match="--days must not be negative"):
        call_command("prune_spans", "--days", "-1")
    with pytest.raises(CommandError, match="--batch must be at least 1"):
        call_command("prune_spans", "--batch", "0")

"""The collector's store on its fast path: inserted as it comes, the unique index as the check,
a lookup only when that refuses a row; times written below the ORM read back exactly."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection, transaction

from tests.test_collector import fake_span
from tracing.collector import store
from tracing.models import EdgeStat, Span, SpanLink

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_big_redelivered_batch_with_a_few_new_spans_stores_and_counts_only_those():
    spans = [fake_span("1" * 32, f"{i:016x}", queue="q.big", consumer="c_big") for i in range(1200)]
    assert store(spans) == 1200
    new = [fake_span("2" * 32, f"{i:016x}", queue="q.big", consumer="c_big") for i in range(3)]

    assert store(spans[::-1] + new) == 3  # more than one lookup chunk of stored spans, in another order
    assert Span.objects.filter(trace_id__in=["1" * 32, "2" * 32]).count() == 1203
    assert sum(EdgeStat.objects.filter(source="queue:q.big").values_list("count", flat=True)) == 1203


def test_a_span_listed_twice_in_one_batch_is_stored_and_counted_once():
    span = fake_span("3" * 32, "0000000000000001", queue="q.twice", consumer="c_twice")
    assert store([span, dict(span)]) == 1
    assert Span.objects.filter(trace_id="3" * 32).count() == 1
    assert EdgeStat.objects.get(source="queue:q.twice").count == 1


def test_start_times_and_links_written_below_the_orm_read_back_to_the_microsecond():
    start_ns = time.time_ns() - 1_234_567_891
    span = dict(fake_span("4" * 32, "0000000000000002"), st=start_ns, en=start_ns + 2_500_000, l=[["5" * 32, "0000000000000003", {}]])
    store([span])

    stored = Span.objects.get(trace_id="4" * 32)
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_ns // 1000)
    assert stored.start_time == expected and stored.duration_us == 2500
    assert stored.links == [{"trace_id": "5" * 32, "span_id": "0000000000000003", "attributes": {}}]
    link = SpanLink.objects.get(trace_id="4" * 32)
    assert (link.linked_trace_id, link.start_time) == ("5" * 32, expected)


def test_spans_either_side_of_a_bucket_boundary_count_into_their_own_buckets(settings):
    size = settings.TRACING_EDGE_BUCKET_SECONDS
    boundary_ns = (time.time_ns() // 1_000_000_000 // size) * size * 1_000_000_000
    ends = [boundary_ns - 1, boundary_ns, boundary_ns + 1, boundary_ns + 999_999_999]  # the last three: one second
    store([dict(fake_span("6" * 32, f"{i:016x}", queue="q.edge", consumer="c_edge"), st=end - 1_000_000, en=end) for i, end in enumerate(ends)])

    rows = EdgeStat.objects.filter(source="queue:q.edge").order_by("bucket")
    assert [(row.bucket.timestamp(), row.count) for row in rows] == [(boundary_ns // 1_000_000_000 - size, 1), (boundary_ns // 1_000_000_000, 3)]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's COPY path; SQLite inserts through Django's cursor")
def test_a_lock_the_collector_cannot_get_in_time_is_a_django_database_error_it_retries_on():
    """A TRUNCATE of the span links (a test's flush, a migration) made the COPY time out with
    psycopg's own error, which the collector did not catch: it ended (seen in CI on PostgreSQL)."""
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {SpanLink._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(10)
        span = dict(fake_span("6" * 32, "0000000000000004"), l=[["7" * 32, "0000000000000005", {}]])
        with pytest.raises(OperationalError, match="lock timeout"):
            store([span])
    finally:
        release.set()
        holder.join(10)
    assert store([span]) == 1 and SpanLink.objects.filter(trace_id="6" * 32).count() == 1

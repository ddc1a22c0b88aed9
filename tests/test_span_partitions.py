"""The span store by day on PostgreSQL (tracing.partitions): partitions made ahead, once, by any
number of nodes; stray rows in DEFAULT; retention by whole days; and what does not change on
either database: a span stored twice is stored and counted once, lookups by trace id find it."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from tests.test_collector import fake_span
from tooling.bench import prune
from tracing import partitions
from tracing.collector import store
from tracing.models import EdgeStat, Span, SpanLink
from tracing.retention import prune_spans
from tracing.selectors import trace_tree, traces_for

ON_POSTGRESQL = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only: SQLite keeps one plain span table, nothing partitioned")


def at(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def span_at(trace: str, span: str, moment: datetime, **kw) -> dict:
    ns = at(moment)
    return dict(fake_span(trace, span, **kw), st=ns, en=ns + 1_000_000)


def where(trace_id: str, table: str = "tracing_span") -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE trace_id = %s ORDER BY start_time", [trace_id])
        return [row[0] for row in cursor.fetchall()]


def today() -> datetime:
    return partitions.day_start(datetime.now(UTC))


@ON_POSTGRESQL
@pytest.mark.django_db
def test_today_and_the_days_ahead_have_partitions_made_once_for_both_tables(settings):
    ahead = settings.TRACING_PARTITION_DAYS_AHEAD + 4
    partitions.create_ahead(days_ahead=ahead)
    days = [today().date() + timedelta(days=n) for n in range(ahead + 1)]
    for table in partitions.TABLES:
        assert set(days) <= set(partitions.day_partitions(table))
    assert partitions.create_ahead(days_ahead=ahead) == 0


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)
def test_two_nodes_making_the_same_days_at_once_make_each_partition_once_without_an_error():
    """Far ahead, so these days are new to the test database; each thread is a node with a
    connection of its own."""
    start = today() + timedelta(days=400)
    days = [(start + timedelta(days=n)).date() for n in range(3)]
    made, errors, go = [], [], threading.Barrier(2)

    def node() -> None:
        try:
            go.wait(5)
            made.append(partitions.create_days(days))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=node) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and sorted(made) == [0, len(days) * len(partitions.TABLES)]
    for table in partitions.TABLES:
        assert set(days) <= set(partitions.day_partitions(table))


@ON_POSTGRESQL
@pytest.mark.django_db
def test_a_span_far_in_the_past_lands_in_default_and_todays_in_its_day():
    partitions.create_ahead()
    old, new = datetime(2001, 2, 3, 4, 5, tzinfo=UTC), datetime.now(UTC) - timedelta(seconds=1)
    link = ["f" * 32, "f" * 16, {}]
    assert store([dict(span_at("a" * 32, "0" * 15 + "1", old), l=[link]), span_at("a" * 32, "0" * 15 + "2", new)]) == 2
    assert where("a" * 32) == ["tracing_span_default", partitions.partition_name("tracing_span", new.date())]
    assert where("a" * 32, "tracing_spanlink") == ["tracing_spanlink_default"]


@ON_POSTGRESQL
@pytest.mark.django_db
def test_making_a_day_moves_the_rows_default_held_for_it_into_the_new_partition():
    later = today() + timedelta(days=200, hours=5)
    store([span_at("b" * 32, "0" * 15 + "1", later), span_at("b" * 32, "0" * 15 + "2", later + timedelta(days=1))])
    assert where("b" * 32) == ["tracing_span_default", "tracing_span_default"]

    assert partitions.create_days([later.date()]) == 2
    assert where("b" * 32) == [partitions.partition_name("tracing_span", later.date()), "tracing_span_default"]
    assert Span.objects.filter(trace_id="b" * 32).count() == 2


@ON_POSTGRESQL
@pytest.mark.django_db
def test_every_index_of_the_parent_is_on_each_partition():
    with connection.cursor() as cursor:
        for table in partitions.TABLES:
            for child in (f"{table}_default", partitions.partition_name(table, today().date())):
                cursor.execute(
                    """SELECT (SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass),
                              (SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass)""",
                    [table, child],
                )
                parent, inherited = cursor.fetchone()
                assert parent >= (8 if table == "tracing_span" else 5) and inherited == parent, (table, child)


@ON_POSTGRESQL
@pytest.mark.django_db
def test_retention_drops_whole_old_days_keeps_today_and_deletes_defaults_old_rows_by_batch():
    past = [(today() - timedelta(days=n)).date() for n in (9, 8, 7)]
    partitions.create_days(past)
    partitions.create_ahead()
    link = ["e" * 32, "e" * 16, {}]
    old_days = [dict(span_at("c" * 32, f"{i:016x}", datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=3)), l=[link]) for i, day in enumerate(past)]
    stray = [span_at("d" * 32, f"{i:016x}", datetime(2001, 1, 1, tzinfo=UTC) + timedelta(minutes=i)) for i in range(7)]
    kept = [span_at("9" * 32, f"{i:016x}", datetime.now(UTC) - timedelta(seconds=i)) for i in range(3)]
    store(old_days + stray + kept)

    # A cutoff at noon of day -7: days -9 and -8 ended before it and go whole; day -7 is kept
    # whole (retention on PostgreSQL rounds down to midnight), and so is everything since.
    deleted = prune_spans(older_than=datetime.now(UTC) - (today() - timedelta(days=7) + timedelta(hours=12)), batch=3)

    assert deleted["span_days_dropped"] == 2 and deleted["link_days_dropped"] == 2
    assert deleted["spans"] == 7  # DEFAULT's, by batches of 3
    assert set(past[:2]).isdisjoint(partitions.day_partitions("tracing_span")) and past[2] in partitions.day_partitions("tracing_span")
    assert Span.objects.filter(trace_id="c" * 32).count() == 1 and SpanLink.objects.filter(trace_id="c" * 32).count() == 1
    assert not Span.objects.filter(trace_id="d" * 32).exists()
    assert Span.objects.filter(trace_id="9" * 32).count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_span_stored_twice_in_any_partition_is_stored_and_counted_once():
    partitions.create_ahead()
    spans = [
        span_at("7" * 32, "0" * 15 + "1", datetime(2001, 1, 1, tzinfo=UTC), queue="q.again", consumer="c_again"),  # DEFAULT on PostgreSQL
        span_at("7" * 32, "0" * 15 + "2", datetime.now(UTC) - timedelta(seconds=2), queue="q.again", consumer="c_again"),  # today's
    ]
    assert store(spans) == 2
    assert store([dict(s) for s in reversed(spans)]) == 0  # a redelivered batch, another order
    assert Span.objects.filter(trace_id="7" * 32).count() == 2
    assert sum(EdgeStat.objects.filter(source="queue:q.again").values_list("count", flat=True)) == 2


@pytest.mark.django_db
def test_lookups_by_trace_and_correlation_find_spans_in_every_partition_in_start_order():
    partitions.create_ahead()
    now = datetime.now(UTC)
    moments = [datetime(2001, 1, 1, tzinfo=UTC), now - timedelta(days=1, seconds=5), now - timedelta(seconds=5), now + timedelta(days=1)]
    spans = [span_at("8" * 32, f"{i:016x}", m) for i, m in enumerate(moments)]
    for s in spans:
        s["a"] = dict(s["a"], **{"messaging.message.conversation_id": "conv-partitions"})
    store(list(reversed(spans)))

    tree = trace_tree("8" * 32)
    assert tree is not None and tree.spans == 4
    assert [node.span.span_id for node in tree.roots] == [f"{i:016x}" for i in range(4)]
    [found] = traces_for(correlation_id="conv-partitions")
    assert (found["trace_id"], found["spans"], found["first"], found["last"]) == ("8" * 32, 4, moments[0], moments[-1])


@pytest.mark.django_db
def test_the_prune_figure_fills_one_day_and_prunes_all_of_it_the_way_this_database_does():
    partitions.create_ahead()
    figures = prune.prune_day_ms(2_000, lambda text: None)
    assert figures["p11_spans"] == 2_000 and figures["p11_prune_day_ms"] > 0
    assert figures["p11_how"] == ("postgresql: drop partition" if connection.vendor == "postgresql" else "sqlite: batched delete")


@ON_POSTGRESQL
@pytest.mark.django_db
def test_a_day_detached_but_not_dropped_by_a_prune_that_stopped_is_dropped_by_the_next():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE tracing_span_p20000101 (LIKE tracing_span)")
    prune_spans()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('tracing_span_p20000101')")
        assert cursor.fetchone()[0] is None

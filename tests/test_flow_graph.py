"""The flow graph's time window and its bad input (the API operation and the page), and the edges
joined by span links: spans go through the collector's real store and aggregates; what is under
test is the graph."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from django.apps import apps as django_apps

from tests.people import client_for
from tooling.bench import graph_day
from tracing import aggregates, collector
from tracing.models import EdgeHour, EdgeStat, Span

pytestmark = pytest.mark.django_db
_ids = count(1)


def span(
    kind: int, queue: str, *, app: str = "", trace: str = "a" * 32, parent: str = "", consumer: str = "", producer: str = "", ago: timedelta = timedelta(0), links: list[Any] | None = None
) -> dict[str, Any]:
    end = int((datetime.now(UTC) - ago).timestamp() * 1e9)
    attributes = {"messaging.destination.name": queue, "flowscope.app": app, "flowscope.consumer": consumer, "flowscope.producer": producer}
    return {
        "t": trace,
        "s": f"{next(_ids):016x}",
        "p": parent,
        "n": "x",
        "k": kind,
        "sv": app or "flowscope",
        "st": end - 1_000_000,
        "en": end,
        "sc": 1,
        "a": {k: v for k, v in attributes.items() if v},
        "l": links or [],
    }


def edges(answer: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["source"], e["target"]): e for e in answer["edges"]}


def test_the_window_says_which_buckets_count_up_to_a_day():
    collector.store([span(4, "w.q", consumer="w.recent"), span(4, "w.q", consumer="w.hour_ago", ago=timedelta(minutes=40)), span(4, "w.q", consumer="w.day_ago", ago=timedelta(hours=20))])
    viewer = client_for("viewer")
    seen = {minutes: set(edges(viewer.get(f"/api/v1/graph?minutes={minutes}").json())) for minutes in (5, 60, 1440)}
    assert seen[5] == {("queue:w.q", "handler:w.recent")}
    assert seen[60] == seen[5] | {("queue:w.q", "handler:w.hour_ago")}
    assert seen[1440] == seen[60] | {("queue:w.q", "handler:w.day_ago")}


@pytest.mark.parametrize(
    ("query", "field"), [("minutes=0", "minutes"), ("minutes=1441", "minutes"), ("minutes=day", "minutes"), ("minutes=-5", "minutes"), ("app=" + "x" * 101, "app"), ("app=a%00", "app")]
)
def test_a_bad_window_or_app_is_a_422_naming_it(query, field):
    answer = client_for("viewer").get(f"/api/v1/graph?{query}")
    assert answer.status_code == 422, answer.content
    assert field in answer.content.decode()


def test_a_requeue_joined_by_its_span_link_is_an_edge_of_its_own_kind():
    died = span(4, "parcels", app="shop", trace="b" * 32, consumer="shop.pack", producer="handler:shop.take")
    first = span(4, "parcels", app="shop", trace="b" * 32, consumer="shop.pack", producer="handler:shop.take")
    collector.store([died, first])
    requeue = span(3, "parcels", app="shop", trace="c" * 32, producer="service:flowscope", links=[["b" * 32, died["s"], {"flowscope.link": "requeue-of"}], ["d" * 32, "e" * 16, {}]])
    # Flowscope's own: the link names the dead letter's send; the handler is that of its process span.
    send = span(3, "orders", trace="f" * 32, producer="service:web")
    delivered = span(4, "orders", trace="f" * 32, parent=send["s"], consumer="orders.take")
    collector.store([send, delivered])
    own_requeue = span(3, "orders", trace="0" * 32, producer="service:flowscope", links=[["f" * 32, send["s"], {"flowscope.link": "requeue-of"}]])
    collector.store([requeue, own_requeue])

    graph = edges(client_for("viewer").get("/api/v1/graph?minutes=5").json())
    link = graph[("shop|handler:shop.pack", "shop|queue:parcels")]
    assert (link["kind"], link["link"], link["count"], link["queue"]) == ("link", "requeue-of", 1, None)
    own = graph[("handler:orders.take", "queue:orders")]
    assert (own["kind"], own["link"], own["count"]) == ("link", "requeue-of", 1)
    # The message edges mean what they meant: the requeue's send counts once on its own edge, the executions on theirs.
    assert graph[("shop|service:flowscope", "shop|queue:parcels")]["kind"] == "message"
    assert graph[("shop|handler:shop.take", "shop|handler:shop.pack")]["count"] == 2
    assert graph[("service:flowscope", "queue:orders")]["count"] == 1
    # The link to a span never stored (another trace pruned, say) is no edge.
    assert EdgeStat.objects.filter(queue__startswith="link:").count() == 2


@pytest.mark.parametrize(("query", "field"), [("window=7", "window"), ("window=an+hour", "window"), ("group=team", "group")])
def test_the_page_refuses_a_window_or_grouping_it_does_not_offer_naming_it(query, field):
    answer = client_for("viewer").get(f"/graph/?{query}")
    assert answer.status_code == 400 and f"{field} must be one of" in answer.content.decode()


def test_the_page_opens_on_the_view_its_link_names():
    collector.store([span(4, "v.q", consumer="v.day_ago", ago=timedelta(hours=20))])
    page = client_for("viewer").get("/graph/?window=1440&group=flow&select=handler%3Av.day_ago").content.decode()
    assert '<option value="1440" selected>' in page and '<option value="flow" selected>' in page
    assert '"select": "handler:v.day_ago"' in page and '"window": 1440' in page
    assert "handler:v.day_ago" in page.split('id="initial-frame"')[1]  # the first paint has the day's graph, not the live frame's 5 minutes


def test_a_days_graph_from_the_hourly_rows_is_the_graph_read_bucket_by_bucket():
    spans = [span(4, "k.q", consumer=f"k.h{i % 3}", ago=timedelta(hours=i, minutes=7 * i)) for i in range(12)]
    collector.store([*spans, span(3, "k.q", producer="service:k", ago=timedelta(hours=5))])
    collector.store([span(4, "k.q", consumer="k.h0", ago=timedelta(hours=3))])  # a later batch into a stored hour
    now = datetime.now(UTC)
    first = now - timedelta(hours=24)
    read = aggregates.window_totals(first, now)
    assert read == aggregates._sum(first, now, None)  # every 10-second bucket at once
    assert sum(edge["count"] for edge in read.values()) == 14 and sum(read[("", "queue:k.q", "handler:k.h0", "")]["histogram"]) == 5

    # The whole hours come from their hourly rows: without their buckets the day reads the same.
    whole_hours = EdgeStat.objects.filter(bucket__gte=first.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1), bucket__lt=now.replace(minute=0, second=0, microsecond=0))
    assert whole_hours.delete()[0] >= 10 and EdgeHour.objects.count() >= 12
    assert aggregates.window_totals(first, now) == read


def test_the_migration_sums_the_stored_buckets_into_the_hours_the_collector_keeps():
    spans = [span(4, "m.q", consumer=f"m.h{i % 2}", ago=timedelta(minutes=23 * i)) for i in range(9)]
    collector.store([*spans, span(3, "m.q", producer="service:m", ago=timedelta(hours=2))])
    kept = list(EdgeHour.objects.order_by("bucket", "source", "target").values_list("bucket", "source", "target", "count", "histogram"))
    EdgeHour.objects.all().delete()

    backfill = importlib.import_module("tracing.migrations.0006_edge_hours")
    backfill.sum_the_stored_hours(django_apps, None)

    summed = list(EdgeHour.objects.order_by("bucket", "source", "target").values_list("bucket", "source", "target", "count", "histogram"))
    assert summed == kept and sum(row[3] for row in summed) == 10


def test_the_day_window_figure_reads_the_same_graph_both_ways_and_leaves_no_rows():
    figures = graph_day.day_window_ms(2, lambda _: None, runs=1)

    assert figures["p12_edges"] == 2 and figures["p12_buckets"] in (2 * 8_640, 2 * 8_639)
    assert figures["p12_day_window_ms"] > 0 and figures["p12_every_bucket_ms"] > 0
    assert not EdgeStat.objects.exists() and not EdgeHour.objects.exists()


def test_batches_added_to_stored_rows_sum_to_what_one_batch_stores():
    def wait(s: dict[str, Any], ms: float) -> dict[str, Any]:
        s["a"]["flowscope.queue_wait_ms"] = ms
        return s

    spans = [wait(span(4, "b.q", consumer="b.h", trace=f"{i:032x}"), 3.0 * i) for i in range(1, 7)]
    spans[2]["sc"] = 2  # one failed
    spans.append(span(4, "b.q", consumer="b.h"))  # one that says no queue wait
    columns = ("bucket", "app", "source", "target", "queue", "count", "errors", "histogram", "waits")
    collector.store(spans)
    whole = [list(model.objects.order_by("bucket", "source").values_list(*columns)) for model in (EdgeStat, EdgeHour)]
    assert whole[0][0][5:7] == (7, 1) and sum(whole[0][0][8]) == 6

    EdgeStat.objects.all().delete()
    EdgeHour.objects.all().delete()
    for one in (spans[-1:], spans[:2], spans[2:3], spans[3:-1]):  # each batch adds to the rows the last one wrote
        collector.store([{**s, "s": f"{next(_ids):016x}"} for s in one])
    assert [list(model.objects.order_by("bucket", "source").values_list(*columns)) for model in (EdgeStat, EdgeHour)] == whole


def test_a_row_another_collector_inserted_after_the_read_refuses_the_batch_instead_of_being_overwritten(monkeypatch):
    from django.db import IntegrityError

    spans = [span(4, "r.q", consumer="r.h") for _ in range(3)]
    real_upsert = aggregates.upsert_rows
    raced = []

    def other_collector_first(model, fields, rows, **kwargs):
        # Between this batch's read (nothing there) and its insert, another collector stores one
        # span of the same edge and commits.
        if model is EdgeStat and not raced:
            raced.append(True)
            other = span(4, "r.q", consumer="r.h")
            other["en"] = spans[0]["en"]
            aggregates.apply([other])
        real_upsert(model, fields, rows, **kwargs)

    monkeypatch.setattr(aggregates, "upsert_rows", other_collector_first)
    # Refused whole rather than written over the other's row: its transaction rolls back (here the
    # other's insert with it, as both share this test's connection) and the batch, unacknowledged,
    # comes again on the next round.
    with pytest.raises(IntegrityError):
        collector.store(spans)
    assert not EdgeStat.objects.exists() and not Span.objects.filter(trace_id=spans[0]["t"]).exists()
    assert collector.store(spans) == 3
    assert list(EdgeStat.objects.values_list("count", flat=True)) == [3] and list(EdgeHour.objects.values_list("count", flat=True)) == [3]

"""The trace search: each filter and their mix, both orders, keyset pages that stay put while
traces arrive, bad input refused naming the field, and the per-trace summary the collector keeps
as a trace's spans come in several batches, out of order and twice. Spans go through the
collector's store (the summary is part of what is under test); no worker is needed."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.people import client_for
from tooling.bench.trace_search import MARK, trace_search_p95_ms
from tracing import summaries
from tracing.collector import store
from tracing.models import Span, TraceSummary

pytestmark = pytest.mark.django_db

NOW_NS = time.time_ns()
MS = 1_000_000


def span(
    trace: str, *, parent: str = "", name: str = "process order.placed", service: str = "shop", kind: int = 4, ago_ms: int = 0, ms: int = 10, error: bool = False, **attributes: Any
) -> dict[str, Any]:
    start = NOW_NS - ago_ms * MS
    return {
        "t": trace,
        "s": os.urandom(8).hex(),
        "p": parent,
        "n": name,
        "k": kind,
        "sv": service,
        "st": start,
        "en": start + ms * MS,
        "sc": 2 if error else 1,
        "sm": "",
        "e": [],
        "l": [],
        "a": attributes,
    }


def trace(
    ago_ms: int, *, service: str = "shop", app: str = "shop", queue: str = "orders", handler: str = "charge", mtype: str = "order.placed", ms: int = 10, error: bool = False, **attributes: Any
) -> str:
    """A trace of three spans: a root send, its process span (with the queue, handler, type and
    `attributes`), and a child of that."""
    trace_id = os.urandom(16).hex()
    common = {"flowscope.app": app} if app else {}
    root = span(trace_id, name=f"send {mtype}", service=service, kind=3, ago_ms=ago_ms, ms=1, **common, **{"messaging.destination.name": queue})
    work = span(
        trace_id,
        parent=root["s"],
        name=f"process {mtype}",
        service=service,
        ago_ms=ago_ms - 2,
        ms=ms,
        error=error,
        **common,
        **{"messaging.destination.name": queue, "flowscope.consumer": handler, "flowscope.message_type": mtype, "flowscope.queue_wait_ms": 1.5, **attributes},
    )
    child = span(trace_id, parent=work["s"], name="db query", service=service, kind=0, ago_ms=ago_ms - 3, ms=1, **common)
    store([root, work, child])
    return trace_id


@pytest.fixture
def traces() -> dict[str, str]:
    return {
        "placed": trace(50_000, ms=20, **{"order.id": "o-1", "flowscope.attempt": 1}),
        "failed": trace(40_000, error=True, ms=300, **{"order.id": "o-2", "flowscope.attempt": 2}),
        "billing": trace(30_000, service="billing", app="billing", queue="invoices", handler="bill", mtype="invoice.due", ms=120),
        "own": trace(20_000, service="flowscope-demo", app="", queue="orders", handler="charge", ms=5),
        "late": trace(10_000, ms=700, error=True, **{"order.id": "o-3", "vip": True}),
    }


def ids(client: Any, **params: Any) -> list[str]:
    response = client.get("/api/v1/traces", params)
    assert response.status_code == 200, response.content
    return [row["trace_id"] for row in response.json()["items"]]


def test_with_no_filter_the_latest_traces_come_newest_first_each_summarised(traces):
    viewer = client_for("viewer")
    names = {v: k for k, v in traces.items()}
    assert [names[t] for t in ids(viewer)] == ["late", "own", "billing", "failed", "placed"]
    (row,) = [r for r in viewer.get("/api/v1/traces").json()["items"] if r["trace_id"] == traces["failed"]]
    assert (row["root_name"], row["services"], row["spans"], row["errors"]) == ("send order.placed", ["shop"], 3, 1)
    assert row["duration_ms"] == pytest.approx(302.0)  # the send at -40 s to the process span's end, 2 ms + 300 ms later
    assert (row["wait_ms"], row["work_ms"]) == (1.5, 300.0)
    assert sum(row["shares"].values()) == pytest.approx(1.0, abs=1e-3) and row["shares"]["work"] == pytest.approx(300 / 302, abs=1e-3)


def test_each_filter_narrows_the_search_and_they_combine(traces):
    viewer = client_for("viewer")
    t = traces
    assert set(ids(viewer, service="billing")) == {t["billing"]}
    assert set(ids(viewer, span_name="process invoice.due")) == {t["billing"]}
    assert set(ids(viewer, message_type="order.placed")) == {t["placed"], t["failed"], t["own"], t["late"]}
    assert set(ids(viewer, queue="invoices")) == {t["billing"]}
    assert set(ids(viewer, handler="charge")) == {t["placed"], t["failed"], t["own"], t["late"]}
    assert set(ids(viewer, app="shop")) == {t["placed"], t["failed"], t["late"]}
    assert set(ids(viewer, app="(flowscope)")) == {t["own"]}
    assert set(ids(viewer, status="error")) == {t["failed"], t["late"]}
    assert set(ids(viewer, status="ok")) == {t["placed"], t["billing"], t["own"]}
    assert set(ids(viewer, min_duration_ms=100)) == {t["failed"], t["billing"], t["late"]}
    assert set(ids(viewer, max_duration_ms=100)) == {t["placed"], t["own"]}
    assert set(ids(viewer, attr="order.id=o-2")) == {t["failed"]}
    assert set(ids(viewer, attr="flowscope.attempt=2")) == {t["failed"]}  # a number in the span, text in the URL
    assert set(ids(viewer, attr="vip=true")) == {t["late"]}
    assert ids(viewer, attr="order.id=nope") == []
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((NOW_NS - 35_000 * MS) / 1e9))
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((NOW_NS - 15_000 * MS) / 1e9))
    assert set(ids(viewer, since=since + "Z", until=until + "Z")) == {t["billing"], t["own"]}
    # Combined: every filter holds at once, the attributes each on some span of the trace.
    assert ids(viewer, service="shop", status="error", min_duration_ms=500) == [t["late"]]
    assert ids(viewer, app="shop", queue="orders", attr=["order.id=o-2", "flowscope.attempt=2"], max_duration_ms=400) == [t["failed"]]
    assert ids(viewer, app="shop", attr=["order.id=o-2", "vip=true"]) == []
    assert ids(viewer, service="billing", status="error") == []


def test_a_value_that_reads_as_no_json_number_is_searched_as_text(traces):
    # A hex id such as 15276e346782 reads as a float too big for one (inf); NaN and Infinity are
    # no JSON values either. Each is looked for as the text it is (PostgreSQL refused them whole).
    exponent_id = trace(5_000, **{"order.id": "15276e346782"})
    viewer = client_for("viewer")
    assert ids(viewer, attr="order.id=15276e346782") == [exponent_id]
    for text in ("1e999", "-1e999", "NaN", "Infinity", "-Infinity"):
        assert ids(viewer, attr=f"order.id={text}") == [], text
    assert ids(viewer, attr="flowscope.attempt=2.0") == [traces["failed"]]  # a finite float is still a number


def test_the_old_lookups_by_conversation_message_and_saga_narrow_the_same_search(traces):
    viewer = client_for("viewer")
    conversation = os.urandom(16).hex()
    first = trace(5_000, **{"messaging.message.conversation_id": conversation, "messaging.message.id": "m-1", "flowscope.saga_id": "s-1"})
    second = trace(4_000, error=True, **{"messaging.message.conversation_id": conversation})
    assert ids(viewer, correlation_id=conversation) == [second, first]
    assert ids(viewer, correlation_id=conversation, status="error") == [second]
    assert ids(viewer, message_id="m-1") == ids(viewer, saga_id="s-1") == [first]
    assert ids(viewer, message_id="unknown") == []


def test_sorted_by_duration_longest_first_and_keyset_pages_hold_still_while_traces_arrive(traces):
    viewer = client_for("viewer")
    t = traces
    assert ids(viewer, sort="duration") == [t["late"], t["failed"], t["billing"], t["placed"], t["own"]]
    orders = {"start": [t["late"], t["own"], t["billing"], t["failed"], t["placed"]], "duration": [t["late"], t["failed"], t["billing"], t["placed"], t["own"]]}
    firsts = {sort: viewer.get("/api/v1/traces", {"sort": sort, "limit": 2}).json() for sort in orders}
    trace(0, ms=5_000)  # newest and longest: it would push every offset page of either order by one
    for sort, order in orders.items():
        assert [r["trace_id"] for r in firsts[sort]["items"]] == order[:2] and firsts[sort]["next_cursor"]
        second = viewer.get("/api/v1/traces", {"sort": sort, "limit": 2, "cursor": firsts[sort]["next_cursor"]}).json()
        third = viewer.get("/api/v1/traces", {"sort": sort, "limit": 2, "cursor": second["next_cursor"]}).json()
        assert [r["trace_id"] for r in second["items"] + third["items"]] == order[2:]
        assert third["next_cursor"] == ""


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"attr": "order.id"}, "attr"),
        ({"attr": "=o-1"}, "attr"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"min_duration_ms": 50, "max_duration_ms": 10}, "max_duration_ms"),
        ({"min_duration_ms": -1}, "min_duration_ms"),
        ({"max_duration_ms": "slow"}, "max_duration_ms"),
        ({"since": "yesterday"}, "since"),
        ({"sort": "name"}, "sort"),
        ({"status": "failed"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "c3RhcnR8MTIzfGFiYw"}, "cursor"),  # start|123|abc: not a trace id
        ({"cursor": "c3RhcnR8OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTl8MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA"}, "cursor"),  # beyond any date
        ({"sort": "duration", "cursor": "c3RhcnR8MTIzfDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw"}, "cursor"),  # a start cursor
    ],
)
def test_bad_input_is_a_422_that_names_the_field(params, field):
    response = client_for("viewer").get("/api/v1/traces", params)
    assert response.status_code == 422, response.content
    assert field in str(response.json()["detail"])


def test_a_start_cursor_works_where_it_was_given():
    cursor = "c3RhcnR8MTIzfDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw"
    assert client_for("viewer").get("/api/v1/traces", {"cursor": cursor}).json() == {"items": [], "next_cursor": ""}


def test_a_summary_counts_spans_arriving_in_several_batches_out_of_order_and_twice():
    trace_id = os.urandom(16).hex()
    root = span(trace_id, name="send order.placed", kind=3, ago_ms=100, ms=1, **{"flowscope.app": "shop"})
    work = span(trace_id, parent=root["s"], ago_ms=99, ms=40, error=True, **{"flowscope.queue_wait_ms": 2, "flowscope.consumer": "charge"})
    later = span(trace_id, parent=work["s"], name="call bank", service="bank", kind=2, ago_ms=70, ms=50)

    store([later])  # the child first: the summary's root is the earliest span for now
    assert TraceSummary.objects.get(pk=trace_id).root_name == "call bank"
    store([work, later])  # a redelivery holding one new span
    store([root])  # the root last, though it started first
    store([root, work])  # all of it again
    row = TraceSummary.objects.get(pk=trace_id)
    assert (row.spans, row.errors, row.root_name, row.rooted) == (3, 1, "send order.placed", True)
    assert row.duration_us == 80_000  # the root's start at -100 ms to the bank call's end at -20 ms
    assert (row.wait_us, row.work_us) == (2_000, 40_000)
    assert set(row.services) == {"shop", "bank"}
    assert {"handler:charge", "app:shop", "app:", "name:call bank"} <= set(row.tags)
    rebuilt = {f: getattr(row, f) for f in ("spans", "errors", "root_name", "duration_us", "wait_us", "work_us")}
    summaries.rebuild([trace_id])
    again = TraceSummary.objects.get(pk=trace_id)
    assert {f: getattr(again, f) for f in rebuilt} == rebuilt and set(again.tags) == set(row.tags)


def test_the_page_opens_on_the_latest_traces_and_keeps_every_filter_in_its_links(traces):
    viewer = client_for("viewer")
    page = viewer.get("/traces/").content.decode()
    assert page.index(traces["late"]) < page.index(traces["own"]) < page.index(traces["placed"])
    filtered = viewer.get("/traces/", {"status": "error", "service": "shop", "attr": ["order.id=o-2"], "sort": "duration"}).content.decode()
    assert traces["failed"] in filtered and traces["late"] not in filtered and traces["placed"] not in filtered
    assert 'value="order.id=o-2"' in filtered and '<option value="error" selected>' in filtered and '<option value="duration" selected>' in filtered
    paged = viewer.get("/traces/", {"app": "shop", "cursor": ""}).content.decode()
    assert "Latest traces of shop" in paged
    assert viewer.get("/traces/", {"status": "error", "limit": "1"}).status_code == 200


def test_the_page_links_its_next_page_with_the_same_filters(traces, monkeypatch):
    monkeypatch.setattr("console.trace_search_pages.PAGE_SIZE", 2)
    viewer = client_for("viewer")
    first = viewer.get("/traces/", {"message_type": "order.placed"}).content.decode()
    link = first.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    assert "message_type=order.placed" in link and "cursor=" in link
    second = viewer.get("/traces/" + link).content.decode()
    assert traces["failed"] in second and traces["placed"] in second and traces["late"] not in second and traces["own"] not in second


def test_bad_input_on_the_page_is_a_400_that_names_the_field():
    viewer = client_for("viewer")
    for params, field in (({"attr": "novalue"}, "attr"), ({"min_duration_ms": "9", "max_duration_ms": "1"}, "max_duration_ms"), ({"since": "soon"}, "since")):
        response = viewer.get("/traces/", params)
        assert response.status_code == 400 and field in response.content.decode()


def test_the_benchmark_builds_its_store_asks_every_search_and_leaves_no_row_behind():
    figures = trace_search_p95_ms(3_000, lambda text: None, runs=1)
    assert figures["p9_spans"] == 3_000 and 3_000 / 16 <= figures["p9_traces"] <= 3_000 / 4
    assert 0 < figures["p9_trace_search_median_ms"] <= figures["p9_trace_search_p95_ms"]
    assert not Span.objects.filter(trace_id__startswith=MARK).exists() and not TraceSummary.objects.filter(trace_id__startswith=MARK).exists()


def test_an_attribute_on_many_spans_is_found_by_walking_the_traces_as_a_rare_one_is_by_lookup(traces, monkeypatch):
    viewer = client_for("viewer")
    rare = ids(viewer, attr="order.id=o-2", status="error")
    monkeypatch.setattr("tracing.search.RARE_SPANS", 0)  # every value counts as common (PostgreSQL's walk)
    assert ids(viewer, attr="order.id=o-2", status="error") == rare == [traces["failed"]]
    assert set(ids(viewer, attr="flowscope.attempt=1")) == {traces["placed"]}

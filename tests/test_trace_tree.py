"""The trace tree operation and its span operation: nesting and depth, the critical path, queue
waits, links both ways, on traces of known timing stored through the collector's store."""

import pytest

from tests.people import client_for
from tests.trace_shapes import LONG_VALUE, checkout_trace

pytestmark = pytest.mark.django_db


@pytest.fixture
def checkout():
    return checkout_trace()


def by_name(answer: dict) -> dict[str, dict]:
    return {hop["name"]: hop for hop in answer["items"]}


def test_spans_nest_under_their_parents_depth_first_in_start_order(checkout):
    answer = client_for("viewer").get(f"/api/v1/traces/{checkout['trace_id']}").json()
    assert [(hop["depth"], hop["name"]) for hop in answer["items"]] == [
        (0, "checkout"),
        (1, "validate"),
        (1, "send order.placed"),
        (2, "process order.placed"),
        (3, "send order.paid"),
        (4, "process order.paid"),
        (3, "db write"),
        (1, "audit"),
        (0, "process billing.charge"),  # its parent is not stored: a root of its own
    ]
    hops, ids = by_name(answer), checkout["ids"]
    assert hops["process order.paid"]["parent_span_id"] == ids["send2"] and hops["db write"]["parent_span_id"] == ids["process1"]
    assert (answer["spans"], answer["errors"], answer["duration_ms"]) == (9, 1, 90.0)
    assert (hops["process order.placed"]["start_ms"], hops["process order.placed"]["duration_ms"]) == (26.0, 40.0)


def test_the_critical_path_is_the_chain_that_ends_the_trace_and_the_sequential_work_before_it(checkout):
    answer = client_for("viewer").get(f"/api/v1/traces/{checkout['trace_id']}?attributes=false").json()
    on_path = [hop["name"] for hop in answer["items"] if hop["critical"]]
    # validate ran before the send, so the send waited on it; audit and the db write ran alongside longer work.
    assert on_path == ["checkout", "validate", "send order.placed", "process order.placed", "send order.paid", "process order.paid"]


def test_a_consumer_waited_from_its_send_s_end_to_its_start_or_as_its_app_says(checkout):
    for attributes in ("true", "false"):
        hops = by_name(client_for("viewer").get(f"/api/v1/traces/{checkout['trace_id']}?attributes={attributes}").json())
        waits = {name: hop["queue_wait_ms"] for name, hop in hops.items() if hop["queue_wait_ms"] is not None}
        assert waits == {"process order.placed": 20.0, "process order.paid": 9.0, "process billing.charge": 12.5}, attributes


def test_links_are_followed_both_ways_and_the_light_tree_leaves_attributes_to_the_span_operation(checkout):
    viewer, ids, other = client_for("viewer"), checkout["ids"], checkout["other_trace_id"]
    light = by_name(viewer.get(f"/api/v1/traces/{checkout['trace_id']}?attributes=false").json())
    assert [(k["trace_id"], k["span_id"]) for k in light["process order.placed"]["links"]] == [(other, ids["elsewhere"])]
    assert light["process order.paid"]["linked_from"] == [{"trace_id": other, "span_id": ids["elsewhere_in"]}]
    assert light["process order.paid"]["attributes"] == {} and light["process order.paid"]["status_message"] == ""
    there = by_name(viewer.get(f"/api/v1/traces/{other}").json())
    assert there["requeue order.placed"]["linked_from"] == [{"trace_id": checkout["trace_id"], "span_id": ids["process1"]}]

    full = viewer.get(f"/api/v1/traces/{checkout['trace_id']}/spans/{ids['process2']}").json()
    assert full["attributes"]["flowscope.decline_reason"] == LONG_VALUE, "in full, not cut"
    assert full["status_message"] == "PaymentDeclined: card declined" and full["events"][0]["name"] == "exception"
    assert full["linked_from"] == [{"trace_id": other, "span_id": ids["elsewhere_in"]}]
    assert full["duration_ms"] == 50.0 and full["kind"] == 4


def test_a_malformed_or_unknown_trace_or_span_is_refused_naming_it(checkout):
    viewer, t = client_for("viewer"), checkout["trace_id"]
    assert viewer.get("/api/v1/traces/XYZ").status_code == 400
    assert viewer.get(f"/api/v1/traces/{'0' * 32}").status_code == 404
    assert viewer.get(f"/api/v1/traces/{t}?attributes=maybe").status_code == 422
    refused = viewer.get(f"/api/v1/traces/{t}/spans/nothex")
    assert refused.status_code == 400 and refused.json()["detail"].startswith("span_id:")
    refused = viewer.get(f"/api/v1/traces/{t}/spans/{'0' * 16}")
    assert refused.status_code == 404 and refused.json()["detail"].startswith("span_id:")
    assert viewer.get(f"/api/v1/traces/{'0' * 31}g/spans/{checkout['ids']['root']}").json()["detail"].startswith("trace_id:")


def test_the_trace_page_carries_the_tree_script_and_the_compare_form(checkout):
    page = client_for("viewer").get(f"/traces/{checkout['trace_id']}/").content.decode()
    assert 'id="wf-rows"' in page and "console/trace.js" in page and "console/trace.css" in page
    assert f'name="a" value="{checkout["trace_id"]}"' in page and 'action="/traces/compare/"' in page

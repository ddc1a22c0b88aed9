"""Two traces compared, by the API operation and the page: spans missing from one, extra in the
other, matched ones slower or faster, biggest change first; bad input refused naming it."""

import pytest

from tests.people import client_for
from tests.trace_shapes import trip

pytestmark = pytest.mark.django_db


@pytest.fixture
def good_and_bad():
    # good: the flight in 20 ms, then the hotel; bad: the flight in 120 ms and sent twice
    # over, no hotel, a car instead.
    return trip(flight_ms=20, with_hotel=True, with_car=False), trip(flight_ms=120, with_hotel=False, with_car=True, flight_copies=2)


def test_spans_missing_extra_and_slower_are_found_biggest_change_first(good_and_bad):
    a, b = good_and_bad
    answer = client_for("viewer").get(f"/api/v1/traces/compare?a={a}&b={b}").json()
    assert (answer["a"]["spans"], answer["b"]["spans"]) == (5, 6)
    assert (answer["matched"], answer["missing"], answer["extra"]) == (3, 2, 3)
    by_state = {state: [(" / ".join(r["path"]), r["occurrence"]) for r in answer["rows"] if r["state"] == state] for state in ("matched", "missing", "extra")}
    assert sorted(by_state["missing"]) == [("saga trip / send trip.hotel", 0), ("saga trip / send trip.hotel / process trip.hotel", 0)]
    assert sorted(by_state["extra"]) == [
        ("saga trip / send trip.car", 0),
        ("saga trip / send trip.car / process trip.car", 0),
        ("saga trip / send trip.flight / process trip.flight", 1),  # the second copy has no partner
    ]
    extra_copy, saga, flight = answer["rows"][:3]
    # the flight's extra copy: 120 ms all new; the whole saga: 51 ms then 151 ms; the flight: 20 ms then 120 ms, six times as long
    assert (extra_copy["name"], extra_copy["state"], extra_copy["change_ms"]) == ("process trip.flight", "extra", 120.0)
    assert (saga["name"], saga["change_ms"], saga["change_pct"]) == ("saga trip", 100.0, 196.1)
    assert (flight["name"], flight["occurrence"], flight["a"]["duration_ms"], flight["b"]["duration_ms"], flight["change_ms"], flight["change_pct"]) == (
        "process trip.flight",
        0,
        20.0,
        120.0,
        100.0,
        500.0,
    )
    changes = [abs(r["change_ms"]) for r in answer["rows"]]
    assert changes == sorted(changes, reverse=True)
    assert answer["change_ms"] == answer["b"]["duration_ms"] - answer["a"]["duration_ms"] == 100.0
    missing = next(r for r in answer["rows"] if r["state"] == "missing")
    assert missing["b"] is None and missing["change_ms"] == -missing["a"]["duration_ms"] and missing["change_pct"] is None


def test_bad_input_is_refused_naming_the_parameter(good_and_bad):
    a, b = good_and_bad
    viewer = client_for("viewer")

    def refused(query: str) -> tuple[int, str]:
        response = viewer.get(f"/api/v1/traces/compare?{query}")
        return response.status_code, str(response.json()["detail"])

    status, detail = refused(f"a=nothex&b={b}")
    assert status == 400 and detail.startswith("a:")
    status, detail = refused(f"a={a}&b={b.upper()}")
    assert status == 400 and detail.startswith("b:")
    status, detail = refused(f"a={a}&b={'0' * 32}")
    assert status == 404 and detail.startswith("b:") and "0" * 32 in detail
    status, detail = refused(f"a={a}&b={a}")
    assert status == 400 and detail.startswith("b:") and "same trace" in detail
    status, detail = refused(f"b={b}")
    assert status == 422 and "'a'" in detail
    status, detail = refused(f"a={a}&b={b}&limit=0")
    assert status == 422 and "limit" in detail


def test_the_compare_page_shows_both_sides_and_refuses_bad_ids_naming_them(good_and_bad):
    a, b = good_and_bad
    viewer = client_for("viewer")
    assert viewer.get("/traces/compare/").status_code == 200  # the form alone
    page = viewer.get(f"/traces/compare/?a={a}&b={b}").content.decode()
    assert page.index('id="compare-matched"') < page.index("process trip.flight") < page.index('id="compare-missing"')
    assert "+100.00 ms" in page and "+500.0 %" in page and f"/traces/{b}/#span=" in page
    refused = viewer.get(f"/traces/compare/?a={a}&b=zzz")
    assert refused.status_code == 400 and "b: a trace id" in refused.content.decode()
    assert viewer.get(f"/traces/compare/?a={'0' * 32}&b={b}").status_code == 404
    assert viewer.get(f"/traces/compare/?a={a}&b={a}").status_code == 400

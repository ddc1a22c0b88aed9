"""The trace page as a tree and two traces compared, in a real browser, on traces of known shape
stored through the collector's store. Screenshots: trace-tree.png, trace-compare.png."""

import pytest

from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tests.trace_shapes import LONG_VALUE, PAYMENT_MESSAGE_ID, checkout_trace, trip

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = "#wf-rows .wf-row"


def row(span_id: str) -> str:
    return f"{ROWS}[data-span='{span_id}']"


def test_an_engineer_folds_a_subtree_jumps_to_the_error_reads_it_whole_and_follows_its_links(page, web):
    shop = checkout_trace()
    t, other, ids = shop["trace_id"], shop["other_trace_id"], shop["ids"]
    person("viewer", "vera")
    sign_in(page, web, "vera")
    page.goto(f"{web}/traces/{t}/")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 9")
    assert page.locator(f"{ROWS}.critical").count() == 6
    assert page.locator(f"{row(ids['process1'])} .wf-wait").count() == 1 and page.locator(f"{row(ids['db'])} .wf-wait").count() == 0

    # Fold the order.placed processing: its three spans go, and the fold says an error is inside.
    page.click(f"{row(ids['process1'])} .caret")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 6")
    assert page.locator(f"{row(ids['process1'])} .err-below").inner_text() == "⚠ 1"
    assert page.locator(row(ids["process2"])).count() == 0

    # One click to the error: unfolded, picked, in the URL, and read in full beside the tree.
    page.click("#next-error")
    page.wait_for_selector(f"{row(ids['process2'])}.selected")
    assert page.evaluate("location.hash") == f"#span={ids['process2']}"
    cell = page.locator("#span-full table.kv td", has_text="reason-599")
    cell.wait_for()
    assert cell.inner_text() == LONG_VALUE
    panel, box = page.locator("#span-detail").bounding_box(), cell.bounding_box()
    assert box["x"] + box["width"] <= panel["x"] + panel["width"] + 0.5, f"the value runs past the panel: {box} in {panel}"
    assert page.evaluate("(() => { const a = document.querySelector('#span-detail'); return a.scrollWidth <= a.clientWidth; })()"), "nothing scrolls sideways"
    assert "PaymentDeclined: card declined" in page.inner_text("#span-full .status-message")
    assert page.locator(f"#span-full a[href='/messages/{PAYMENT_MESSAGE_ID}/']").count() == 1, "the message id links to the message's page"
    screenshot(page, "trace-tree")

    # Follow the link in: to the other trace, its linking span picked; then its link out, back here.
    page.click(f"#span-detail a[href='/traces/{other}/#span={ids['elsewhere_in']}']")
    page.wait_for_url(f"{web}/traces/{other}/#span={ids['elsewhere_in']}")
    page.wait_for_selector(f"{row(ids['elsewhere_in'])}.selected")
    page.click(f"#span-detail a[href='/traces/{t}/#span={ids['process2']}']")
    page.wait_for_selector(f"{row(ids['process2'])}.selected")
    assert page.url == f"{web}/traces/{t}/#span={ids['process2']}"

    # A pasted link opens on its span; the picked row is in the URL as it changes.
    page.goto(f"{web}/traces/{t}/#span={ids['db']}")
    page.wait_for_selector(f"{row(ids['db'])}.selected")
    page.click(f"{row(ids['audit'])} .nm")
    page.wait_for_function(f"location.hash === '#span={ids['audit']}'")


def test_an_engineer_compares_a_slow_run_with_a_good_one_from_the_trace_page(page, web):
    good = trip(flight_ms=20, with_hotel=True, with_car=False)
    bad = trip(flight_ms=120, with_hotel=False, with_car=True)
    person("viewer", "vera")
    sign_in(page, web, "vera")
    page.goto(f"{web}/traces/{bad}/")
    page.fill("#compare-b", good)
    page.click(".compare-with button")
    page.wait_for_url(f"{web}/traces/compare/?a={bad}&b={good}")
    # Swapped: the good run is the baseline.
    page.click("text=swap a and b")
    page.wait_for_url(f"{web}/traces/compare/?a={good}&b={bad}")
    matched = page.locator("#compare-matched tbody tr")
    assert matched.count() == 3
    assert matched.first.get_attribute("data-path") == "saga trip"  # +100 ms, tied with the flight and first in tree order
    flight = page.locator("#compare-matched tbody tr[data-path='saga trip / send trip.flight / process trip.flight']")
    assert "+100.00 ms" in flight.inner_text() and "+500.0 %" in flight.inner_text()
    assert [page.locator(f"#compare-{kind} tbody tr").count() for kind in ("missing", "extra")] == [2, 2]
    assert "process trip.hotel" in page.inner_text("#compare-missing") and "process trip.car" in page.inner_text("#compare-extra")
    screenshot(page, "trace-compare")
    flight.locator("td").nth(2).locator("a").click()  # b's flight, picked on its trace page
    page.wait_for_selector(f"{ROWS}.selected")
    assert page.locator(f"{ROWS}.selected .nm").inner_text() == "process trip.flight" and page.url.startswith(f"{web}/traces/{bad}/#span=")

"""The Traces page in a real browser: it opens on the latest traces, newest first; the errors-only
filter goes through the GET form into the URL (empty fields left out), and that URL, opened
again, gives the same view."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tests.test_trace_search import trace

pytestmark = pytest.mark.django_db(transaction=True)


def shown(page: Any) -> list[str]:
    return page.eval_on_selector_all("#trace-results tr[data-trace-id]", "rows => rows.map(r => r.dataset.traceId)")


def test_the_latest_traces_come_first_and_an_errors_only_view_survives_a_reload(page, web):
    older = trace(30_000, ms=12)
    failed = trace(20_000, ms=250, error=True, **{"order.id": "o-77"})
    newest = trace(10_000, service="billing", app="billing", queue="invoices", handler="bill", mtype="invoice.due", ms=40)
    person("viewer", "vera")
    sign_in(page, web, "vera")

    page.goto(f"{web}/traces/")
    page.wait_for_selector(f"#trace-results tr[data-trace-id='{newest}']")
    rows = shown(page)
    assert [t for t in rows if t in (older, failed, newest)] == [newest, failed, older]
    assert "invoice.due" in page.inner_text(f"tr[data-trace-id='{newest}']")

    page.select_option("#status-filter", "error")
    page.click("#search")
    page.wait_for_url("**/traces/?status=error")  # the empty fields and the default order stay out of the link
    errors_only = shown(page)
    assert failed in errors_only and older not in errors_only and newest not in errors_only
    assert all(page.get_attribute(f"tr[data-trace-id='{t}']", "data-errors") != "0" for t in errors_only)
    screenshot(page, "traces-search")

    link = page.url
    page.goto(f"{web}/")
    page.goto(link)  # the link pasted elsewhere
    page.wait_for_selector(f"#trace-results tr[data-trace-id='{failed}']")
    assert shown(page) == errors_only and page.input_value("#status-filter") == "error"

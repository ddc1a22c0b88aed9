"""The flow graph narrowed to one attached app in a real browser, its live frames too."""

from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import transaction

from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tracing import aggregates

pytestmark = pytest.mark.django_db(transaction=True)


def execution(app: str, task: str, sender: str) -> dict[str, Any]:
    """An attached app's process span as the collector gets it: sender -> task through queue parcels."""
    end = int(datetime.now(UTC).timestamp() * 1e9)
    attributes = {"messaging.destination.name": "parcels", "flowscope.consumer": task, "flowscope.app": app, "flowscope.producer": sender, "flowscope.queue_wait_ms": 3.0}
    return {"k": 4, "a": attributes, "st": end - 2_000_000, "en": end, "sc": 1, "sv": app}


def store(*spans: dict[str, Any]) -> None:
    with transaction.atomic():  # as the collector does: the aggregates lock their rows (PostgreSQL refuses that outside one)
        aggregates.apply(list(spans))


GRAPH_TEXT = "document.querySelector('#flow-graph').textContent"


def test_a_viewer_picks_an_app_and_its_live_graph_shows_that_app_alone(page, web, collector):
    store(execution("canvas", "canvas.pack", "handler:canvas.reserve"), execution("ledger", "ledger.post", "service:ledger"))
    person("viewer", "vera")
    sign_in(page, web, "vera")
    page.goto(f"{web}/graph/?app=canvas")
    page.wait_for_selector("#live-status.live")
    page.wait_for_function(f"{GRAPH_TEXT}.includes('canvas.pack')", timeout=30_000)
    # A task that appears after the page loaded reaches it through a live frame, narrowed like the first.
    store(execution("canvas", "canvas.late", "handler:canvas.pack"), execution("ledger", "ledger.late", "handler:ledger.post"))
    page.wait_for_function(f"{GRAPH_TEXT}.includes('canvas.late')", timeout=30_000)
    text = page.inner_text("#flow-graph")
    assert "parcels" in text and "ledger" not in text, text
    assert page.locator("#app-filter option:checked").inner_text() == "canvas"
    screenshot(page, "flow-graph-one-app")
    page.goto(f"{web}/graph/")  # all apps: the two queues named parcels are two nodes
    page.wait_for_function(f"{GRAPH_TEXT}.includes('ledger.late')", timeout=30_000)
    assert page.inner_text("#flow-graph").count("parcels") == 2

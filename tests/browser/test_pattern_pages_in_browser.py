"""The pages that know the patterns in a real browser, on real flows: a fanned-out event's
subscribers, a queue's two competing consumers drawn as a bar, a type's upcast count."""

from __future__ import annotations

import pytest

import flows
from flows.models import DeadLetter
from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tests.support.waiting import wait_for
from tests.support.workers import Worker
from tests.tracing_helpers import flush_here
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)
CONSUMER = 4


@pytest.fixture
def two_consumers(django_db_setup):
    nodes = [Worker(name, ["t.work"], concurrency=1).start() for name in ("gamma", "delta")]
    yield nodes
    for node in nodes:
        node.stop()


def processed(envelopes: list[flows.Envelope], n: int) -> bool:
    return Span.objects.filter(kind=CONSUMER, message_id__in=[str(e.message_id) for e in envelopes]).count() >= n


def test_the_message_queue_and_type_pages_show_what_the_patterns_recorded(page, web, worker, collector, two_consumers):
    event = flows.send("test.event", {"key": "in-browser"})
    work = [flows.send("test.work", {"key": f"b{i}", "sleep": 0.02}) for i in range(12)]
    people = [flows.send("test.person", {"name": f"Ada Lovelace{i}"}, schema_version=1) for i in range(2)]
    flush_here()
    wait_for(lambda: processed([event], 4) and processed(work, 12) and processed(people, 2), what="every delivery's span stored")
    wait_for(lambda: DeadLetter.objects.filter(message_id=event.message_id).exists(), what="the failing subscriber's dead letter")

    person("viewer", "vera")
    sign_in(page, web, "vera")
    page.goto(f"{web}/messages/{event.message_id}/")
    statuses = {c: page.get_attribute(f"#subscribers tr[data-consumer='{c}'] [data-status]", "data-status") for c in ("t_sub_fast", "t_sub_slow", "t_sub_failing")}
    assert statuses == {"t_sub_fast": "done", "t_sub_slow": "done", "t_sub_failing": "dead"}
    assert page.locator("#subscribers tr[data-consumer='t_sub_failing'] a[href^='/deadletters/']").count() == 1
    screenshot(page, "message-fan-out")

    page.goto(f"{web}/queues/t.work/?window=5")
    page.wait_for_selector("#spread-chart .main-svg")
    assert page.locator("#spread-chart g.point").count() == 2, "one bar a consumer"
    rows = page.inner_text("#consumers tbody")
    assert "gamma@" in rows and "delta@" in rows
    assert "× the fair share" in page.inner_text("#skew")
    screenshot(page, "queue-competing-consumers")

    page.goto(f"{web}/types/test.person/")
    assert page.inner_text("#upcast-total").startswith("2 deliveries")
    assert page.inner_text("#versions tr[data-version='1'] .upcast") == "2"
    screenshot(page, "type-upcasts")

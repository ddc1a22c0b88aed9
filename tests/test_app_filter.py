"""Many apps on one Flowscope: dead letters (list, groups, bulk count, page) and traces (API and
page) filtered by app, and the select of known apps. Rows are written directly: what is under
test is the filter, not how the rows came."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from flows.models import DeadLetter
from flows.operate.celery_events.writers import EVENTS, SEEN_THROUGH
from flows.operate.selectors import OWN_FLOWS
from tests.people import client_for
from tracing import summaries
from tracing.models import Span

pytestmark = pytest.mark.django_db


def dead(app: str, *, fingerprint: str = "f1", events_only: bool = False) -> DeadLetter:
    now = timezone.now()
    envelope = {"task": "shop.broken", "requeueable": False, "call_repr": "x"} if app else {"payload": {}}
    if events_only:
        envelope[SEEN_THROUGH] = EVENTS
    return DeadLetter.objects.create(
        app=app,
        message_id=uuid.uuid4(),
        message_type="shop.broken" if app else "test.command",
        queue="shop" if app else "t.commands",
        consumer="shop.broken" if app else "t_command",
        envelope=envelope,
        error_type="builtins.ValueError",
        fingerprint=fingerprint,
        attempts=1,
        first_dead_at=now,
        dead_at=now,
    )


def span(service: str, trace_id: str, *, correlation_id: str = "", ago_s: float = 1.0) -> Span:
    """A span written directly, and its trace's summary made from it, as the collector would."""
    made = Span.objects.create(
        trace_id=trace_id,
        span_id=uuid.uuid4().hex[:16],
        name="process shop.charge_card",
        kind=4,
        service=service,
        start_time=timezone.now() - timedelta(seconds=ago_s),
        duration_us=10,
        attributes={"flowscope.app": service},
        correlation_id=correlation_id,
    )
    summaries.rebuild([trace_id])
    return made


@pytest.fixture
def three_sources() -> dict[str, list[int]]:
    return {
        "shop": [dead("shop").pk, dead("shop", fingerprint="f2").pk],
        "billing": [dead("billing").pk],
        OWN_FLOWS: [dead("").pk],
    }


def test_the_dead_letter_list_groups_and_bulk_count_keep_to_the_app_asked_for(three_sources):
    viewer, operator = client_for("viewer"), client_for("operator")
    for app, ids in three_sources.items():
        listed = viewer.get("/api/v1/deadletters", {"app": app}).json()["items"]
        assert sorted(d["id"] for d in listed) == sorted(ids), (app, listed)
        assert {d["app"] for d in listed} == {"" if app == OWN_FLOWS else app}
        groups = viewer.get("/api/v1/deadletters/groups", {"app": app}).json()
        assert sum(g["count"] for g in groups) == len(ids) and {g["app"] for g in groups} == {"" if app == OWN_FLOWS else app}
        counted = operator.post("/api/v1/requeue-jobs", {"app": app, "dry_run": True}, content_type="application/json").json()
        assert counted == {"count": len(ids)}
    assert len(viewer.get("/api/v1/deadletters").json()["items"]) == 4  # no app: all of them
    assert viewer.get("/api/v1/deadletters", {"app": "nobody"}).json()["items"] == []
    assert viewer.get("/api/v1/deadletters", {"app": "x" * 101}).status_code == 422


def test_the_dead_letters_page_offers_the_known_apps_and_lists_only_the_one_chosen(three_sources):
    viewer = client_for("viewer")
    page = viewer.get("/deadletters/", {"app": "billing", "state": "dead"}).content.decode()
    select = page.split('id="app-filter"', 1)[1].split("</select>", 1)[0]
    assert "<option selected>billing</option>" in select and "<option >shop</option>" in select and f'value="{OWN_FLOWS}"' in select
    rows = page.split("<h2>Messages</h2>", 1)[1]
    assert f"/deadletters/{three_sources['billing'][0]}/" in rows
    assert all(f"/deadletters/{pk}/" not in rows for pk in three_sources["shop"] + three_sources[OWN_FLOWS])
    assert '"app": "billing"' in page  # the filter the groups and bulk requeue are fetched with


def test_a_dead_letter_seen_through_events_says_it_cannot_be_requeued_and_offers_no_requeue():
    seen = dead("shop", events_only=True)
    page = client_for("operator").get(f"/deadletters/{seen.pk}/").content.decode()
    assert "Seen through Celery's events only" in page and "cannot be requeued" in page
    assert 'id="requeue-one"' not in page and 'id="edit-requeue"' not in page and 'id="discard"' in page
    detail = client_for("viewer").get(f"/api/v1/deadletters/{seen.pk}").json()
    assert (detail["events_only"], detail["app"]) == (True, "shop")
    agent_page = client_for("operator").get(f"/deadletters/{dead('shop').pk}/").content.decode()
    assert "Seen through Celery's events only" not in agent_page and 'id="requeue-one"' in agent_page


def test_traces_are_listed_and_searched_by_app():
    shop_old, shop_new, billing = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    span("shop", shop_old, correlation_id="c-1", ago_s=30)
    span("shop", shop_new, ago_s=2)
    span("billing", billing, correlation_id="c-1")
    shop_older = uuid.uuid4().hex
    span("shop", shop_older, ago_s=3 * 86400)
    viewer = client_for("viewer")
    latest = viewer.get("/api/v1/traces", {"app": "shop"}).json()["items"]
    assert [t["trace_id"] for t in latest] == [shop_new, shop_old, shop_older]
    searched = viewer.get("/api/v1/traces", {"correlation_id": "c-1", "app": "billing"}).json()["items"]
    assert [t["trace_id"] for t in searched] == [billing]
    assert len(viewer.get("/api/v1/traces", {"correlation_id": "c-1"}).json()["items"]) == 2
    assert len(viewer.get("/api/v1/traces").json()["items"]) == 4
    page = viewer.get("/traces/", {"app": "shop"}).content.decode()
    assert shop_new in page and shop_old in page and billing not in page and "Latest traces of shop" in page

"""The alerts API: rules, channels with write-only secrets, silences, history, test notices;
viewers read and never write; every bad field is a 422 naming it."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from console.alerts.models import Alert, AlertRule, Channel, Delivery
from console.models import AuditEntry
from tests.people import client_for, token_for
from tests.support.waiting import wait_for
from tooling.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "whsec-never-shown-again-0123"
RULE = {"name": "orders dying", "kind": "dead_letters", "scope": "queue", "scope_value": "t.commands", "threshold": 5, "window_seconds": 300}


def api(method: str, path: str, token: str, body: object = None) -> tuple[int, dict | list]:
    response = Client().generic(method, f"/api/v1{path}", json.dumps(body) if body is not None else "", content_type="application/json", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


@pytest.fixture
def operator() -> str:
    return token_for("operator")


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def test_a_channel_secret_is_taken_once_and_never_returned_nor_audited(operator):
    status, created = api("POST", "/alerts/channels", operator, {"name": "pager", "kind": "webhook", "url": "https://hooks.example/x", "secret": SECRET, "slack": True})
    assert status == 200 and created["secret_set"] is True and "secret" not in created
    status, updated = api("PUT", f"/alerts/channels/{created['id']}", operator, {"name": "pager 2", "kind": "webhook", "url": "https://hooks.example/x"})
    assert status == 200 and updated["secret_set"] is True, "a secret left out is kept"
    assert Channel.objects.get().secret == SECRET
    answers = [api("GET", "/alerts/channels", operator)[1], created, updated]
    assert all(SECRET not in json.dumps(a) for a in answers)
    audited = list(AuditEntry.objects.order_by("id").values_list("action", "after"))
    assert [a for a, _ in audited] == ["create_alert_channel", "update_alert_channel"]
    assert SECRET not in json.dumps([after for _, after in audited]) and audited[0][1]["secret"] == "set" and audited[1][1]["secret"] == "unchanged"
    status, cleared = api("PUT", f"/alerts/channels/{created['id']}", operator, {"name": "pager 2", "kind": "webhook", "url": "https://hooks.example/x", "secret": ""})
    assert cleared["secret_set"] is False


def test_rules_are_created_edited_listed_and_deleted_each_change_audited(operator):
    channel = Channel.objects.create(name="mail", kind="email", emails=["ops@example.com"], created_by="t")
    status, rule = api("POST", "/alerts/rules", operator, {**RULE, "channels": [channel.pk]})
    assert status == 200 and rule["state"] == "ok" and rule["channels"] == [channel.pk] and rule["created_by"] == "token:operator script"
    status, rule = api("PUT", f"/alerts/rules/{rule['id']}", operator, {**RULE, "threshold": 9, "enabled": False})
    assert status == 200 and rule["threshold"] == 9 and rule["state"] == "disabled" and rule["channels"] == []
    viewer = token_for("viewer")
    assert [r["id"] for r in api("GET", "/alerts/rules", viewer)[1]] == [rule["id"]]
    assert api("DELETE", f"/alerts/rules/{rule['id']}", operator) == (200, {"deleted": True})
    assert api("GET", f"/alerts/rules/{rule['id']}", viewer)[0] == 404
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == ["create_alert_rule", "update_alert_rule", "delete_alert_rule"]


def test_a_viewer_reads_alerts_but_every_write_is_403():
    viewer = token_for("viewer")
    rule = AlertRule.objects.create(name="r", kind="spans", created_by="t")
    channel = Channel.objects.create(name="c", kind="email", emails=["a@example.com"], created_by="t")
    writes = [
        ("POST", "/alerts/rules", RULE),
        ("PUT", f"/alerts/rules/{rule.pk}", RULE),
        ("DELETE", f"/alerts/rules/{rule.pk}", None),
        ("POST", "/alerts/channels", {"name": "c", "kind": "email", "emails": ["a@example.com"]}),
        ("POST", f"/alerts/channels/{channel.pk}/test", None),
        ("POST", "/alerts/silences", {"rule_id": rule.pk, "until": (timezone.now() + timedelta(hours=1)).isoformat(), "reason": "x"}),
    ]
    for method, path, body in writes:
        status, answer = api(method, path, viewer, body)
        assert status == 403 and "operator role" in answer["detail"], (method, path, status, answer)
    for path in ("/alerts/rules", "/alerts/channels", "/alerts/silences", "/alerts/history", "/alerts/deliveries"):
        assert api("GET", path, viewer)[0] == 200, path
    assert AlertRule.objects.count() == 1 and not AuditEntry.objects.exists()


LATER = "2099-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/alerts/rules", {**RULE, "kind": "vibes"}, "kind"),
        ("/alerts/rules", {**RULE, "threshold": -1}, "threshold"),
        ("/alerts/rules", {**RULE, "threshold": True}, "threshold"),
        ("/alerts/rules", {**RULE, "window_seconds": 0}, "window_seconds"),
        ("/alerts/rules", {**RULE, "scope_value": ""}, "scope_value"),
        ("/alerts/rules", {**RULE, "scope": "all"}, "scope_value"),
        ("/alerts/rules", {**RULE, "kind": "error_rate", "threshold": 150}, "threshold"),
        ("/alerts/rules", {**RULE, "name": " "}, "name"),
        ("/alerts/rules", {**RULE, "channels": [999]}, "channels"),
        ("/alerts/rules", {**RULE, "treshold": 5}, "treshold"),
        ("/alerts/channels", {"name": "w", "kind": "webhook"}, "url"),
        ("/alerts/channels", {"name": "w", "kind": "webhook", "url": "ftp://x"}, "url"),
        ("/alerts/channels", {"name": "m", "kind": "email", "emails": ["not-an-address"]}, "emails"),
        ("/alerts/channels", {"name": "m", "kind": "email"}, "emails"),
        ("/alerts/channels", {"name": "m\x00", "kind": "email", "emails": ["a@example.com"]}, "name"),
        ("/alerts/silences", {"fingerprint": "abc", "until": "2000-01-01T00:00:00Z", "reason": "x"}, "until"),
        ("/alerts/silences", {"fingerprint": "abc", "until": "1700000000", "reason": "x"}, "until"),
        ("/alerts/silences", {"until": LATER, "reason": "x"}, "rule_id"),
        ("/alerts/silences", {"fingerprint": "abc", "until": "2026-12-31T00:00:00", "reason": "x"}, "until"),
        ("/alerts/silences", {"fingerprint": "abc", "until": LATER, "reason": ""}, "reason"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(operator, path, body, field):
    status, answer = api("POST", path, operator, body)
    assert status == 422, answer
    assert field in json.dumps(answer["detail"]), answer
    assert not AuditEntry.objects.exists()


def test_a_test_notice_goes_through_the_worker_signed_and_lands_in_the_delivery_log(worker, operator, receiver):
    receiver.clear()
    status, channel = api("POST", "/alerts/channels", operator, {"name": "receiver", "kind": "webhook", "url": receiver.url, "secret": SECRET})
    status, delivery = api("POST", f"/alerts/channels/{channel['id']}/test", operator)
    assert status == 200 and delivery["state"] == "pending" and delivery["kind"] == "test"
    hit = wait_for(lambda: receiver.received[:1], what="the test notice")[0]
    assert hit.headers["x-flowscope-signature"] == "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.json()["event"] == "test" and "receiver" in hit.json()["summary"]
    log = wait_for(lambda: [d for d in api("GET", f"/alerts/deliveries?channel={channel['id']}", operator)[1] if d["state"] == "sent"], what="the log to say sent")
    assert log[0]["id"] == delivery["id"] and log[0]["attempts"] == 1 and log[0]["last_error"] == ""


def test_history_pages_by_keyset_and_filters_by_rule_and_state(operator):
    one = AlertRule.objects.create(name="one", kind="spans", created_by="t")
    two = AlertRule.objects.create(name="two", kind="spans", created_by="t")
    for i in range(5):
        Alert.objects.create(rule=one if i % 2 else two, summary=f"s{i}", state="resolved" if i < 2 else "firing")
    status, page = api("GET", "/alerts/history?limit=2", operator)
    seen = [a["summary"] for a in page["items"]]
    while page["next_cursor"]:
        page = api("GET", f"/alerts/history?limit=2&cursor={page['next_cursor']}", operator)[1]
        seen += [a["summary"] for a in page["items"]]
    assert seen == ["s4", "s3", "s2", "s1", "s0"]
    assert [a["summary"] for a in api("GET", f"/alerts/history?rule={one.pk}", operator)[1]["items"]] == ["s3", "s1"]
    assert [a["summary"] for a in api("GET", "/alerts/history?state=resolved", operator)[1]["items"]] == ["s1", "s0"]
    assert api("GET", "/alerts/history?cursor=bogus", operator)[0] == 400
    detail = api("GET", f"/alerts/history/{Alert.objects.first().pk}", operator)[1]
    assert detail["deliveries"] == []


def test_the_alerts_page_is_in_the_nav_and_offers_forms_to_operators_only():
    viewer_page = client_for("viewer").get("/alerts/").content.decode()
    assert 'href="/alerts/"' in viewer_page and "console/alerts.js" in viewer_page and 'id="rule-form"' not in viewer_page
    assert 'id="rule-form"' in client_for("operator").get("/alerts/").content.decode()


def test_metrics_expose_the_alerts_firing_per_rule_and_the_failed_deliveries_per_channel():
    quiet = AlertRule.objects.create(name="quiet", kind="spans", created_by="t")
    loud = AlertRule.objects.create(name="loud", kind="dead_letters", threshold=1, created_by="t")
    channel = Channel.objects.create(name="hook", kind="webhook", url="https://hooks.example/x", created_by="t")
    alert = Alert.objects.create(rule=loud, summary="loud")
    Delivery.objects.create(alert=alert, channel=channel, kind="fired", state="failed", attempts=5, last_error="answered 500")
    body = client_for("viewer").get("/metrics").content.decode()
    assert f'flowscope_alerts_firing{{rule_id="{loud.pk}",rule="loud",kind="dead_letters"}} 1' in body
    assert f'flowscope_alerts_firing{{rule_id="{quiet.pk}",rule="quiet",kind="spans"}} 0' in body
    assert f'flowscope_alert_delivery_failures_total{{channel_id="{channel.pk}",channel="hook"}} 1' in body

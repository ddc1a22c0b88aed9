"""The Alerts page in a real browser: an operator makes a channel and a rule, sends a test
notice, and sees it in the delivery log once a real worker has delivered it to a real receiver."""

from __future__ import annotations

import pytest

from console.alerts.models import AlertRule, Channel
from tests.browser.conftest import screenshot, sign_in
from tests.people import person
from tooling.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_operator_creates_a_channel_and_a_rule_and_sees_a_test_notice_delivered(page, web, worker):
    receiver = WebhookReceiver().start()
    try:
        person("operator", "opal")
        sign_in(page, web, "opal")
        page.goto(f"{web}/alerts/")
        page.click("#channel-form-box summary")
        page.fill("#channel-form input[name=name]", "on-call hook")
        page.fill("#channel-form input[name=url]", receiver.url)
        page.fill("#channel-form input[name=secret]", "browser-secret")
        page.click("#channel-form button")
        row = page.locator("#channels tbody tr", has_text="on-call hook")
        row.wait_for()
        assert "secret set" in row.inner_text() and "browser-secret" not in page.content()

        page.click("#rule-form-box summary")
        page.fill("#rule-form input[name=name]", "orders dying")
        page.select_option("#rule-form select[name=kind]", "dead_letters")
        page.select_option("#rule-form select[name=scope]", "queue")
        page.fill("#rule-form input[name=scope_value]", "t.commands")
        page.fill("#rule-form input[name=threshold]", "5")
        page.select_option("#rule-form select[name=channels]", label="on-call hook")
        page.click("#rule-form button")
        page.locator("#rules tbody tr", has_text="orders dying").wait_for()
        rule = AlertRule.objects.get()
        assert (rule.kind, rule.scope, rule.scope_value, rule.threshold, [c.name for c in rule.channels.all()]) == ("dead_letters", "queue", "t.commands", 5, ["on-call hook"])
        assert "ok" in page.inner_text("#rules tbody tr")

        row.locator("button", has_text="Send a test").click()
        sent = page.locator("#deliveries tbody tr.delivery-sent", has_text="on-call hook")
        sent.wait_for(timeout=20_000)
        assert "test" in sent.inner_text() and len(receiver.received) == 1
        assert receiver.received[0].json()["event"] == "test" and Channel.objects.get().secret == "browser-secret"
        assert page.locator("#alerts-error").is_hidden()
        screenshot(page, "alerts")
    finally:
        receiver.stop()

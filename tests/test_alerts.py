"""Alert rules driven by real failures and real backlogs, notices taken by a real HTTP receiver
that checks their signatures, e-mail through Django's test outbox."""

from __future__ import annotations

import hashlib
import hmac
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import current_app
from django.core import mail
from django.db import connection
from django.utils import timezone

import flows
from console.alerts.evaluate import evaluate_rules
from console.alerts.models import Alert, AlertRule, Channel, Delivery, Silence
from console.alerts.silences import group_silences
from flows.models import DeadLetter
from tests.support.brokers import purge, push_raw
from tests.support.waiting import wait_for
from tests.support.workers import ManagedProcess
from tooling.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "s3cret-for-the-receiver"
BACKLOG = "t.backlog.raise"  # a queue no test worker consumes: its depth is ours to set


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_receiver(receiver: WebhookReceiver) -> Iterator[None]:
    receiver.clear()
    purge(BACKLOG)
    yield
    purge(BACKLOG)


def webhook(receiver: WebhookReceiver, **fields: object) -> Channel:
    return Channel.objects.create(name="on call", kind="webhook", url=receiver.url, secret=SECRET, created_by="tests", **fields)


def signed_bodies(receiver: WebhookReceiver) -> list[dict]:
    """Every body received, each checked against its signature and timestamp header."""
    bodies = []
    for hit in list(receiver.received):
        expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(hit.headers["x-flowscope-signature"], expected), "the signature is the HMAC-SHA256 of the raw body"
        body = hit.json()
        assert hit.headers["x-flowscope-timestamp"] == str(body["sent_at"])
        bodies.append(body)
    return bodies


def events(receiver: WebhookReceiver) -> list[str]:
    return [b["event"] for b in signed_bodies(receiver)]


def kill_poison(key: str) -> None:
    flows.send("test.command", {"key": key, "poison": True})  # dead-lettered at its first attempt


def test_dead_letters_over_n_fire_once_and_resolve_once_on_the_beat(worker, receiver):
    """The workers' beat evaluates (every 0.5 s here); the rule fires when the second dead letter
    of its handler is stored and resolves once the window has passed them and the clear time too."""
    webhook(receiver)
    rule = AlertRule.objects.create(name="commands dying", kind="dead_letters", scope="handler", scope_value="t_command", threshold=2, window_seconds=4, clear_seconds=1, created_by="tests")
    schedule = tempfile.mkdtemp(prefix="flowscope-beat-") + "/schedule"
    beat = ManagedProcess(
        "alert-beat",
        ["-A", "console", "worker", "-B", "-s", schedule, "-Q", "flows.control", "-c", "1", "-n", f"alertbeat@{socket.gethostname()}", "-l", "INFO"],
        ready_marker=" ready.",
        command=[sys.executable, "-m", "celery"],
        extra_env={"ALERTS_EVALUATE_SECONDS": "0.5", "DJANGO_SETTINGS_MODULE": "tests.settings"},
    ).start()
    try:
        kill_poison("first")
        wait_for(lambda: DeadLetter.objects.filter(consumer="t_command").count() == 1, what="the first dead letter")
        wait_for(lambda: AlertRule.objects.get(pk=rule.pk).evaluated_at, what="the beat to evaluate the rule")
        assert not Alert.objects.exists(), "one dead letter is under the threshold of two"
        kill_poison("second")
        wait_for(lambda: events(receiver) == ["fired"], what="the fired notice")
        fired = signed_bodies(receiver)[0]
        assert fired["alert"]["observed"]["dead_letters"] == 2 and fired["alert"]["rule"]["name"] == "commands dying"
        wait_for(lambda: events(receiver) == ["fired", "resolved"], timeout=30, what="the resolved notice, once the window has passed")
        alert = Alert.objects.get()
        assert alert.state == "resolved" and alert.resolved_at > alert.started_at
        # The receiver may have the notice a moment before the worker records it sent.
        wait_for(lambda: sorted(Delivery.objects.values_list("kind", "state")) == [("fired", "sent"), ("resolved", "sent")], what="both deliveries recorded sent")
        evaluated = AlertRule.objects.get(pk=rule.pk).evaluated_at
        wait_for(lambda: AlertRule.objects.get(pk=rule.pk).evaluated_at > evaluated, what="another evaluation")
        assert events(receiver) == ["fired", "resolved"] and Alert.objects.count() == 1, "quiet again: nothing more"
    finally:
        beat.stop()


def backlog(depth: int) -> None:
    purge(BACKLOG)
    if depth:
        push_raw(BACKLOG, *[b"filler"] * depth)


def test_a_flapping_queue_depth_notifies_once_and_resolves_once(worker, receiver):
    webhook(receiver)
    AlertRule.objects.create(name="backlog", kind="queue_depth", scope="queue", scope_value=BACKLOG, threshold=3, clear_seconds=60, created_by="tests")
    now = timezone.now()
    for step, depth in enumerate([4, 0, 5, 1, 6, 0, 4, 0]):  # over, under, over...: each under lasts less than the clear time
        backlog(depth)
        evaluate_rules(now + timedelta(seconds=step * 5))
    assert Alert.objects.filter(state="firing").count() == 1
    wait_for(lambda: events(receiver) == ["fired"], what="one fired notice")
    evaluate_rules(now + timedelta(seconds=7 * 5 + 61))  # clear for longer than clear_seconds
    wait_for(lambda: events(receiver) == ["fired", "resolved"], what="one resolved notice")
    assert Alert.objects.get().state == "resolved"


def test_a_silenced_rule_records_its_alert_but_sends_nothing(worker, receiver):
    channel = webhook(receiver)
    muted = AlertRule.objects.create(name="muted backlog", kind="queue_depth", scope="queue", scope_value=BACKLOG, threshold=3, created_by="tests")
    loud = AlertRule.objects.create(name="loud backlog", kind="queue_depth", scope="queue", scope_value=BACKLOG, threshold=2, created_by="tests")
    Silence.objects.create(rule=muted, until=timezone.now() + timedelta(hours=1), created_by="alice", reason="maintenance")
    backlog(4)
    evaluate_rules()
    wait_for(lambda: events(receiver) == ["fired"], what="the unsilenced rule's notice")
    assert signed_bodies(receiver)[0]["alert"]["rule"]["id"] == loud.pk
    alert = Alert.objects.get(rule=muted)
    assert alert.muted and alert.state == "firing"
    assert list(Delivery.objects.filter(alert=alert).values_list("channel_id", "state")) == [(channel.pk, "muted")]


def test_a_failing_webhook_is_retried_then_logged_as_failed_with_the_reason(worker, receiver, settings):
    settings.ALERTS_DELIVERY_ATTEMPTS, settings.ALERTS_DELIVERY_BACKOFF_SECONDS = 3, 0.2
    receiver.status = 503
    webhook(receiver)
    AlertRule.objects.create(name="backlog", kind="queue_depth", scope="queue", scope_value=BACKLOG, threshold=3, created_by="tests")
    backlog(4)
    evaluate_rules()
    delivery = wait_for(lambda: Delivery.objects.filter(state="failed").first(), what="the delivery to fail for good")
    assert delivery.attempts == 3 and len(receiver.received) == 3, "tried three times"
    assert "attempt 3 of 3" in delivery.last_error and "answered 503" in delivery.last_error and receiver.url in delivery.last_error
    assert SECRET not in delivery.last_error


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Deliveries run in this process, where Django's test outbox is."""
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = False


def test_an_alert_by_e_mail_reaches_the_outbox_with_what_the_rule_saw(worker, eager_tasks):
    Channel.objects.create(name="ops mail", kind="email", emails=["ops@example.com", "lead@example.com"], created_by="tests")
    AlertRule.objects.create(name="any dead letter", kind="dead_letters", scope="handler", scope_value="t_command", threshold=1, created_by="tests")
    kill_poison("mailed")
    wait_for(lambda: DeadLetter.objects.filter(consumer="t_command").exists(), what="the dead letter")
    evaluate_rules()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ops@example.com", "lead@example.com"]
    assert "[Flowscope fired] any dead letter (handler t_command): 1 dead letters" in message.subject
    assert '"dead_letters": 1' in message.body
    assert Delivery.objects.get().state == "sent"


def test_a_muted_failure_group_is_recorded_not_sent_counts_for_no_rule_and_says_who_muted_it_and_why(worker, receiver):
    webhook(receiver)
    groups = AlertRule.objects.create(name="new failures", kind="failure_group", scope="handler", scope_value="t_command", window_seconds=600, created_by="tests")
    dying = AlertRule.objects.create(name="two dead", kind="dead_letters", scope="handler", scope_value="t_command", threshold=2, window_seconds=600, created_by="tests")
    kill_poison("muted-group")
    muted = wait_for(lambda: DeadLetter.objects.filter(consumer="t_command").first(), what="the poison's dead letter").fingerprint
    until = timezone.now() + timedelta(hours=2)
    Silence.objects.create(fingerprint=muted, until=until, created_by="alice", reason="fix deploying")
    loud = flows.send("test.command", {"key": "loud-group", "bug": "loud-bug"})
    heard = wait_for(lambda: DeadLetter.objects.filter(message_id=loud.message_id).first(), what="the bug's dead letter").fingerprint
    evaluate_rules()
    wait_for(lambda: events(receiver) == ["fired"], what="the loud group's notice")
    assert signed_bodies(receiver)[0]["alert"]["subject"] == heard
    alerts = {a.subject: a for a in Alert.objects.filter(rule=groups)}
    assert set(alerts) == {muted, heard} and alerts[muted].muted and not alerts[heard].muted
    assert Delivery.objects.get(alert=alerts[muted]).state == "muted"
    assert not Alert.objects.filter(rule=dying).exists(), "the muted group's dead letter does not count: one of two"
    shown = group_silences([muted, heard])
    assert list(shown) == [muted]
    assert shown[muted]["text"] == f"muted until {until:%Y-%m-%d %H:%M} UTC by alice (fix deploying)"


def test_two_nodes_evaluating_at_once_fire_a_rule_once(worker, receiver):
    """Two beat nodes' evaluations at the same moment: the per-rule claim lets one of them in."""
    webhook(receiver)
    AlertRule.objects.create(name="backlog", kind="queue_depth", scope="queue", scope_value=BACKLOG, threshold=3, created_by="tests")
    backlog(4)
    start, outcomes = threading.Barrier(2), []

    def node() -> None:
        try:
            start.wait()
            outcomes.append(evaluate_rules())
        finally:
            connection.close()

    nodes = [threading.Thread(target=node) for _ in range(2)]
    for thread in nodes:
        thread.start()
    for thread in nodes:
        thread.join(30)
    assert len(outcomes) == 2 and sum(o["fired"] for o in outcomes) == 1, outcomes
    assert Alert.objects.count() == 1 and Delivery.objects.count() == 1
    wait_for(lambda: events(receiver) == ["fired"], what="one notice")

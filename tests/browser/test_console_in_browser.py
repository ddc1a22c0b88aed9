"""An operator's and a viewer's session in a real browser. Every page is screenshotted to
var/screenshots/."""

import re

import pytest

import flows
from flows.models import DeadLetter, SagaInstance
from tests.browser.conftest import screenshot, sign_in
from tests.flows_under_test import fix
from tests.people import person
from tests.support.brokers import on_rabbitmq
from tests.support.waiting import wait_for
from tests.tracing_helpers import wait_spans

pytestmark = pytest.mark.django_db(transaction=True)


def dead(key: str, bug: str) -> DeadLetter:
    envelope = flows.send("test.command", {"key": key, "bug": bug})
    return wait_for(lambda: DeadLetter.objects.filter(message_id=envelope.message_id).first(), what="a dead letter")


def test_the_overview_goes_live_and_changes_while_load_runs(page, web, worker, collector):
    person("operator", "olga")
    sign_in(page, web, "olga")
    page.wait_for_selector("#live-status.live")
    before = page.inner_text("#dead-count")
    for i in range(3):
        flows.send("test.command", {"key": f"live-{i}", "poison": True})
    page.wait_for_function(f"document.querySelector('#dead-count').textContent !== {before!r}", timeout=20_000)
    for i in range(20):
        flows.send("test.command", {"key": f"load-{i}"})
    page.wait_for_function("parseFloat(document.querySelector('#now-rate').textContent) > 0", timeout=30_000)
    page.wait_for_selector("#chart-rate .main-svg")
    # Consumers come from RabbitMQ (the session worker: one on t.commands); Redis does not say.
    consumers = "1" if on_rabbitmq() else "–"
    row = page.locator("#queues tr", has=page.locator("td", has_text=re.compile(r"^t\.commands$")))
    assert row.locator("td").all_inner_texts()[:3:2] == ["t.commands", consumers]
    screenshot(page, "overview")
    page.goto(f"{web}/graph/")
    page.wait_for_selector("#flow-graph .main-svg")
    page.wait_for_function("document.querySelectorAll('#flow-graph .scatterlayer .trace').length > 1", timeout=30_000)
    said = "consumer" if on_rabbitmq() else "waiting"
    page.wait_for_function(f"document.querySelector('#flow-graph').textContent.includes({said!r})", timeout=30_000)
    screenshot(page, "flow-graph")
    page.goto(f"{web}/audit/")
    screenshot(page, "audit")


def test_an_operator_opens_a_dead_letter_requeues_it_and_sees_it_succeed(page, web, worker, collector):
    letter = dead("browser-one", "browser-bug")
    person("operator", "oscar")
    sign_in(page, web, "oscar")
    page.goto(f"{web}/deadletters/")
    page.click(f"a[href='/deadletters/{letter.pk}/']")
    page.wait_for_selector("#requeue-one")
    assert "a bug in the handler" in page.inner_text(".error")
    screenshot(page, "dead-letter")
    fix("browser-bug")
    page.click("#requeue-one")
    page.wait_for_selector("#dl-state.resolved")
    assert page.inner_text("#requeue-result") == "succeeded after the requeue"


def test_an_operator_requeues_a_group_and_its_rows_and_dead_count_change_in_place(page, web, worker, collector):
    letters = [dead(f"group-{i}", "group-bug") for i in range(5)]
    fix("group-bug")
    person("operator", "greta")
    sign_in(page, web, "greta")
    page.goto(f"{web}/deadletters/")
    fingerprint = letters[0].fingerprint
    group = f"#groups tr[data-fingerprint='{fingerprint}']"
    page.wait_for_selector(f"{group} .dead-count")
    assert (page.inner_text(f"{group} .count"), page.inner_text(f"{group} .dead-count")) == ("5", "5")
    screenshot(page, "dead-letters")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    page.click(f"button.requeue-group[data-fingerprint='{fingerprint}']")
    page.wait_for_function("document.querySelector('#bulk-what').textContent.includes('5 dead letter(s)')")
    page.fill("#bulk-rate", "4")
    page.fill("#bulk-canary-size", "2")
    page.click("#bulk-start")
    page.wait_for_function("document.querySelector('#bulk-canary').textContent.startsWith('canary: 2 sent, 2 succeeded, 0 failed again')")
    page.wait_for_function("document.querySelector('#bulk-progress').value === 1", timeout=30_000)
    rows = ", ".join(f"tr[data-id='{d.pk}'] .state" for d in letters)
    page.wait_for_function(f"[...document.querySelectorAll(\"{rows}\")].every((s) => s.textContent === 'resolved')", timeout=30_000)
    # The page lists dead ones: the group's count falls to 0, its row kept to show it.
    page.wait_for_function(f"document.querySelector(\"{group} .count\")?.textContent === '0'")
    assert page.inner_text(f"{group} .dead-count") == "0"
    # The job is marked done after its last requeue, and the page shows it on its next poll.
    page.wait_for_function("document.querySelector('#bulk-status').textContent.includes('done: 5 requeued, 0 skipped of 5 (100 %)')")
    assert page.inner_text("#bulk-outcomes") == "outcomes so far: 5 succeeded, 0 failed again, 0 pending"
    assert page.evaluate("window.sameDocument") is True
    screenshot(page, "bulk-requeue-done-in-place")
    assert DeadLetter.objects.filter(pk__in=[d.pk for d in letters], state="resolved").count() == 5


def test_a_compensated_saga_shows_its_compensations_in_reverse_order_and_its_trace(page, web, worker, collector):
    saga = flows.start_saga("test.trip", {"trip": "browser-trip", "fail_at": "charge"})
    wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state="compensated").exists(), what="the saga to compensate")
    wait_spans(8, saga_id=str(saga.pk), what="the saga's spans")
    person("viewer", "vera")
    sign_in(page, web, "vera")
    page.goto(f"{web}/sagas/?state=compensated")
    screenshot(page, "sagas")
    page.click(f"a[href='/sagas/{saga.pk}/']")
    rows = page.locator("#plan tbody tr")
    assert rows.count() == 3
    compensated = [(rows.nth(i).locator("td").nth(1).inner_text(), rows.nth(i).locator("td").nth(3).inner_text()) for i in range(3)]
    assert [status.split("\n")[0] for _, status in compensated] == ["succeeded", "succeeded", "not needed"]
    finished = {name: re.search(r"(\d\d:\d\d:\d\d\.\d+)", status).group(1) for name, status in compensated[:2]}
    assert finished["hotel"] < finished["flight"], f"hotel is undone before flight: {finished}"
    screenshot(page, "saga")
    page.click("#trace-link")
    page.wait_for_function("document.querySelectorAll('#wf-rows .wf-row').length >= 8")
    page.locator("#wf-rows .wf-row .nm").first.click()
    page.wait_for_selector("#span-detail h3")
    screenshot(page, "trace")
    page.goto(f"{web}/traces/?correlation_id={saga.correlation_id}")
    screenshot(page, "traces")


def test_a_viewer_sees_no_requeue_button_and_the_post_answers_403(page, web, worker):
    letter = dead("viewer-browser", "viewer-bug")
    person("viewer", "victor")
    sign_in(page, web, "victor")
    page.goto(f"{web}/deadletters/{letter.pk}/")
    page.wait_for_selector("h1")
    assert page.locator("#requeue-one").count() == 0
    status = page.evaluate(f"fetch('/api/v1/deadletters/{letter.pk}/requeue', {{method: 'POST', headers: {{'X-CSRFToken': document.cookie.match(/csrftoken=([^;]+)/)[1]}}}}).then(r => r.status)")
    assert status == 403
    letter.refresh_from_db()
    assert letter.state == "dead"
    screenshot(page, "dead-letter-as-viewer")

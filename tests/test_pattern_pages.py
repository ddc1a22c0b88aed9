"""The pages that know the patterns, fed by real flows through real workers and the collector:
a fanned-out event's subscribers, a queue's competing consumers, a type's versions and upcasts,
and a request type's timeouts and late replies; the same through the API, bad input refused."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

import flows
from flows.core.errors import ReplyTimeout
from flows.models import DeadLetter, LateReply
from flows.operate.pattern_selectors import SKEW_THRESHOLD, queue_view
from tests.people import client_for
from tests.support.waiting import wait_for
from tests.support.workers import Worker
from tests.tracing_helpers import flush_here, wait_spans
from tracing.models import Span

pytestmark = pytest.mark.django_db(transaction=True)
CONSUMER, CLIENT = 4, 2


@pytest.fixture(scope="module")
def two_consumers(django_db_setup) -> Iterator[list[Worker]]:
    """Two worker processes competing on t.work (the session worker leaves that queue alone)."""
    nodes = [Worker(name, ["t.work"], concurrency=1).start() for name in ("alpha", "beta")]
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def viewer():
    return client_for("viewer")


def test_a_fanned_out_event_s_page_shows_each_subscriber_s_status(worker, collector, viewer):
    event = flows.send("test.event", {"key": "page-e1"}, correlation_id="fan-page")
    message_id = str(event.message_id)
    # fast and slow once, failing twice: four process spans; and its dead letter
    wait_spans(4, message_id=message_id, kind=CONSUMER)
    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=event.message_id, consumer="t_sub_failing").first(), what="the failing subscriber's dead letter")

    body = viewer.get(f"/api/v1/messages/{message_id}").json()
    assert (body["message_type"], body["schema_version"], body["pattern"], body["correlation_id"]) == ("test.event", 1, "fan_out", "fan-page")
    statuses = {s["consumer"]: (s["status"], s["attempts"], s["dead_letter_id"]) for s in body["subscribers"]}
    assert statuses == {"t_sub_fast": ("done", 1, None), "t_sub_slow": ("done", 1, None), "t_sub_failing": ("dead", 2, dead.pk)}
    assert len(body["trace_ids"]) == 1
    assert {h["queue"] for h in body["hops"] if h["kind"] == "producer"} == {"t.fan.fast", "t.fan.slow", "t.fan.failing"}

    page = viewer.get(f"/messages/{message_id}/").content.decode()
    assert 'data-status="dead"' in page and page.count('data-status="done"') == 2
    assert f'href="/deadletters/{dead.pk}/"' in page and f'href="/traces/{body["trace_ids"][0]}/"' in page
    assert viewer.get(f"/search/?q={message_id}").url == f"/messages/{message_id}/"
    assert f'href="/messages/{message_id}/"' in viewer.get(f"/deadletters/{dead.pk}/").content.decode()


def test_a_queue_s_page_shows_its_competing_consumers_and_how_they_shared_the_work(two_consumers, collector, viewer):
    sent = [flows.send("test.work", {"key": f"q{i}", "sleep": 0.02}) for i in range(16)]
    wait_for(lambda: Span.objects.filter(kind=CONSUMER, message_id__in=[str(e.message_id) for e in sent]).count() >= 16, what="16 process spans")

    body = viewer.get("/api/v1/queues/t.work?window=5").json()
    assert body["handlers"] == ["t_work"] and body["deliveries"] == 16 and body["window_minutes"] == 5
    workers = {c["worker"].split("@")[0]: c for c in body["consumers"]}
    assert set(workers) == {"alpha", "beta"}
    assert sum(c["deliveries"] for c in body["consumers"]) == 16
    assert sum(c["share"] for c in body["consumers"]) == pytest.approx(1.0)
    busiest = max(c["share"] for c in body["consumers"])
    assert body["fair_share"] == 0.5 and body["skew"] == pytest.approx(busiest * 2, abs=1e-3)
    assert body["backlog"]["depth"] == 0 and body["backlog"]["state"] == "unlimited"

    page = viewer.get("/queues/t.work/?window=5").content.decode()
    assert 'id="spread-chart"' in page and "alpha@" in page and "beta@" in page


@pytest.mark.django_db  # no worker: a rolled-back transaction is enough
def test_a_queue_whose_work_went_mostly_to_one_consumer_is_flagged_as_skewed():
    now = timezone.now()
    for i, worker in enumerate(["a@h/1"] * 9 + ["b@h/2"]):
        Span.objects.create(
            trace_id=f"{i:032x}", span_id=f"{i:016x}", name="process x", kind=CONSUMER, start_time=now, duration_us=1000,
            attributes={"messaging.destination.name": "skewed.q", "flowscope.worker": worker, "flowscope.consumer": "c"},
        )  # fmt: skip
    view = queue_view("skewed.q", window=timedelta(minutes=5))
    assert [(c["worker"], c["deliveries"]) for c in view["consumers"]] == [("a@h/1", 9), ("b@h/2", 1)]
    assert view["skew"] == pytest.approx(1.8) and view["skew"] > SKEW_THRESHOLD and view["skewed"]
    assert view["backlog"] is None, "a queue the catalog does not declare is not asked of the broker"


def test_a_type_s_page_counts_the_versions_in_use_and_the_deliveries_upcast(worker, collector, viewer):
    sent = [
        flows.send("test.person", {"name": "Ada Lovelace"}, schema_version=1),
        flows.send("test.person", {"name": "Alan Turing"}, schema_version=1),
        flows.send("test.person", {"first": "Grace", "last": "Hopper"}, schema_version=2),
    ]
    wait_for(lambda: Span.objects.filter(kind=CONSUMER, message_id__in=[str(e.message_id) for e in sent]).count() >= 3, what="three process spans")
    flush_here()

    body = viewer.get("/api/v1/types/test.person?window=60").json()
    assert body["declared_versions"] == [1, 2, 3] and body["upcasters"] == ["v1 → v2"]
    assert body["handlers"] == [{"consumer": "t_person", "queue": "t.commands", "reads_version": 2}]
    used = {v["version"]: (v["processed"], v["upcast"]) for v in body["versions"]}
    assert used == {1: (2, 2), 2: (1, 0)} and body["upcast"] == 2
    (hop,) = [h for h in viewer.get(f"/api/v1/messages/{sent[0].message_id}").json()["hops"] if h["kind"] == "consumer"]
    assert hop["upcast_to"] == 2

    page = viewer.get("/types/test.person/?window=60").content.decode()
    assert 'id="upcast-total">2 deliveries' in page


def test_a_request_type_s_page_shows_its_responder_s_timeouts_and_late_replies(worker, collector, viewer):
    assert flows.request("test.ask", {"text": "quick"}, timeout=10) == {"echo": "QUICK"}
    with pytest.raises(ReplyTimeout) as raised:
        flows.request("test.ask", {"text": "slow", "sleep": 1.2}, timeout=0.3)
    wait_for(lambda: LateReply.objects.filter(request_id=raised.value.message_id).exists(), what="the late reply")
    flush_here()
    wait_for(lambda: Span.objects.filter(kind=CLIENT, name="await reply test.ask").count() >= 2, what="both waits' spans")
    wait_spans(2, kind=CONSUMER, name="process test.ask")

    (responder,) = viewer.get("/api/v1/types/test.ask").json()["responders"]
    assert (responder["consumer"], responder["requests"], responder["replied_in_time"], responder["timeouts"], responder["late_replies"]) == ("t_answer", 2, 1, 1, 1)
    assert responder["timeout_share"] == 0.5 and responder["recent_late"][0]["request_id"] == raised.value.message_id
    page = viewer.get("/types/test.ask/").content.decode()
    assert 'class="num timeouts">1' in page and 'class="num late">1' in page and f"/messages/{raised.value.message_id}/" in page


# One test a table, not one a row: each test's set-up (the engine's keys, the queues) costs more
# than its requests.
API_REFUSALS = [
    ("/api/v1/messages/not-a-uuid", 422, "message_id"),
    ("/api/v1/messages/6f1c2c1e-1111-4a4a-9b9b-0123456789ab", 404, "message_id"),
    ("/api/v1/queues/t.work?window=0", 422, "window"),
    ("/api/v1/queues/t.work?window=lots", 422, "window"),
    ("/api/v1/queues/has%20space", 400, "name"),
    ("/api/v1/queues/nobody.consumes.this", 404, "name"),
    ("/api/v1/types/test.person?window=20000", 422, "window"),
    ("/api/v1/types/bad%00name", 400, "name"),
    ("/api/v1/types/no.such.type", 404, "name"),
]
PAGE_REFUSALS = [
    ("/messages/not-a-uuid/", 400, "message_id must be a UUID"),
    ("/messages/6f1c2c1e-1111-4a4a-9b9b-0123456789ab/", 404, "names message"),
    ("/queues/t.work/?window=0", 400, "window must be"),
    ("/types/test.person/?window=soon", 400, "window must be"),
    ("/types/bad%21name/", 400, "type name must be"),
    ("/types/no.such.type/", 404, "no message type"),
]


@pytest.mark.django_db
def test_the_api_refuses_bad_input_naming_the_parameter(viewer):
    for url, status, named in API_REFUSALS:
        answer = viewer.get(url)
        assert answer.status_code == status, (url, answer.content)
        assert named in str(answer.json()["detail"]), (url, answer.json())


@pytest.mark.django_db
def test_the_pages_refuse_bad_input_saying_what_is_wrong(viewer):
    for url, status, said in PAGE_REFUSALS:
        answer = viewer.get(url)
        assert answer.status_code == status, url
        assert said in answer.content.decode(), url

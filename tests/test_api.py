import json
import uuid
from datetime import UTC, datetime

import pytest
from django.test import Client
from django.utils import timezone

import flows
from console.models import AuditEntry
from flows.models import DeadLetter, RequeueJob
from tests.flows_under_test import fix, recorded
from tests.people import client_for, token_for
from tests.support.brokers import on_rabbitmq
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def make_dead(key: str, *, bug: str = "api-bug", message_type: str = "test.command") -> DeadLetter:
    (dead,) = make_many_dead([key], bug=bug, message_type=message_type)
    return dead


def make_many_dead(keys: list[str], *, bug: str = "api-bug", message_type: str = "test.command") -> list[DeadLetter]:
    """Sent together, dead together: each dies only after its retries' delays (a second or more
    each on RabbitMQ, whose delays count whole seconds), so none waits for another's."""
    envelopes = [flows.send(message_type, {"key": key, "bug": bug}) for key in keys]
    ids = [e.message_id for e in envelopes]
    wait_for(lambda: DeadLetter.objects.filter(message_id__in=ids).count() == len(ids), what=f"{len(ids)} dead letters")
    by_message = {d.message_id: d for d in DeadLetter.objects.filter(message_id__in=ids)}
    return [by_message[i] for i in ids]


def post(client: Client, url: str, body: dict | None = None, **headers: str):
    return client.post(url, json.dumps(body or {}), content_type="application/json", headers=headers)


def test_the_openapi_description_lists_every_endpoint():
    paths = client_for("viewer").get("/api/v1/openapi.json").json()["paths"]
    for path in (
        "/api/v1/deadletters",
        "/api/v1/deadletters/groups",
        "/api/v1/deadletters/{dead_letter_id}/requeue",
        "/api/v1/requeue-jobs",
        "/api/v1/sagas/{saga_id}",
        "/api/v1/traces/{trace_id}",
        "/api/v1/graph",
        "/api/v1/queues",
        "/api/v1/messages",
    ):
        assert path in paths


def test_anonymous_calls_are_refused():
    client = Client()
    assert client.get("/api/v1/deadletters").status_code == 401
    assert post(client, "/api/v1/messages", {"type": "test.command", "payload": {"key": "x"}}).status_code == 401
    assert client.get("/api/v1/deadletters", headers={"Authorization": "Bearer fs_not-a-token"}).status_code == 401


def test_dead_letters_list_filters_and_pages_with_a_cursor(worker):
    make_many_dead([f"page-{i}" for i in range(5)])
    viewer = client_for("viewer")
    first = viewer.get("/api/v1/deadletters?limit=2&queue=t.commands").json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = viewer.get(f"/api/v1/deadletters?limit=2&queue=t.commands&cursor={first['next_cursor']}").json()
    third = viewer.get(f"/api/v1/deadletters?limit=2&queue=t.commands&cursor={second['next_cursor']}").json()
    ids = [d["id"] for page in (first, second, third) for d in page["items"]]
    assert len(ids) == len(set(ids)) == 5 and third["next_cursor"] == ""
    assert viewer.get("/api/v1/deadletters?queue=nowhere").json()["items"] == []
    assert viewer.get("/api/v1/deadletters?cursor=bogus").status_code == 400
    assert viewer.get("/api/v1/deadletters?state=undead").status_code == 422
    groups = viewer.get("/api/v1/deadletters/groups").json()
    assert groups[0]["count"] == 5 and groups[0]["error_type"] == "builtins.ValueError"


def test_a_viewer_reads_but_gets_403_from_every_state_changing_endpoint(worker):
    dead = make_dead("viewer-cannot")
    viewer = client_for("viewer")
    assert viewer.get(f"/api/v1/deadletters/{dead.pk}").status_code == 200
    for url, body in [
        (f"/api/v1/deadletters/{dead.pk}/requeue", {}),
        (f"/api/v1/deadletters/{dead.pk}/discard", {"reason": "no"}),
        (f"/api/v1/deadletters/{dead.pk}/edit-requeue", {"payload": {"key": "x"}}),
        ("/api/v1/requeue-jobs", {"ids": [dead.pk]}),
        ("/api/v1/messages", {"type": "test.command", "payload": {"key": "x"}}),
    ]:
        response = post(viewer, url, body)
        assert response.status_code == 403, url
        assert "needs the operator role" in response.json()["detail"]
    dead.refresh_from_db()
    assert dead.state == "dead" and not AuditEntry.objects.exists()


def test_an_operator_requeues_and_the_audit_log_says_who_what_and_when(worker):
    dead = make_dead("op-requeue", bug="op-bug")
    fix("op-bug")
    operator = client_for("operator")
    response = post(operator, f"/api/v1/deadletters/{dead.pk}/requeue")
    assert response.status_code == 200 and response.json()["requeued"] is True
    assert post(operator, f"/api/v1/deadletters/{dead.pk}/requeue").status_code == 409
    wait_for(lambda: any(e.startswith("op-requeue|") for e in recorded("t_command")), what="the requeued message to succeed")
    (entry,) = AuditEntry.objects.all()
    assert (entry.actor, entry.via, entry.action, entry.object_ids, entry.before, entry.after) == ("operator-user", "web", "requeue", [dead.pk], {"state": "dead"}, {"state": "requeued"})
    assert (timezone.now() - entry.at).total_seconds() < 60


def test_session_writes_need_the_csrf_token_and_token_writes_need_none(worker):
    dead = make_dead("csrf")
    strict = client_for("operator", csrf=True)
    response = post(strict, f"/api/v1/deadletters/{dead.pk}/discard", {"reason": "test"})
    assert response.status_code == 403 and "CSRF" in response.content.decode()
    token = token_for("operator")
    response = post(Client(enforce_csrf_checks=True), f"/api/v1/deadletters/{dead.pk}/discard", {"reason": "by script"}, Authorization=f"Bearer {token}")
    assert response.status_code == 200
    entry = AuditEntry.objects.get(action="discard")
    assert (entry.actor, entry.via, entry.detail) == ("token:operator script", "token", "by script")


def test_edit_and_requeue_validates_the_payload_and_audits_the_change(worker):
    dead = make_dead("edit-me", bug="edit-bug")
    operator = client_for("operator")
    bad = post(operator, f"/api/v1/deadletters/{dead.pk}/edit-requeue", {"payload": {"key": 5}})
    assert bad.status_code == 400 and "key: Input should be a valid string" in bad.json()["detail"]
    good = post(operator, f"/api/v1/deadletters/{dead.pk}/edit-requeue", {"payload": {"key": "edited"}})
    assert good.status_code == 200
    wait_for(lambda: any(e.startswith("edited|") for e in recorded("t_command")), what="the edited message to succeed")
    entry = AuditEntry.objects.get(action="edit_requeue")
    assert entry.before["payload"]["key"] == "edit-me" and entry.after["payload"] == {"key": "edited", "fail_times": 0, "sleep": 0.0, "poison": False, "bug": ""}


def test_a_bulk_requeue_counts_first_then_runs_at_its_rate_to_the_end(worker):
    dead = make_many_dead([f"bulk-{i}" for i in range(6)], bug="bulk-bug")
    fix("bulk-bug")
    operator = client_for("operator")
    fingerprint = dead[0].fingerprint
    assert post(operator, "/api/v1/requeue-jobs", {"fingerprint": fingerprint, "dry_run": True}).json() == {"count": 6}
    job = post(operator, "/api/v1/requeue-jobs", {"fingerprint": fingerprint, "rate_per_s": 20, "canary_size": 0}).json()
    assert (job["total"], job["state"]) == (6, "running")
    done = wait_for(lambda: (j := operator.get(f"/api/v1/requeue-jobs/{job['id']}").json())["state"] == "done" and j, what="the job to finish")
    assert (done["done"], done["skipped"], done["progress"]) == (6, 0, 1.0)
    wait_for(lambda: DeadLetter.objects.filter(state="resolved").count() == 6, what="all six to succeed")
    assert post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel").status_code == 409
    assert post(operator, "/api/v1/requeue-jobs", {"fingerprint": "nothing-here"}).status_code == 409
    assert post(operator, "/api/v1/requeue-jobs", {"rate_per_s": -1}).status_code == 422


def test_a_slow_bulk_requeue_can_be_cancelled_midway(worker):
    dead = make_many_dead([f"cancel-{i}" for i in range(8)], bug="cancel-bug")
    operator = client_for("operator")
    job = post(operator, "/api/v1/requeue-jobs", {"ids": [d.pk for d in dead], "rate_per_s": 2, "canary_size": 0}).json()
    wait_for(lambda: RequeueJob.objects.get(pk=job["id"]).done >= 1, what="the job to start")
    cancelled = post(operator, f"/api/v1/requeue-jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    wait_for(lambda: not DeadLetter.objects.filter(state="requeued").exists(), timeout=15, what="requeued ones to die again (the bug is not fixed)")
    final = RequeueJob.objects.get(pk=job["id"])
    assert final.state == "cancelled" and final.done < 8
    assert DeadLetter.objects.filter(pk__in=[d.pk for d in dead], series=0).count() >= 8 - final.done - 1


def test_publishing_from_outside_validates_and_answers_202_with_the_message_id(worker):
    token = token_for("operator")
    auth = {"Authorization": f"Bearer {token}"}
    response = post(Client(), "/api/v1/messages", {"type": "test.command", "payload": {"key": "from-outside"}, "correlation_id": "ext-1"}, **auth)
    assert response.status_code == 202
    body = response.json()
    wait_for(lambda: any(e.startswith("from-outside|") for e in recorded("t_command")), what="the published message")
    assert body["correlation_id"] == "ext-1" and len(body["message_id"]) == 36
    assert post(Client(), "/api/v1/messages", {"type": "test.command", "payload": {"key": 1}}, **auth).status_code == 400
    assert post(Client(), "/api/v1/messages", {"type": "no.such", "payload": {}}, **auth).status_code == 404
    assert post(Client(), "/api/v1/messages", {"type": "test.ask", "payload": {"text": "x"}}, **auth).status_code == 409
    assert post(Client(), "/api/v1/messages", {"type": "test.command"}, **auth).status_code == 422
    assert post(Client(), "/api/v1/messages", {"type": "test.command", "payload": {"key": "x" * 300_000}}, **auth).status_code == 413


def test_sagas_traces_graph_and_queues_read(worker, collector):
    saga = flows.start_saga("test.trip", {"trip": "api-trip", "fail_at": "charge"})
    wait_for(lambda: saga.__class__.objects.filter(pk=saga.pk, state="compensated").exists())
    viewer = client_for("viewer")
    assert viewer.get("/api/v1/sagas?state=compensated").json()[0]["id"] == str(saga.pk)
    detail = viewer.get(f"/api/v1/sagas/{saga.pk}").json()
    assert [(row["name"], row["action"]["status"], row["compensation"]["status"]) for row in detail["plan"]] == [
        ("flight", "succeeded", "succeeded"),
        ("hotel", "succeeded", "succeeded"),
        ("charge", "failed", "not needed"),
    ]
    assert viewer.get(f"/api/v1/sagas/{saga.pk}x").status_code == 422
    trace_id = detail["trace_id"]
    wait_for(lambda: viewer.get(f"/api/v1/traces/{trace_id}").status_code == 200, what="the saga's trace")
    trace = viewer.get(f"/api/v1/traces/{trace_id}?limit=3").json()
    assert trace["items"][0]["name"] == "saga test.trip" and len(trace["items"]) == 3 and trace["spans"] >= 3
    assert viewer.get("/api/v1/traces/xyz").status_code == 400
    assert viewer.get(f"/api/v1/traces/{'0' * 32}").status_code == 404
    assert viewer.get("/api/v1/traces?sort=name").status_code == 422
    assert viewer.get(f"/api/v1/traces?saga_id={saga.pk}").json()["items"][0]["trace_id"] == trace_id
    assert "edges" in viewer.get("/api/v1/graph?minutes=5").json()
    queues = {q["name"]: q for q in viewer.get("/api/v1/queues").json()}
    assert {"name", "depth", "consumers", "state"} <= set(queues["t.commands"])
    assert queues["t.commands"]["consumers"] == (1 if on_rabbitmq() else None), "the session worker, as RabbitMQ counts it; Redis does not say"


def test_a_filter_time_with_an_offset_postgresql_refuses_is_compared_in_utc():
    """ISO 8601 allows "+16:34", PostgreSQL's timestamptz does not (found by the fuzzing test on PostgreSQL: a 500)."""
    at = datetime(2001, 5, 2, tzinfo=UTC)
    DeadLetter.objects.create(
        message_id=uuid.uuid4(), message_type="test.command", queue="t.commands", consumer="t_command", envelope={}, error_type="E", fingerprint="f", attempts=1, first_dead_at=at, dead_at=at
    )
    operator = client_for("operator")
    # 2001-05-03T14:14:27+16:34 is 2001-05-02T21:40:27Z: after the dead letter above.
    answer = post(operator, "/api/v1/requeue-jobs", {"until": "2001-05-03T14:14:27.72+16:34", "dry_run": True})
    assert answer.status_code == 200 and answer.json() == {"count": 1}, answer.content
    answer = post(operator, "/api/v1/requeue-jobs", {"until": "9999-12-31T23:59:00-15:00", "dry_run": True})
    assert answer.status_code == 422 and "out of range once converted to UTC" in answer.content.decode(), answer.content

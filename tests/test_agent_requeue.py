"""Dead letters of an attached app (tests/attached_app), requeued through its agent on its own broker.

A real worker started through `flowscope-agent` in a subprocess, on the run's broker (Redis, or
the run's RabbitMQ vhost with BROKER=rabbitmq); the real console (pytest-django's live server)
takes the agent's reports and hands out requeue orders; the test drives the console's API as an
operator would. What the tasks received, they leave in Redis (ATTACHED_REDIS_URL).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from django.test import Client

from console.models import ApiToken, AuditEntry
from flows.models import AttachedRequeue, DeadLetter, RequeueJob
from flows.operate.attached import orders_lease
from flows.operate.requeue_jobs import requeue_job_run_slice, requeue_job_start
from flows.operate.requeue_outcomes import Outcomes, canary_outcomes
from tests.people import client_for, token_for
from tests.support.waiting import wait_for
from tests.test_agent import AttachedWorker, empty_shop_queue, free_port, produce, redis_url  # noqa: F401  (an autouse fixture)
from tests.tracing_helpers import wait_spans

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
FAST = {"FLOWSCOPE_REQUEUE_POLL_S": "0.2"}


@pytest.fixture
def console(live_server, collector, settings) -> dict[str, str]:
    """The live console the attached processes report to, closed to anonymous spans, and an agent token."""
    settings.TRACING_OTLP_OPEN = False
    settings.TRACING_OTLP_TOKEN = ""
    _, secret = ApiToken.issue(name="attached shop", role="agent", created_by="tests")
    return {"FLOWSCOPE_URL": live_server.url, "FLOWSCOPE_TOKEN": secret}


def api(method: str, url: str, token: str, body: Any = None, raw: bytes | None = None) -> Any:
    client = Client()
    headers = {"Authorization": f"Bearer {token}"}
    if method == "GET":
        return client.get(url, headers=headers)
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    return client.post(url, data, content_type="application/json", headers=headers)


def dead_letter_of(task_id: str, *, state: str = DeadLetter.State.DEAD, what: str = "") -> DeadLetter:
    return wait_for(lambda: DeadLetter.objects.filter(app="shop", message_id=uuid.UUID(task_id), state=state).first(), timeout=60, what=what or f"dead letter of {task_id} {state}")


def counter() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


def test_a_task_that_fails_for_good_is_a_dead_letter_with_its_exact_call_and_a_requeue_runs_it_again_on_the_app_broker(console):
    key = f"settle:{uuid.uuid4().hex}"
    operator = token_for("operator")
    with AttachedWorker(agent=True, **console, **FAST) as worker:
        task_id = produce(
            f"""
            from tests.attached_app import settle
            print(settle.apply_async(("{key}",), {{"amount": 42}}, priority=3).id)
            """,
            **console,
        ).stdout.strip()
        dead = dead_letter_of(task_id, what="the failed settle as a dead letter")
        (run,) = [s for s in wait_spans(2, message_id=task_id, what="the failed attempt's spans") if s.name == "process shop.settle"]
        # The exact call and where it came by, the error and the trace it died in.
        assert dead.envelope["payload"] == {"args": [key], "kwargs": {"amount": 42}} and dead.envelope["requeueable"] is True
        assert dead.envelope["routing"] == {"queue": "shop", "exchange": "", "routing_key": "shop", "priority": 3}, dead.envelope["routing"]
        assert (dead.message_type, dead.consumer, dead.queue, dead.attempts, dead.error_type) == ("shop.settle", "shop.settle", "shop", 1, "builtins.RuntimeError")
        assert "ledger locked while settling 42" in dead.error_message and "in settle" in dead.traceback
        assert dead.trace_id == run.trace_id and dead.envelope["headers"]["traceparent"].split("-")[2] == run.span_id
        assert dead.envelope["worker"] == worker.node and len(dead.fingerprint) == 16
        # The console shows it as any dead letter, in its group.
        viewer = token_for("viewer")
        shown = api("GET", f"/api/v1/deadletters/{dead.pk}", viewer).json()
        assert (shown["state"], shown["envelope"]["payload"]["kwargs"], shown["consumer"]) == ("dead", {"amount": 42}, "shop.settle")
        groups = api("GET", "/api/v1/deadletters/groups?message_type=shop.settle", viewer).json()
        assert [g["fingerprint"] for g in groups] == [dead.fingerprint]

        answer = api("POST", f"/api/v1/deadletters/{dead.pk}/requeue", operator)
        assert answer.status_code == 200 and answer.json()["dead_letter"]["state"] == "requeued", answer.content
        resolved = dead_letter_of(task_id, state=DeadLetter.State.RESOLVED, what="the requeued copy's success resolving it")
        assert int(counter().get(key)) == 2  # it ran again, on the app's own broker and queue
        (order,) = AttachedRequeue.objects.filter(dead_letter=dead)
        assert order.sent_at is not None and order.series == 1 == resolved.series
        # The copy is a new trace, started by the console's requeue span, linked to the old one.
        copy = wait_spans(3, trace_id=resolved.requeue_trace_id, what="the requeue span and the copy's send and process spans")
        # One process of the worker takes orders: its main process, not the pool's.
        takers = [line for line in worker.log().splitlines() if "taking requeue orders for shop" in line]
        assert len(takers) == 1 and "/MainProcess]" in takers[0], takers
    named = {s.name: s for s in copy}
    assert {"requeue shop.settle", "send shop.settle", "process shop.settle"} <= set(named), list(named)
    requeue_span, send, process = named["requeue shop.settle"], named["send shop.settle"], named["process shop.settle"]
    assert send.parent_span_id == requeue_span.span_id and process.parent_span_id == send.span_id
    assert (process.attributes["flowscope.outcome"], process.attributes["messaging.destination.name"]) == ("succeeded", "shop")
    assert process.message_id != task_id and requeue_span.trace_id != dead.trace_id
    assert [(link["trace_id"], link["attributes"].get("flowscope.link")) for link in requeue_span.links] == [(dead.trace_id, "requeue-of")]
    assert AuditEntry.objects.filter(action="requeue", object_ids=[dead.pk]).exists()


def test_edited_kwargs_are_what_the_requeued_task_receives_and_a_bad_edit_changes_nothing(console):
    order_id = f"O-{uuid.uuid4().hex[:8]}"
    operator = token_for("operator")
    with AttachedWorker(agent=True, **console, **FAST):
        task_id = produce(
            f"""
            from tests.attached_app import ship
            print(ship.delay("{order_id}", carrier="nowhere").id)
            """,
            **console,
        ).stdout.strip()
        dead = dead_letter_of(task_id)
        assert dead.envelope["payload"] == {"args": [order_id], "kwargs": {"carrier": "nowhere"}}
        for wrong, reason in (({"kwargs": ["ups"]}, "kwargs must be a JSON object"), ({"args": "O-1"}, "args must be a JSON list"), ({"carrier": "ups"}, "args, kwargs or both")):
            refused = api("POST", f"/api/v1/deadletters/{dead.pk}/edit-requeue", operator, {"payload": wrong})
            assert refused.status_code == 400 and reason in refused.json()["detail"], refused.content
        assert DeadLetter.objects.get(pk=dead.pk).state == "dead" and not AttachedRequeue.objects.exists()

        answer = api("POST", f"/api/v1/deadletters/{dead.pk}/edit-requeue", operator, {"payload": {"kwargs": {"carrier": "ups"}}})
        assert answer.status_code == 200 and answer.json()["payload"] == {"args": [order_id], "kwargs": {"carrier": "ups"}}, answer.content
        dead_letter_of(task_id, state=DeadLetter.State.RESOLVED)
    calls = [json.loads(c) for c in counter().lrange(f"shipped:{order_id}", 0, -1)]
    assert calls == [{"args": [order_id], "kwargs": {"carrier": "nowhere"}}, {"args": [order_id], "kwargs": {"carrier": "ups"}}]
    assert DeadLetter.objects.get(pk=dead.pk).envelope["payload"]["kwargs"] == {"carrier": "ups"}  # the row keeps the call that was sent
    (entry,) = AuditEntry.objects.filter(action="edit_requeue")
    assert entry.before["payload"]["kwargs"] == {"carrier": "nowhere"} and entry.after["payload"]["kwargs"] == {"carrier": "ups"}


def test_a_requeued_copy_that_fails_again_makes_the_dead_letter_dead_again_and_a_bulk_job_requeues_attached_ones(console):
    operator = token_for("operator")
    with AttachedWorker(agent=True, **console, **FAST):
        ids = produce(
            """
            from tests.attached_app import broken
            print(broken.delay("B-1").id)
            print(broken.delay("B-2").id)
            """,
            **console,
        ).stdout.split()
        first, second = (dead_letter_of(i) for i in ids)
        assert api("POST", f"/api/v1/deadletters/{first.pk}/requeue", operator).status_code == 200
        again = wait_for(lambda: DeadLetter.objects.filter(pk=first.pk, state="dead", times_dead=2).first(), timeout=60, what="the copy's death making it dead again")
        assert (again.series, again.error_type) == (1, "builtins.ValueError") and again.trace_id == again.requeue_trace_id
        # A bulk job takes attached dead letters as it takes Flowscope's own.
        job = requeue_job_start(actor="tests", ids=[first.pk, second.pk])
        requeue_job_run_slice(job.pk)  # the session's workers may run a slice of it too: the claim sends each once
        wait_for(lambda: DeadLetter.objects.filter(pk=first.pk, state="dead", times_dead=3).exists(), timeout=60, what="the first one requeued by the job and dead again")
        wait_for(lambda: DeadLetter.objects.filter(pk=second.pk, state="dead", times_dead=2).exists(), timeout=60, what="the second one requeued by the job and dead again")
        # Both were the job's canary: their deaths through the agent are its outcomes, as an engine's would be.
        assert canary_outcomes(RequeueJob.objects.get(pk=job.pk)) == Outcomes(succeeded=0, failed_again=2, pending=0)
    # By id, not by order: the two tasks ran side by side, so either may have been stored first.
    assert {r.pk: (r.series, r.times_dead) for r in DeadLetter.objects.filter(pk__in=[first.pk, second.pk])} == {first.pk: (2, 3), second.pk: (1, 2)}
    assert AttachedRequeue.objects.filter(dead_letter__in=[first.pk, second.pk], sent_at__isnull=False).count() == 3


def test_a_requeued_copy_that_retries_and_then_succeeds_resolves_its_dead_letter(console):
    key = f"collect:{uuid.uuid4().hex}"
    with AttachedWorker(agent=True, **console, **FAST):
        task_id = produce(f"from tests.attached_app import collect\nprint(collect.delay('{key}').id)", **console).stdout.strip()
        dead = dead_letter_of(task_id)
        assert api("POST", f"/api/v1/deadletters/{dead.pk}/requeue", token_for("operator")).status_code == 200
        dead_letter_of(task_id, state=DeadLetter.State.RESOLVED, what="the copy's retry succeeding and resolving it")
    assert int(counter().get(key)) == 3  # died, retried, succeeded: the retry kept the requeue's header


def test_max_retries_exceeded_is_a_dead_letter_and_a_task_whose_retry_is_pending_is_not(console):
    with AttachedWorker(agent=True, concurrency=1, **console):  # one pool process: its reports go out in order
        flaky_key = f"flaky:{uuid.uuid4().hex}"
        flaky_id, refund_id = produce(
            f"""
            from tests.attached_app import flaky, refund
            print(flaky.delay("{flaky_key}").id)
            print(refund.delay("R-1").id)
            """,
            **console,
        ).stdout.split()
        refund = dead_letter_of(refund_id, what="the refund that ran out of retries")
        wait_for(lambda: int(counter().get(flaky_key) or 0) == 2, timeout=60, what="the flaky task's second, succeeding attempt")
        # Reported after the flaky task's retry: had that retry been reported as dead, it would be in by now.
        marker = produce("from tests.attached_app import broken\nprint(broken.delay('after').id)", **console).stdout.strip()
        dead_letter_of(marker)
    assert (refund.attempts, refund.error_type, int(counter().get("refund:R-1"))) == (2, "builtins.TimeoutError", 2)
    assert not DeadLetter.objects.filter(message_id=uuid.UUID(flaky_id)).exists()


def test_a_hard_time_limit_and_a_reject_without_requeue_are_dead_letters_and_a_requeue_runs_the_task_again(console):
    operator = token_for("operator")
    with AttachedWorker(agent=True, **console, **FAST):
        stuck_id, refused_id = produce(
            """
            from tests.attached_app import refuse, stuck
            print(stuck.delay("S-1").id)
            print(refuse.delay("F-1").id)
            """,
            **console,
        ).stdout.split()
        stuck, refused = dead_letter_of(stuck_id, what="the task killed at its time limit"), dead_letter_of(refused_id, what="the rejected task")
        assert (stuck.error_type, stuck.envelope["payload"]) == ("billiard.exceptions.TimeLimitExceeded", {"args": ["S-1"], "kwargs": {}}), stuck.error_type
        assert (refused.error_type, refused.envelope["payload"]["args"]) == ("celery.exceptions.Reject", ["F-1"]), refused.error_type
        # A reject is reported by the worker's main process, which noted the request on receipt.
        for dead in (stuck, refused):
            assert (dead.envelope["routing"]["queue"], dead.envelope["routing"]["routing_key"], dead.attempts) == ("shop", "shop", 1), dead.envelope
            assert dead.trace_id and dead.envelope["worker"], dead.envelope
        assert api("POST", f"/api/v1/deadletters/{refused.pk}/requeue", operator).status_code == 200
        wait_for(lambda: int(counter().get("refused:F-1") or 0) == 2, timeout=60, what="the rejected task run again")
        wait_for(lambda: DeadLetter.objects.filter(pk=refused.pk, state="dead", times_dead=2).exists(), timeout=60, what="its second reject making it dead again")


def test_invalid_reports_are_refused_with_the_reason_and_nothing_is_stored(console):
    agent = console["FLOWSCOPE_TOKEN"]
    death = {
        "task": "shop.settle",
        "task_id": str(uuid.uuid4()),
        "args": ["k"],
        "kwargs": {},
        "requeueable": True,
        "routing": {"queue": "shop", "exchange": "shop", "routing_key": "shop"},
        "error_type": "builtins.RuntimeError",
        "attempts": 1,
    }
    url = "/api/v1/agent/reports"
    assert api("POST", url, agent, raw=b"{not json").json()["detail"].startswith("request body is not valid JSON")
    assert api("POST", url, agent, raw=b"{not json").status_code == 400
    big = api("POST", url, agent, {"app": "shop", "dead": [{**death, "traceback": "x" * (1024 * 1024)}]})
    assert big.status_code == 413 and "over the limit" in big.json()["detail"]
    assert api("POST", url, "fs_nobody-has-this", {"app": "shop", "dead": [death]}).status_code == 401
    for role in ("viewer", "operator", "admin"):
        refused = api("POST", url, token_for(role), {"app": "shop", "dead": [death]})
        assert refused.status_code == 403 and "only an agent token" in refused.json()["detail"], refused.content
        assert api("GET", "/api/v1/agent/requeues?app=shop", token_for(role)).status_code == 403
    half = api("POST", url, agent, {"app": "shop", "dead": [death, {**death, "task_id": str(uuid.uuid4()), "args": "k", "attempts": 0}]})
    assert half.status_code == 422, half.content
    assert {tuple(e["loc"]) for e in half.json()["detail"]} == {("body", "dead", 1, "args"), ("body", "dead", 1, "attempts")}
    assert api("POST", url, agent, {"app": "shop", "dead": [death], "extra": 1}).status_code == 422
    assert api("POST", url, agent, {"app": "", "dead": [death]}).status_code == 422
    assert not DeadLetter.objects.exists()
    # A good one is stored once, however often it is sent.
    for _ in range(2):
        stored = api("POST", url, agent, {"app": "shop", "dead": [death]})
        assert stored.status_code == 200, stored.content
    assert DeadLetter.objects.filter(app="shop").count() == 1 and stored.json()["dead_letters"] == [DeadLetter.objects.get().pk]


def test_a_call_that_is_not_json_is_kept_as_a_repr_and_cannot_be_requeued_until_corrected(console):
    agent, operator = console["FLOWSCOPE_TOKEN"], token_for("operator")
    probe = produce(
        """
        import json
        from flowscope_agent.deadletters import call_of
        print(json.dumps([call_of((1, "a"), {"b": [2]}), call_of((object(),), {})]))
        """,
        agent=False,
    )
    good, bad = json.loads(probe.stdout)
    assert good == {"args": [1, "a"], "kwargs": {"b": [2]}, "requeueable": True, "call_repr": ""}
    assert bad["requeueable"] is False and bad["args"] is None and "not JSON-serialisable" in bad["call_repr"] and "<object object" in bad["call_repr"]
    death = {"task": "shop.ship", "task_id": str(uuid.uuid4()), **bad, "routing": {"queue": "shop"}, "error_type": "builtins.LookupError", "attempts": 1}
    (pk,) = api("POST", "/api/v1/agent/reports", agent, {"app": "shop", "dead": [death]}).json()["dead_letters"]
    refused = api("POST", f"/api/v1/deadletters/{pk}/requeue", operator)
    assert refused.status_code == 400 and "was not JSON when it died" in refused.json()["detail"]
    assert DeadLetter.objects.get(pk=pk).state == "dead" and not AttachedRequeue.objects.exists()
    fixed = api("POST", f"/api/v1/deadletters/{pk}/edit-requeue", operator, {"payload": {"args": ["O-9"], "kwargs": {}}})
    assert fixed.status_code == 200 and AttachedRequeue.objects.get().call["args"] == ["O-9"]


def test_an_attached_dead_letter_is_shown_redacted_and_requeued_with_its_real_call(console):
    agent, operator = console["FLOWSCOPE_TOKEN"], token_for("operator")
    secret = {"password": "hunter2", "note": "mail jo@example.com"}
    death = {
        "task": "shop.login",
        "task_id": str(uuid.uuid4()),
        "args": ["jo"],
        "kwargs": secret,
        "requeueable": True,
        "routing": {"queue": "shop"},
        "error_type": "builtins.PermissionError",
        "error_message": "card 4111 1111 1111 1111 refused",
        "attempts": 1,
    }
    (pk,) = api("POST", "/api/v1/agent/reports", agent, {"app": "shop", "dead": [death]}).json()["dead_letters"]
    shown = api("GET", f"/api/v1/deadletters/{pk}", token_for("viewer")).json()
    page = client_for("viewer").get(f"/deadletters/{pk}/")
    assert page.status_code == 200
    for text in (json.dumps(shown), page.content.decode()):
        assert "hunter2" not in text and "jo@example.com" not in text and "4111 1111 1111 1111" not in text
    assert "shop.login" in page.content.decode() and shown["envelope"]["payload"]["args"] == ["jo"]
    assert api("POST", f"/api/v1/deadletters/{pk}/requeue", operator).status_code == 200
    (order,) = api("GET", "/api/v1/agent/requeues?app=shop", agent).json()["orders"]
    assert order["kwargs"] == secret  # only the app's own agent gets the call as it was


def test_an_order_leased_but_never_acknowledged_is_offered_again_when_its_lease_runs_out(console):
    agent, operator = console["FLOWSCOPE_TOKEN"], token_for("operator")
    death = {"task": "shop.settle", "task_id": str(uuid.uuid4()), "args": ["k"], "kwargs": {"amount": 1}, "requeueable": True, "routing": {"queue": "shop"}, "error_type": "x.Y", "attempts": 1}
    (pk,) = api("POST", "/api/v1/agent/reports", agent, {"app": "shop", "dead": [death]}).json()["dead_letters"]
    assert api("POST", f"/api/v1/deadletters/{pk}/requeue", operator).status_code == 200
    assert api("GET", "/api/v1/agent/requeues?app=other", agent).json() == {"orders": []}  # another app's agent sees none of it
    (order,) = api("GET", "/api/v1/agent/requeues?app=shop", agent).json()["orders"]
    assert (order["task"], order["args"], order["kwargs"], order["flowscope_requeue_of"]) == ("shop.settle", ["k"], {"amount": 1}, f"{pk}:1")
    assert api("GET", "/api/v1/agent/requeues?app=shop", agent).json() == {"orders": []}  # leased to the first asker
    AttachedRequeue.objects.filter(pk=order["id"]).update(leased_until=None)  # the lease ran out, the agent never acknowledged
    assert DeadLetter.objects.get(pk=pk).state == "requeued"  # still visible as requeued meanwhile
    assert [o["id"] for o in orders_lease(app="shop")] == [order["id"]]
    assert api("POST", "/api/v1/agent/requeues/ack", agent, {"app": "shop", "ids": [order["id"]]}).json() == {"acked": 1}
    AttachedRequeue.objects.filter(pk=order["id"]).update(leased_until=None)
    assert orders_lease(app="shop") == []  # acknowledged: never again


@pytest.mark.portable
def test_with_the_console_down_failing_and_other_tasks_run_and_the_agent_counts_the_reports_it_could_not_send():
    nowhere = {"FLOWSCOPE_URL": f"http://127.0.0.1:{free_port()}", "FLOWSCOPE_TOKEN": "fs_nothing-listens", "FLOWSCOPE_EXPORT_TIMEOUT": "1", **FAST}
    key = f"ticks:{uuid.uuid4().hex}"
    with AttachedWorker(agent=True, **nowhere) as worker:
        produce(
            f"""
            from tests.attached_app import broken, tick
            for i in range(5):
                broken.delay(f"D-{{i}}")
                tick.delay("{key}")
            """,
            **nowhere,
        )
        wait_for(lambda: int(counter().get(key) or 0) == 5, timeout=60, what="every tick run beside the failing tasks")
        wait_for(lambda: worker.log().count("raised unexpected: ValueError") == 5, timeout=60, what="the five failures")
        log = worker.stop()
    assert "taking requeue orders failed" in log  # the poller kept trying, off the tasks' path
    assert "could not reach the console for" in log
    sent = [line for line in log.splitlines() if "dead letters and resolutions" in line]
    assert sent and all(" reported 0 dead letters" in line for line in sent), sent


def test_a_report_with_nul_characters_is_stored_written_out_and_its_call_must_be_corrected(console):
    """PostgreSQL keeps no NUL character: such a report was a 500, and its agent resent it for ever."""
    agent, operator = console["FLOWSCOPE_TOKEN"], token_for("operator")
    death = {
        "task": "shop.scan",
        "task_id": str(uuid.uuid4()),
        "args": ["a\x00b"],
        "kwargs": {},
        "requeueable": True,
        "routing": {"queue": "shop"},
        "error_type": "x.Y",
        "error_message": "bad \x00 byte",
        "attempts": 1,
    }
    answer = api("POST", "/api/v1/agent/reports", agent, {"app": "shop", "dead": [death]})
    assert answer.status_code == 200, answer.content
    dead = DeadLetter.objects.get(pk=answer.json()["dead_letters"][0])
    assert dead.error_message == "bad \\x00 byte" and dead.envelope["payload"]["args"] == ["a\\x00b"] and dead.envelope["requeueable"] is False
    refused = api("POST", f"/api/v1/deadletters/{dead.pk}/requeue", operator)
    assert refused.status_code == 400 and "NUL characters" in refused.json()["detail"]

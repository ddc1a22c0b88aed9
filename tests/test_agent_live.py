"""Live operations of attached apps: workers, the live task list, revoke orders, app-scoped agent tokens.

The ingest (flows.operate.live_tasks) is tested on the database; the agent end to end with a
real agent-wrapped worker in a subprocess reporting to the real console (pytest-django's live
server), on the run's broker (Redis, or RabbitMQ with BROKER=rabbitmq).
"""

from __future__ import annotations

import http.server
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery.worker import state as worker_state
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from flowscope_agent import config as agent_config
from flowscope_agent.live import RECEIPT, RECEIVED_AT, Live, LiveOutbox

from console.models import ApiToken, AuditEntry
from flows.models import DeadLetter, LiveTask, LiveWorker, RevokeOrder
from flows.operate.live_tasks import LiveReportError, prune_live, record_tasks, record_workers
from tests.people import client_for, token_for
from tests.support.waiting import wait_for
from tests.test_agent import RUNTIME, AttachedWorker, empty_shop_queue, free_port, produce, run_ticks  # noqa: F401  (an autouse fixture)

T0 = float(int(time.time())) - 600  # recent: older rows are pruned by the retention


def event(task_id: str, state: str, at: float, **more: object) -> dict[str, object]:
    return {"id": task_id, "state": state, "at": at, **more}


@pytest.mark.django_db
def test_a_task_keeps_its_newest_state_and_an_older_event_arriving_later_never_moves_it_back():
    assert record_tasks("shop", [event("t1", "succeeded", T0 + 2, runtime_s=0.5, worker="w1@h")]) == 1
    # The main process's "received", with the call, arrives after the pool's "succeeded".
    record_tasks("shop", [event("t1", "received", T0, name="shop.ship", args="('O-1',)", kwargs="{'carrier': 'ups'}", queue="shop")])
    record_tasks("shop", [event("t1", "started", T0 + 1)])
    row = LiveTask.objects.get(app="shop", task_id="t1")
    assert (row.state, row.state_at.timestamp(), row.runtime_s, row.worker) == ("succeeded", T0 + 2, 0.5, "w1@h")
    assert (row.name, row.args, row.kwargs, row.queue, row.source) == ("shop.ship", "('O-1',)", "{'carrier': 'ups'}", "shop", "agent")
    assert (row.received_at.timestamp(), row.started_at.timestamp()) == (T0, T0 + 1)
    # A retry's run is newer: the task moves on again.
    record_tasks("shop", [event("t1", "retried", T0 + 3, exception="ConnectionError('gateway')"), event("t1", "started", T0 + 4)])
    row.refresh_from_db()
    assert (row.state, row.exception) == ("started", "ConnectionError('gateway')")


@pytest.mark.django_db
def test_a_later_attempt_wins_over_the_retry_report_of_the_attempt_before_whatever_the_clocks_say():
    # The copy of a retry ran and succeeded in one pool process before the process that asked
    # for the retry reported it (seen on RabbitMQ): its "retried" comes last, with the latest time.
    record_tasks("shop", [event("r1", "received", T0, retries=0), event("r1", "started", T0 + 1, retries=0)])
    record_tasks("shop", [event("r1", "received", T0 + 2, retries=1), event("r1", "started", T0 + 3, retries=1), event("r1", "succeeded", T0 + 4, retries=1)])
    record_tasks("shop", [event("r1", "retried", T0 + 5, retries=0, exception="Retry in 0s")])
    row = LiveTask.objects.get(task_id="r1")
    assert (row.state, row.retries, row.exception) == ("succeeded", 1, "Retry in 0s")
    # Without the attempt (Celery events say it on receipt only), time decides.
    record_tasks("shop", [event("r1", "revoked", T0 + 6)])
    assert LiveTask.objects.get(task_id="r1").state == "revoked"


@pytest.mark.django_db
def test_a_change_an_agent_folded_keeps_the_receipt_and_the_start_it_folded_in():
    record_tasks("shop", [event("f1", "succeeded", T0 + 2, received_at=T0, started_at=T0 + 1, runtime_s=0.5)])
    row = LiveTask.objects.get(task_id="f1")
    assert (row.state, row.received_at.timestamp(), row.started_at.timestamp(), row.runtime_s) == ("succeeded", T0, T0 + 1, 0.5)
    # The first receipt and the last start stay, whichever report says them.
    record_tasks("shop", [event("f1", "received", T0 + 0.5), event("f1", "retried", T0 + 0.6, started_at=T0 + 0.5)])
    row.refresh_from_db()
    assert (row.state, row.received_at.timestamp(), row.started_at.timestamp()) == ("succeeded", T0, T0 + 1)


@pytest.mark.django_db
def test_at_one_instant_a_later_step_wins_and_an_unchanged_event_changes_nothing():
    record_tasks("shop", [event("t2", "started", T0), event("t2", "received", T0)])
    assert LiveTask.objects.get(task_id="t2").state == "started"
    assert record_tasks("shop", [event("t2", "received", T0)]) == 0


@pytest.mark.django_db
def test_args_and_kwargs_are_stored_redacted():
    record_tasks(
        "shop",
        [
            event("t3", "received", T0, args="('ann@example.com', '4111 1111 1111 1111')", kwargs="{'password': 'hunter2', 'amount': 3}"),
            event("t4", "received", T0, args="(<User password=hunter2>,)", kwargs="{}"),
            # No sensitive name in the text: masked by value where it stands, the literal left unparsed.
            event("t5", "received", T0, args="(<User ann@example.com>, 4111111111111111)", kwargs="{'customerEmail': 'x', 'nested': ('b@c.io', 1)}"),
        ],
    )
    t3, t4, t5 = (LiveTask.objects.get(task_id=t) for t in ("t3", "t4", "t5"))
    # The app's own form is kept: its tuple stays a tuple.
    assert (t3.args, t3.kwargs) == ("('[redacted]', '[redacted]')", "{'password': '[redacted]', 'amount': 3}")
    assert "hunter2" not in t4.args and t4.args.startswith("[redacted]")
    assert (t5.args, t5.kwargs) == ("(<User [redacted]>, [redacted])", "{'customerEmail': '[redacted]', 'nested': ['[redacted]', 1]}")


@pytest.mark.django_db
def test_a_task_known_from_events_says_so_until_its_agent_reports_it():
    record_tasks("shop", [event("t5", "received", T0)], source="events")
    assert LiveTask.objects.get(task_id="t5").source == "events"
    record_tasks("shop", [event("t5", "started", T0 + 1)])
    record_tasks("shop", [event("t5", "succeeded", T0 + 2)], source="events")
    assert LiveTask.objects.get(task_id="t5").source == "agent"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (event("x", "lost", T0), "state 'lost' is not one of received, started"),
        (event("", "received", T0), "'id' must be the task id"),
        (event("x", "received", "yesterday"), "'at' must be a number of epoch seconds"),
        (event("x", "received", 1e13), "not between 2000 and 2100"),
        (event("x", "received", T0, runtime_s=-1), "'runtime_s' must be a number"),
        (event("x", "received", T0, args=["a"]), "'args' must be a string or null"),
        (event("x", "received", T0, trace_id="nothex"), "'trace_id' must be 32 lowercase hex digits"),
        (event("x", "succeeded", T0, started_at="soon"), "'started_at' must be a number of epoch seconds"),
        (event("x", "succeeded", T0, received_at=1e13), "'received_at'=10000000000000.0 is not between 2000 and 2100"),
        ("not an object", "a task event is an object"),
    ],
)
def test_a_bad_event_is_refused_with_its_reason_and_nothing_of_its_batch_is_stored(bad, reason):
    with pytest.raises(LiveReportError, match=reason):
        record_tasks("shop", [event("good", "received", T0), bad])
    assert not LiveTask.objects.exists()
    with pytest.raises(LiveReportError, match="source must be one of agent, events"):
        record_tasks("shop", [event("good", "received", T0)], source="flower")


@pytest.mark.django_db
def test_a_worker_report_moves_forward_only_and_a_bad_one_is_refused():
    w = {"hostname": "w1@h", "at": T0 + 5, "online": True, "pool": "prefork", "concurrency": 4, "active": 2, "processed": 10}
    assert record_workers("shop", [w]) == 1
    assert record_workers("shop", [{**w, "at": T0, "active": 0}]) == 0  # older: ignored
    record_workers("shop", [{**w, "at": T0 + 6, "online": False}])
    row = LiveWorker.objects.get(app="shop", hostname="w1@h")
    assert (row.online, row.pool, row.concurrency, row.active, row.processed) == (False, "prefork", 4, 2, 10)
    for bad, reason in (({**w, "concurrency": -1}, "'concurrency' must be a whole number"), ({**w, "online": "yes"}, "'online' must be true or false"), ({**w, "hostname": ""}, "'hostname'")):
        with pytest.raises(LiveReportError, match=reason):
            record_workers("shop", [bad])


@pytest.mark.django_db
def test_history_is_bounded_by_age_and_by_count_per_app():
    now = time.time()
    record_tasks("shop", [event(f"n{i}", "succeeded", now - i) for i in range(5)] + [event("old", "succeeded", now - 3 * 86400)])
    record_tasks("mill", [event("m1", "succeeded", now)])
    pruned = prune_live(older_than=timedelta(days=1), keep_per_app=3)
    assert pruned["tasks"] == 3
    assert sorted(LiveTask.objects.filter(app="shop").values_list("task_id", flat=True)) == ["n0", "n1", "n2"]
    assert LiveTask.objects.filter(app="mill").exists() and LiveTask.objects.filter(state_at__gte=timezone.now() - timedelta(days=1)).count() == 4


# --- the API: what agents report, what the console shows, revoke orders ---


def api(method: str, url: str, token: str, body: object = None, raw: bytes | None = None):
    client = Client()
    headers = {"Authorization": f"Bearer {token}"}
    if method == "GET":
        return client.get(url, headers=headers)
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    return client.post(url, data, content_type="application/json", headers=headers)


def beat(hostname: str = "w1@h", **more: object) -> dict[str, object]:
    return {"hostname": hostname, "at": time.time(), "online": True, "pool": "prefork", "concurrency": 2, "active": 0, "processed": 0, **more}


@pytest.mark.django_db
def test_an_agent_reports_tasks_and_heartbeats_and_a_viewer_lists_them_filtered_and_paged():
    agent = ApiToken.issue(name="shop agent", role="agent", app="shop", created_by="tests")[1]
    now = time.time()
    tasks = [event(f"t{i}", "succeeded" if i % 2 else "failed", now - i, name="shop.tick" if i < 4 else "shop.ship", worker="w1@h") for i in range(6)]
    answer = api("POST", "/api/v1/agent/live", agent, {"app": "shop", "tasks": tasks, "workers": [beat()]})
    assert answer.status_code == 200 and answer.json() == {"tasks": 6, "workers": 1}, answer.content
    viewer = token_for("viewer")
    page = api("GET", "/api/v1/tasks?app=shop&state=failed&limit=2", viewer).json()
    assert [t["id"] for t in page["items"]] == ["t0", "t2"] and page["next_cursor"]
    rest = api("GET", f"/api/v1/tasks?app=shop&state=failed&limit=2&cursor={page['next_cursor']}", viewer).json()
    assert [t["id"] for t in rest["items"]] == ["t4"] and rest["next_cursor"] == ""
    assert [t["id"] for t in api("GET", "/api/v1/tasks?name=shop.ship", viewer).json()["items"]] == ["t4", "t5"]
    assert api("GET", "/api/v1/tasks?worker=nobody", viewer).json()["items"] == []
    (worker,) = api("GET", "/api/v1/workers?app=shop", viewer).json()["items"]
    assert (worker["hostname"], worker["online"], worker["pool"], worker["concurrency"], worker["source"]) == ("w1@h", True, "prefork", 2, "agent")
    assert api("GET", "/api/v1/workers?app=mill", viewer).json()["items"] == []


@pytest.mark.django_db
def test_a_worker_that_stops_reporting_is_shown_offline_after_the_timeout(settings):
    settings.LIVE_WORKER_TIMEOUT_S = 30
    record_workers("shop", [beat("quiet@h", at=time.time() - 31), beat("fresh@h")])
    shown = {w["hostname"]: (w["online"], w["said_offline"]) for w in api("GET", "/api/v1/workers", token_for("viewer")).json()["items"]}
    assert shown == {"quiet@h": (False, False), "fresh@h": (True, False)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/api/v1/tasks?state=lost", "state"),
        ("/api/v1/tasks?limit=0", "limit"),
        ("/api/v1/tasks?app=" + "a" * 101, "app"),
        ("/api/v1/workers?app=bad%20name", "app"),
    ],
)
def test_a_bad_filter_is_a_422_naming_it(url, reason):
    answer = api("GET", url, token_for("viewer"))
    assert answer.status_code == 422 and reason in json.dumps(answer.json()["detail"]), answer.content


@pytest.mark.django_db
def test_a_cursor_the_api_did_not_give_out_is_a_400():
    answer = api("GET", "/api/v1/tasks?cursor=nonsense", token_for("viewer"))
    assert answer.status_code == 400 and "not one this API gave out" in answer.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"app": "shop", "tasks": [event("t", "lost", T0)]}, 422, "state"),
        ({"app": "shop", "tasks": [event("t", "received", "soon")]}, 422, "at"),
        ({"app": "shop", "tasks": [event("t", "received", T0, trace_id="xyz")]}, 422, "trace_id"),
        ({"app": "shop", "tasks": [event("t", "received", T0, colour="red")]}, 422, "colour"),
        ({"app": "shop", "tasks": [event("t", "succeeded", T0, started_at=1e13)]}, 422, "started_at"),
        ({"app": "shop", "workers": [beat(online="yes")]}, 422, "online"),
        ({"app": "shop", "workers": [beat(active=-1)]}, 422, "active"),
        ({"app": "shop", "tasks": [event(f"t{i}", "received", T0) for i in range(1001)]}, 422, "tasks"),
        ({"app": "", "tasks": []}, 422, "app"),
    ],
)
def test_a_bad_live_report_is_refused_whole_with_where_and_what(body, status, reason):
    agent = token_for("agent")
    answer = api("POST", "/api/v1/agent/live", agent, {"tasks": [event("fine", "received", T0)], **body} if "tasks" not in body else body)
    assert answer.status_code == status and reason in json.dumps(answer.json()["detail"]), answer.content
    assert not LiveTask.objects.exists() and not LiveWorker.objects.exists()


@pytest.mark.django_db
def test_an_oversized_or_unreadable_live_report_is_refused():
    agent = token_for("agent")
    huge = api("POST", "/api/v1/agent/live", agent, raw=b'{"app": "shop", "tasks": [' + b" " * (1024 * 1024) + b"]}")
    assert huge.status_code == 413 and "over the limit" in huge.json()["detail"]
    broken = api("POST", "/api/v1/agent/live", agent, raw=b"{not json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]


@pytest.mark.django_db
def test_an_agent_token_tied_to_an_app_reports_and_leases_for_that_app_only():
    shop = ApiToken.issue(name="shop agent", role="agent", app="shop", created_by="tests")[1]
    for method, url, body in (
        ("POST", "/api/v1/agent/live", {"app": "mill", "tasks": []}),
        ("POST", "/api/v1/agent/reports", {"app": "mill", "dead": []}),
        ("GET", "/api/v1/agent/requeues?app=mill", None),
        ("POST", "/api/v1/agent/requeues/ack", {"app": "mill", "ids": []}),
        ("GET", "/api/v1/agent/revokes?app=mill", None),
        ("POST", "/api/v1/agent/revokes/ack", {"app": "mill", "ids": []}),
    ):
        refused = api(method, url, shop, body)
        assert refused.status_code == 403 and "agent token of app 'shop'; it may not report or take orders for app 'mill'" in refused.json()["detail"], (url, refused.content)
    assert api("GET", "/api/v1/agent/revokes?app=shop", shop).status_code == 200
    anyapp = token_for("agent")  # a token without an app: as before, any app
    assert api("POST", "/api/v1/agent/live", anyapp, {"app": "mill", "workers": [beat()]}).status_code == 200
    operator = token_for("operator")
    assert api("POST", "/api/v1/agent/live", operator, {"app": "mill"}).status_code == 403


@pytest.mark.django_db
def test_create_token_ties_an_agent_token_to_an_app_and_refuses_an_app_for_another_role():
    out, err = io.StringIO(), io.StringIO()
    call_command("create_token", "--name", "shop agent", "--role", "agent", "--app", "shop", stdout=out, stderr=err)
    assert "(agent for app shop)" in err.getvalue() and ApiToken.active(out.getvalue().strip()).app == "shop"
    with pytest.raises(CommandError, match="only an agent token is tied to an app"):
        call_command("create_token", "--name", "x", "--role", "viewer", "--app", "shop", stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(CommandError, match="is not an app name"):
        call_command("create_token", "--name", "x", "--role", "agent", "--app", "shop floor", stdout=io.StringIO(), stderr=io.StringIO())
    admin = token_for("admin")
    made = api("POST", "/api/v1/admin/tokens", admin, {"name": "mill agent", "role": "agent", "app": "mill"})
    assert made.status_code == 200 and made.json()["app"] == "mill"
    wrong = api("POST", "/api/v1/admin/tokens", admin, {"name": "v", "role": "viewer", "app": "mill"})
    assert wrong.status_code == 400 and "only an agent token is tied to an app" in wrong.json()["detail"]


def _agent_worker(app: str = "shop") -> None:
    record_workers(app, [beat("w1@h")])


@pytest.mark.django_db
def test_an_operator_orders_a_revoke_which_is_audited_and_leased_to_one_agent_until_acknowledged():
    _agent_worker()
    record_tasks("shop", [event("run-1", "started", time.time(), name="shop.work")])
    operator = token_for("operator")
    answer = api("POST", "/api/v1/tasks/run-1/revoke", operator, {"terminate": True, "signal": "kill"})
    assert answer.status_code == 200 and answer.json() == {"order": answer.json()["order"], "app": "shop", "task_id": "run-1", "terminate": True, "signal": "SIGKILL"}, answer.content
    (entry,) = AuditEntry.objects.filter(action="terminate_task")
    assert entry.object_ids == ["run-1"] and entry.after["signal"] == "SIGKILL" and entry.before == {"state": "started"}
    agent = token_for("agent")
    (order,) = api("GET", "/api/v1/agent/revokes?app=shop", agent).json()["orders"]
    assert order == {"id": answer.json()["order"], "task_id": "run-1", "terminate": True, "signal": "SIGKILL"}
    assert api("GET", "/api/v1/agent/revokes?app=shop", agent).json()["orders"] == []  # leased: one agent at a time
    assert api("POST", "/api/v1/agent/revokes/ack", agent, {"app": "shop", "ids": [order["id"]]}).json() == {"acked": 1}
    shown = api("GET", "/api/v1/tasks?app=shop", token_for("viewer")).json()["items"][0]["revoke"]
    assert shown["sent"] is True and shown["terminate"] is True
    # A revoke without terminate, for a task not seen yet (its app given): no signal.
    plain = api("POST", "/api/v1/tasks/later-1/revoke", operator, {"app": "shop"})
    assert plain.status_code == 200 and plain.json()["signal"] is None and AuditEntry.objects.filter(action="revoke_task").exists()


@pytest.mark.django_db
def test_a_revoke_that_cannot_be_carried_out_is_refused_with_its_reason():
    operator = token_for("operator")
    record_tasks("mill", [event("orphan", "started", time.time())], source="events")
    refused = api("POST", "/api/v1/tasks/orphan/revoke", operator, {})
    assert refused.status_code == 409 and "no agent of app 'mill' has reported" in refused.json()["detail"]
    _agent_worker("shop")
    record_tasks("shop", [event("done-1", "succeeded", time.time()), event("twin", "started", time.time())])
    record_tasks("mill", [event("twin", "started", time.time())], source="events")
    cases = [
        ("done-1", {}, 409, "already succeeded"),
        ("nobody", {}, 404, "no attached app has reported task 'nobody'"),
        ("twin", {}, 400, "apps mill, shop each have a task 'twin'"),
        ("twin", {"app": "shop", "signal": "SIGTERM"}, 400, "a signal is sent only to terminate"),
        ("twin", {"app": "shop", "terminate": True, "signal": "SIGWHAT"}, 422, "signal 'SIGWHAT' is not one of SIGTERM"),
        ("twin", {"app": "shop", "terminate": "yes"}, 422, "terminate"),
        ("twin", {"app": "shop", "force": True}, 422, "force"),
    ]
    for task_id, body, status, reason in cases:
        answer = api("POST", f"/api/v1/tasks/{task_id}/revoke", operator, body)
        assert answer.status_code == status and reason in json.dumps(answer.json()["detail"]), (body, answer.content)
    viewer = api("POST", "/api/v1/tasks/twin/revoke", token_for("viewer"), {"app": "shop"})
    assert viewer.status_code == 403 and "needs the operator role" in viewer.json()["detail"]
    assert not RevokeOrder.objects.exists() and not AuditEntry.objects.filter(action__in=["revoke_task", "terminate_task"]).exists()


# --- the agent's live outbox, in this process, reporting to the real console ---


@pytest.mark.django_db(transaction=True)
def test_the_outbox_folds_the_changes_of_a_task_that_wait_together_into_one_entry_that_keeps_its_start(live_server):
    secret = ApiToken.issue(name="shop agent", role="agent", app="shop", created_by="tests")[1]
    outbox = LiveOutbox(agent_config.read({}, url=live_server.url, token=secret), "shop")
    now = time.time()
    with outbox.cond:  # the sender cannot take a batch until every change is in: they wait together
        for i in range(20):
            assert outbox.put("task", {"id": f"o{i}", "state": "received", "at": now + i, "name": "shop.tick", "args": f"({i},)"})
            assert outbox.put("task", {"id": f"o{i}", "state": "started", "at": now + i + 0.25, "worker": "w1@h"})
            assert outbox.put("task", {"id": f"o{i}", "state": "succeeded", "at": now + i + 0.5, "runtime_s": 0.25})
        outbox.put("worker", beat(processed=1))
        outbox.put("worker", beat(processed=20))
    assert outbox.close() == {"queued": 21, "folded": 41, "superseded": 0, "sent": 21, "failed": 0, "dropped": 0}
    rows = sorted(LiveTask.objects.filter(app="shop"), key=lambda r: int(r.task_id[1:]))
    assert [(r.state, r.name, r.args, r.worker, r.runtime_s) for r in rows] == [("succeeded", "shop.tick", f"({i},)", "w1@h", 0.25) for i in range(20)]
    assert [(r.received_at.timestamp(), r.started_at.timestamp(), r.state_at.timestamp()) for r in rows] == [pytest.approx((now + i, now + i + 0.25, now + i + 0.5)) for i in range(20)]
    assert LiveWorker.objects.get(app="shop", hostname="w1@h").processed == 20


class _CountingConsole(http.server.ThreadingHTTPServer):
    """Answers every POST 200 and notes the client port it came from (one port a connection);
    with `hang_up` set it closes the connection after answering, without saying so, as a server's
    idle timeout does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountingHandler)
        self.ports: list[int] = []
        self.bodies: list[dict] = []
        self.hang_up = False


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CountingConsole

    def do_POST(self) -> None:
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.server.ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
        self.close_connection = self.server.hang_up

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def counting_console() -> Iterator[_CountingConsole]:
    server = _CountingConsole()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_outbox_keeps_one_connection_and_opens_a_new_one_when_the_console_closed_it(counting_console):
    outbox = LiveOutbox(agent_config.read({}, url=f"http://127.0.0.1:{counting_console.server_port}"), "shop")

    def report(n: int) -> None:
        outbox.put("task", {"id": f"k{n}", "state": "received", "at": time.time()})
        wait_for(lambda: outbox.counts["sent"] == n, timeout=30, what=f"report {n} sent")

    report(1)
    report(2)
    counting_console.hang_up = True
    report(3)  # answered, then the console hangs up
    counting_console.hang_up = False
    report(4)  # the kept connection is dead: sent again on a new one, not failed nor held back
    first, second, third, fourth = counting_console.ports
    # Kept across reports: one CI run on a loaded machine saw the second report on a new
    # connection (the first one lost between the two; its cause not found), so what is asserted is
    # that reports share a connection, not that the first one lives for ever.
    assert len({first, second, third}) < 3 and third != fourth, counting_console.ports
    assert outbox.close() == {"queued": 4, "folded": 0, "superseded": 0, "sent": 4, "failed": 0, "dropped": 0}


class _Request:
    """What the worker's state sets hold of a request here: its id (they keep weak references)."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id


def test_a_receipt_is_left_out_once_a_pool_process_has_taken_its_task_and_kept_while_it_waits(counting_console):
    # The main process's receipts against Celery's own worker state (what `celery inspect
    # reserved` reads): one task waits for a pool process, one runs, one is done. A task held for
    # its ETA or a rate limit is reported as a plain change and always sent.
    waiting, running = _Request("waiting"), _Request("running")
    worker_state.reserved_requests.update([waiting, running])
    worker_state.active_requests.add(running)
    outbox = LiveOutbox(agent_config.read({}, url=f"http://127.0.0.1:{counting_console.server_port}"), "shop")
    try:
        now = time.time()
        with outbox.cond:  # all in one batch
            for task_id in ("waiting", "running", "done"):
                outbox.put(RECEIPT, {"id": task_id, "state": "received", "at": now, "args": "(1,)"})
            outbox.put("task", {"id": "later", "state": "received", "at": now})  # held for its ETA
            outbox.put(RECEIPT, {"id": "revoked", "state": "received", "at": now})
            outbox.put("task", {"id": "revoked", "state": "revoked", "at": now + 1})  # folded into its receipt: no longer one
        counts = outbox.close()
    finally:
        worker_state.reserved_requests.difference_update([waiting, running])
        worker_state.active_requests.discard(running)
    assert [(t["id"], t["state"]) for body in counting_console.bodies for t in body["tasks"]] == [("waiting", "received"), ("later", "received"), ("revoked", "revoked")]
    assert counts == {"queued": 5, "folded": 1, "superseded": 2, "sent": 3, "failed": 0, "dropped": 0}


class _Received:
    """What task_received hands the agent in a worker's main process: the request and its dict."""

    def __init__(self, task_id: str) -> None:
        self.id, self.name, self.eta, self.task = task_id, "shop.tick", None, None
        self.request_dict = {"id": task_id, "task": "shop.tick"}


def test_the_receipt_time_rides_on_the_request_only_while_task_changes_are_reported(counting_console):
    url = f"http://127.0.0.1:{counting_console.server_port}"
    quiet, reporting = Live(agent_config.read({"FLOWSCOPE_LIVE_TASKS": "0"}, url=url), lambda: "shop"), Live(agent_config.read({}, url=url), lambda: "shop")
    left_alone, marked = _Received("q1"), _Received("r1")
    quiet.received(request=left_alone)
    reporting.received(request=marked)
    assert left_alone.request_dict == {"id": "q1", "task": "shop.tick"}
    assert isinstance(marked.request_dict.pop(RECEIVED_AT), float) and marked.request_dict == {"id": "r1", "task": "shop.tick"}
    assert quiet.close() is None and reporting.close()["queued"] == 1


# --- end to end: a real agent-wrapped worker reporting to the real console ---

FAST = {"FLOWSCOPE_REQUEUE_POLL_S": "0.2", "FLOWSCOPE_HEARTBEAT_S": "0.5"}


@pytest.fixture
def console(live_server, collector, settings) -> dict[str, str]:
    """The live console the attached processes report to, with an agent token tied to the app."""
    settings.TRACING_OTLP_OPEN = False
    settings.TRACING_OTLP_TOKEN = ""
    _, secret = ApiToken.issue(name="shop agent", role="agent", app="shop", created_by="tests")
    return {"FLOWSCOPE_URL": live_server.url, "FLOWSCOPE_TOKEN": secret}


def task_in(task_id: str, state: str, what: str = "", **more: object) -> LiveTask:
    try:
        return wait_for(lambda: LiveTask.objects.filter(app="shop", task_id=task_id, state=state, **more).first(), timeout=60, what=what or f"task {task_id} {state} in the live list")
    except AssertionError as exc:  # say where it got to
        seen = LiveTask.objects.filter(app="shop", task_id=task_id).values("state", "state_at", "exception").first()
        raise AssertionError(f"{exc}; the live list has {seen}") from None


def online(worker: AttachedWorker) -> LiveWorker:
    return wait_for(lambda: LiveWorker.objects.filter(app="shop", hostname=worker.node, online=True).first(), timeout=60, what=f"{worker.node} online")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_attached_worker_is_online_with_its_pool_its_tasks_are_listed_by_state_with_the_call_redacted_and_it_goes_offline_when_stopped(console):
    flaky_key = f"flaky:{uuid.uuid4().hex}"
    with AttachedWorker(agent=True, **console, **FAST) as worker:
        shown = online(worker)
        assert (shown.pool, shown.concurrency, shown.source) == ("prefork", 2, "agent")
        tick_id, ship_id, flaky_id = produce(
            f"""
            from tests.attached_app import flaky, ship, tick
            print(tick.delay("tick:{flaky_key}").id)
            print(ship.delay("ann@example.com", carrier="nowhere").id)
            print(flaky.delay("{flaky_key}").id)
            """,
            **console,
        ).stdout.split()
        # Its receipt is reported by the main process, its run by a pool process: either may come first.
        shipped = task_in(ship_id, "failed", "the failed ship task, its receipt reported too", received_at__isnull=False)
        ticked = task_in(tick_id, "succeeded")
        # The retry's reason stays with the task, whichever process reported first.
        retried = task_in(flaky_id, "succeeded", "the flaky task succeeding at its retry, with the reason", exception__contains="payment gateway timed out", retries=1)
        # The heartbeat counts what the worker processed (the retry's run too).
        wait_for(lambda: (LiveWorker.objects.get(app="shop", hostname=worker.node).processed or 0) >= 4, timeout=60, what="the processed count in a heartbeat")
        viewer = token_for("viewer")
        dead = wait_for(lambda: DeadLetter.objects.filter(app="shop", message_id=uuid.UUID(ship_id)).first(), timeout=60, what="the failed ship task's dead letter")
        listed = api("GET", "/api/v1/tasks?app=shop&state=failed", viewer).json()["items"]
        assert [t["id"] for t in listed] == [ship_id] and listed[0]["exact_call"] is True and listed[0]["dead_letter_id"] == dead.pk
        by_worker = api("GET", f"/api/v1/tasks?worker={worker.node}&name=shop.tick", viewer).json()["items"]
        assert [t["id"] for t in by_worker] == [tick_id]
    assert (shipped.name, shipped.worker, shipped.queue, shipped.source) == ("shop.ship", worker.node, "shop", "agent")
    assert (shipped.args, shipped.kwargs) == ("('[redacted]',)", "{'carrier': 'nowhere'}"), (shipped.args, shipped.kwargs)
    assert shipped.exception.startswith("LookupError: no carrier named 'nowhere'") and shipped.runtime_s is not None and len(shipped.trace_id) == 32
    assert shipped.received_at is not None and shipped.started_at is not None and shipped.received_at <= shipped.started_at <= shipped.state_at
    assert ticked.runtime_s is not None and ticked.runtime_s >= 0
    # Whether or not the main process's receipt was left out, the task has what it said.
    assert ticked.received_at is not None and ticked.received_at <= ticked.started_at and (ticked.queue, len(ticked.trace_id)) == ("shop", 32) and ticked.args
    assert retried.exception.startswith("Retry in 0s")
    gone = wait_for(lambda: LiveWorker.objects.filter(app="shop", hostname=worker.node, online=False).first(), timeout=60, what="the worker saying offline as it stopped")
    assert gone.processed >= 4 and gone.dropped == 0


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_operator_terminates_a_running_task_and_the_app_agent_carries_the_revoke_out_on_its_own_broker(console):
    with AttachedWorker(agent=True, **console, **FAST) as worker:
        online(worker)
        task_id = produce("from tests.attached_app import work\nprint(work.delay(120).id)", **console).stdout.strip()
        running = task_in(task_id, "started", "the long task running")
        answer = api("POST", f"/api/v1/tasks/{task_id}/revoke", token_for("operator"), {"terminate": True})
        assert answer.status_code == 200 and answer.json()["signal"] == "SIGTERM", answer.content
        revoked = task_in(task_id, "revoked", "the task terminated by the agent's revoke")
        # Acknowledged after the revoke went out: its report may come first.
        wait_for(lambda: RevokeOrder.objects.filter(pk=answer.json()["order"], sent_at__isnull=False).first(), timeout=60, what="the revoke order acknowledged")
        log = worker.log()
    assert f"revoked task {task_id} as the console ordered" in log
    assert LiveTask.objects.get(app="shop", task_id=task_id).state == "revoked"  # every report in: nothing moved it on
    assert revoked.exception.startswith("terminated") and (revoked.state_at - running.state_at).total_seconds() < 60  # stopped, not run to its end
    (entry,) = AuditEntry.objects.filter(action="terminate_task", object_ids=[task_id])
    assert entry.after["app"] == "shop" and entry.actor.startswith("token:")


# --- the pages ---


@pytest.mark.django_db
def test_the_workers_and_tasks_pages_are_in_the_nav_and_show_the_list_with_the_events_only_note():
    record_workers("shop", [beat("w1@h")])
    record_tasks("shop", [event("page-1", "started", time.time(), name="shop.work", args="('ann@example.com',)")])
    record_tasks("mill", [event("page-2", "received", time.time(), name="mill.grind")], source="events")
    viewer = client_for("viewer")
    workers_page = viewer.get("/workers/")
    assert workers_page.status_code == 200 and b'href="/workers/" class="on"' in workers_page.content and b"w1@h" in workers_page.content
    tasks_page = viewer.get("/tasks/?app=shop")
    body = tasks_page.content.decode()
    assert tasks_page.status_code == 200 and 'href="/tasks/" class="on"' in body and "cannot be requeued exactly" in body
    assert "page-1" in body and "page-2" not in body and "ann@example.com" not in body and "[redacted]" in body
    assert "Terminate" not in body.split("<table")[0]  # a viewer gets no revoke controls
    assert 'id="revoke-signal"' in client_for("operator").get("/tasks/").content.decode()
    assert viewer.get("/tasks/?cursor=nonsense").status_code == 400


@pytest.mark.django_db
def test_the_live_frame_carries_attached_workers_and_a_mark_that_moves_when_a_task_changes():
    from console import live

    live._cache.clear()
    record_workers("shop", [beat("w1@h")])
    record_tasks("shop", [event("f-1", "received", time.time())])
    first = live.snapshot()["attached"]
    assert [w["hostname"] for w in first["workers"]] == ["w1@h"] and first["task_counts"] == {"received": 1}
    time.sleep(0.6)  # past the frame's half-second cache, not waiting on the outcome
    record_tasks("shop", [event("f-1", "started", time.time())])
    second = live.snapshot()["attached"]
    assert second["tasks_mark"] > first["tasks_mark"] and second["task_counts"] == {"started": 1}


LIVE_SHUTDOWN = re.compile(r"flowscope-agent: pid \d+ reported (\d+) task changes and heartbeats to \S+; (\d+) refused, (\d+) dropped")


@pytest.mark.worker
@pytest.mark.portable
@pytest.mark.django_db(transaction=True)
def test_with_the_console_down_task_reports_beyond_the_bound_are_dropped_and_counted_and_every_task_runs():
    nowhere = {"FLOWSCOPE_URL": f"http://127.0.0.1:{free_port()}", "FLOWSCOPE_TOKEN": "fs_nothing-listens", "FLOWSCOPE_EXPORT_TIMEOUT": "1", "FLOWSCOPE_MAX_QUEUE": "5"}
    with AttachedWorker(agent=True, **nowhere) as worker:
        run_ticks(worker, 60)  # waits until every one ran
        # and until the main process has every result: a pool process stopped while it hands one
        # back would be a lost worker, which is the stop's doing, not the agent's
        wait_for(lambda: len(RUNTIME.findall(worker.log())) >= 60, timeout=60, what="the worker logging all 60 results")
        log = worker.stop()
    counts = [tuple(map(int, line)) for line in LIVE_SHUTDOWN.findall(log)]
    assert counts, log[-3000:]
    sent, dropped = sum(c[0] for c in counts), sum(c[2] for c in counts)
    assert sent == 0 and dropped > 0, counts  # 60 tasks make about 240 changes; 5 a process may wait
    assert "Traceback" not in log.split("ready.", 1)[1], log[-3000:]
